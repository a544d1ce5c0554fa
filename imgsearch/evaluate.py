"""Retrieval quality on labelled image folders: what `python -m imgsearch evaluate` measures.

- Leave-one-out retrieval: every image queries all the others, ranked with the engine's own metric
  (or, for cosine engines, after the post-processing of `imgsearch.retrieval`); precision@k and
  mean average precision, overall and per class.
- Near-duplicate robustness: a seeded sample of images is transformed (crop, rotation, JPEG, downscale,
  grayscale, mirror, brightness) and each copy queries the whole untransformed set; recall@1 is the
  share whose original comes first.
- The duplicate finder's threshold: similarities of originals to their transformed copies (positives)
  against those of different images of the same class (negatives).

Extracted features go through the app's sync loop into a catalogue of each dataset, kept in a folder
outside the project (`--cache`), so post-processing variants do not pay for extraction again.
"""
from __future__ import annotations

import contextlib
import csv
import datetime
import hashlib
import io
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from PIL import Image, ImageEnhance, ImageOps

from .catalogue import Catalogue
from .engines.base import Engine, l2_normalize
from .imaging import ALLOWED_EXTENSIONS, ImageError
from .index.exact import ExactIndex
from .persist import atomic_write_bytes
from .ranking import similarities
from .retrieval import PostProcessing, Retrieval
from .space import FeatureSpace
from .store import Snapshot
from .sync import FolderSource, sync

LABELS_FILE = "labels.csv"
CURVE_DEPTH = 50
DEFAULT_ROBUSTNESS_SAMPLE = 100
DEFAULT_SEED = 0
# A duplicate finder deletes images, so the threshold is picked on a coarse grid users can reason about.
THRESHOLD_GRID = np.round(np.arange(0.0, 1.0001, 0.01), 2)


# ----- labelled folders ------------------------------------------------------------------------


def read_labelled_folder(path: str | Path) -> tuple[list[Path], list[str]]:
    """Image paths and their labels, from `labels.csv` (columns filename,label) or from class subfolders."""
    root = Path(path)
    labels_file = root / LABELS_FILE
    if labels_file.is_file():
        with open(labels_file, newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
        if rows and not {"filename", "label"} <= set(rows[0]):
            raise ValueError(f"{labels_file} needs the columns filename,label")
        return [root / row["filename"] for row in rows], [row["label"] for row in rows]
    paths, labels = [], []
    if root.is_dir():
        for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
            for file in sorted(folder.rglob("*")):
                if file.is_file() and file.suffix.lower().lstrip(".") in ALLOWED_EXTENSIONS:
                    paths.append(file)
                    labels.append(folder.name)
    if not paths:
        raise ValueError(f"{root} has neither {LABELS_FILE} nor class subfolders with images")
    return paths, labels


# ----- leave-one-out metrics -------------------------------------------------------------------


Scorer = Callable[[np.ndarray], np.ndarray]  # query rows -> (len(rows), n) similarities, higher is better


def metric_scorer(vectors: np.ndarray, metric: str) -> Scorer:
    """Library rows against the whole library with `metric`, as the app ranks (`ranking.similarities`)."""
    vectors = np.asarray(vectors, dtype=np.float32)
    if metric == "cosine":
        vectors = l2_normalize(vectors)
    snapshot = Snapshot(vectors, tuple(map(str, range(len(vectors)))), np.einsum("ij,ij->i", vectors, vectors))
    return lambda rows: similarities(snapshot, vectors[rows], metric)


def leave_one_out_metrics(vectors: np.ndarray, labels: Sequence[str], ks: Sequence[int] = (1, 10),
                          chunk_size: int = 1024, metric: str = "cosine", curve_depth: int = 0) -> dict:
    """Precision@k for each k and mAP, overall and per class, ranking with the engine metric `metric`."""
    if len(vectors) != len(labels):
        raise ValueError(f"{len(vectors)} vectors but {len(labels)} labels")
    return ranking_metrics(metric_scorer(vectors, metric), labels, ks, chunk_size, curve_depth)


def ranking_metrics(scorer: Scorer, labels: Sequence[str], ks: Sequence[int] = (1, 10),
                    chunk_size: int = 1024, curve_depth: int = 0) -> dict:
    """Leave-one-out precision@k, mAP and (with `curve_depth`) precision at k = 1..curve_depth.

    The query itself is left out of its own ranking. Average precision is over all other images of the
    query's class; a query whose class has no other member is skipped. Queries are scored `chunk_size`
    at a time so memory stays bounded on large sets.
    """
    n = len(labels)
    if n < 2:
        raise ValueError("leave-one-out needs at least two images")
    classes, class_ids = np.unique(np.asarray(labels), return_inverse=True)
    ranks = np.arange(1, n)
    depths = sorted(set(ks) | set(range(1, curve_depth + 1)))
    precision = {k: np.empty(n) for k in depths}
    average_precision = np.empty(n)
    for start in range(0, n, chunk_size):
        rows = np.arange(start, min(start + chunk_size, n))
        similarity = np.array(scorer(rows), dtype=np.float64)
        similarity[np.arange(len(rows)), rows] = -np.inf
        # A stable sort keeps tied images in index order, so the figures are reproducible.
        order = np.argsort(-similarity, axis=1, kind="stable")[:, : n - 1]
        relevant = class_ids[order] == class_ids[rows, None]
        hits_so_far = np.cumsum(relevant, axis=1)
        positives = hits_so_far[:, -1]
        average_precision[rows] = np.where(
            positives > 0, (relevant * hits_so_far / ranks).sum(axis=1) / np.maximum(positives, 1), np.nan)
        for k in depths:
            precision[k][rows] = hits_so_far[:, min(k, n - 1) - 1] / k
    queries = ~np.isnan(average_precision)
    if not queries.any():
        raise ValueError("no class has more than one image, so there is nothing to retrieve")

    def summary(mask: np.ndarray) -> dict:
        figures = {f"P@{k}": float(precision[k][mask].mean()) for k in ks}
        figures["mAP"] = float(average_precision[mask].mean())
        figures["queries"] = int(mask.sum())
        return figures

    result = summary(queries)
    result["images"] = n
    result["classes"] = len(classes)
    if curve_depth:
        result["precision_curve"] = [float(precision[k][queries].mean()) for k in range(1, curve_depth + 1)]
    result["per_class"] = {}
    for index, name in enumerate(classes):
        mask = queries & (class_ids == index)
        if mask.any():
            result["per_class"][str(name)] = summary(mask)
    return result


# ----- extraction ------------------------------------------------------------------------------


Transform = Callable[[Image.Image], Image.Image]


def dataset_features(engine: Engine, root: Path, paths: Sequence[Path], cache_dir: Path | None, batch_size: int = 32,
                     transform_name: str = "") -> tuple[np.ndarray, dict]:
    """Vectors of `paths` (each image edited by the named transform first, if any), in their order, and the
    timing of the extraction that made them (`from_cache` says whether this call reused earlier vectors).

    They go through the app's sync loop into a catalogue of the dataset kept in `cache_dir` (a temporary
    one without it), so a second run computes only what is missing or changed. An edited copy's vectors
    are kept under their own id, `<model_id>~<transform>`.
    """
    root = Path(root)
    names = [Path(path).relative_to(root).as_posix() for path in paths]
    with contextlib.ExitStack() as stack:
        folder = Path(cache_dir) if cache_dir is not None else Path(stack.enter_context(tempfile.TemporaryDirectory()))
        key = hashlib.sha256(str(root.resolve()).encode("utf-8")).hexdigest()[:12]
        catalogue = Catalogue(f"sqlite:///{folder / f'{root.name}-{key}.db'}").open()
        stack.callback(catalogue.close)
        model_id = engine.model_id + (f"~{transform_name}" if transform_name else "")
        space = FeatureSpace(catalogue, engine, lambda store: ExactIndex(store, engine.metric), model_id).open()
        wanted = set(names)
        began = time.perf_counter()
        report = sync(catalogue, space, FolderSource(root, names), batch_size=batch_size, only=wanted.__contains__,
                      retry_unreadable=True, transform=TRANSFORMS[transform_name] if transform_name else None)
        seconds = time.perf_counter() - began
        if report.failures:
            name, reason = report.failures[0]
            raise ImageError(f"{name}: {reason}")
        timing_key = f"timing:{model_id}"
        if report.computed:
            timing = {"images": report.computed, "seconds": round(seconds, 2),
                      "model_seconds": round(report.model_seconds, 2),
                      "images_per_second": round(report.computed / seconds, 1) if seconds else None,
                      "load_average": round(os.getloadavg()[0], 1)}
            with catalogue.write() as write:
                write.set_state(timing_key, json.dumps(timing))
        else:
            timing = json.loads(catalogue.read_state(timing_key) or "{}")
        vectors = np.stack([space.store.vector(name) for name in names]) if names else \
            np.zeros((0, engine.dim), np.float32)
        return vectors, {**timing, "from_cache": not report.computed}


def model_throughput(engine: Engine, images: np.ndarray, batch_size: int = 32) -> float:
    """Images per second through `engine.extract` alone, on already prepared (n, h, w, 3) uint8 images.

    One batch is run first and not timed, so tracing and first-call set-up are left out.
    """
    engine.load()
    engine.extract(images[:batch_size])
    began = time.perf_counter()
    for start in range(0, len(images), batch_size):
        engine.extract(images[start:start + batch_size])
    return len(images) / (time.perf_counter() - began)


# ----- near-duplicate robustness ---------------------------------------------------------------


def _centre_crop(image: Image.Image, fraction: float = 0.7) -> Image.Image:
    width, height = max(1, round(image.width * fraction)), max(1, round(image.height * fraction))
    left, top = (image.width - width) // 2, (image.height - height) // 2
    return image.crop((left, top, left + width, top + height))


def _jpeg(image: Image.Image, quality: int = 20) -> Image.Image:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality)
    buffer.seek(0)
    return Image.open(buffer).convert("RGB")


def _downscale(image: Image.Image, longest: int = 64) -> Image.Image:
    scale = longest / max(image.size)
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    return image.resize(size, Image.Resampling.LANCZOS)


TRANSFORMS: dict[str, Transform] = {
    "crop70": _centre_crop,
    "rotate10": lambda image: image.rotate(10, Image.Resampling.BICUBIC),
    "jpeg20": _jpeg,
    "downscale64": _downscale,
    "grayscale": lambda image: ImageOps.grayscale(image).convert("RGB"),
    "mirror": ImageOps.mirror,
    "brightness1.6": lambda image: ImageEnhance.Brightness(image).enhance(1.6),
}
TRANSFORM_DESCRIPTIONS = {
    "crop70": "centre crop keeping 70% of width and height",
    "rotate10": "rotation by 10° (corners filled black)",
    "jpeg20": "JPEG at quality 20",
    "downscale64": "downscaled to 64 px on the longest side",
    "grayscale": "grayscale",
    "mirror": "left-right mirror",
    "brightness1.6": "brightness × 1.6",
}


def robustness_sample(count: int, size: int, seed: int = DEFAULT_SEED) -> np.ndarray:
    """Sorted indices of a seeded sample of `size` images out of `count`."""
    return np.sort(np.random.default_rng(seed).choice(count, size=min(size, count), replace=False))


def near_duplicate_ranks(query_scores: np.ndarray, originals: np.ndarray) -> np.ndarray:
    """Rank of each query's original among the library: 1 + the images scored strictly higher (ties favour it)."""
    own = query_scores[np.arange(len(originals)), originals]
    return 1 + (query_scores > own[:, None]).sum(axis=1)


def duplicate_threshold_study(positives: np.ndarray, negatives: np.ndarray) -> dict:
    """The grid threshold with the best F1 at telling copies (positives) from look-alikes (negatives).

    On a tie the higher threshold wins, since a false duplicate can cost a user an image.
    """
    positives, negatives = np.asarray(positives), np.asarray(negatives)
    best = None
    for threshold in THRESHOLD_GRID:
        found = int((positives >= threshold).sum())
        false = int((negatives >= threshold).sum())
        precision = found / (found + false) if found + false else 1.0
        recall = found / len(positives) if len(positives) else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        if best is None or f1 >= best["f1"]:
            best = {"threshold": float(threshold), "precision": precision, "recall": recall, "f1": f1,
                    "false_positives": false, "missed": len(positives) - found}
    best.update(positives=len(positives), negatives=len(negatives),
                positive_min=float(positives.min()) if len(positives) else None,
                negative_max=float(negatives.max()) if len(negatives) else None)
    return best


def same_class_pair_similarities(vectors: np.ndarray, labels: Sequence[str], metric: str) -> np.ndarray:
    """Similarities of every pair of different images that share a label (each pair once)."""
    vectors = np.asarray(vectors, dtype=np.float32)
    labels = np.asarray(labels)
    scores = []
    for label in np.unique(labels):
        members = vectors[labels == label]
        if len(members) < 2:
            continue
        if metric == "cosine":
            members = l2_normalize(members)
        snapshot = Snapshot(members, tuple(map(str, range(len(members)))), np.einsum("ij,ij->i", members, members))
        block = similarities(snapshot, members, metric)
        scores.append(block[np.triu_indices(len(members), k=1)])
    return np.concatenate(scores) if scores else np.zeros(0)


# ----- one engine on one dataset ---------------------------------------------------------------


def evaluate_dataset(engine: Engine, dataset: str | Path, options: PostProcessing = PostProcessing(),
                     robustness: int = DEFAULT_ROBUSTNESS_SAMPLE, seed: int = DEFAULT_SEED,
                     cache_dir: Path | None = None, batch_size: int = 32, progress=print) -> dict:
    """Everything `evaluate` reports for one engine on one labelled folder.

    `options` applies to cosine engines only; other metrics are ranked as the app ranks them.
    """
    paths, labels = read_labelled_folder(dataset)
    progress(f"{engine.model_id} on {dataset}: extracting {len(paths)} images")
    vectors, extraction = dataset_features(engine, Path(dataset), paths, cache_dir, batch_size)
    options = options if engine.metric == "cosine" else PostProcessing()

    began = time.perf_counter()
    retrieval = Retrieval(vectors, options) if options.active else None
    fit_seconds = time.perf_counter() - began
    if retrieval is not None:
        def scorer(rows: np.ndarray) -> np.ndarray:
            return retrieval.scores(vectors[rows], held_out=rows)
    else:
        scorer = metric_scorer(vectors, engine.metric)
    began = time.perf_counter()
    result = ranking_metrics(scorer, labels, ks=(1, 10), curve_depth=CURVE_DEPTH)
    ranking_seconds = time.perf_counter() - began
    result.update(
        dataset=Path(dataset).name, dataset_path=str(dataset), engine=engine.name, model_id=engine.model_id,
        metric=engine.metric, postprocessing=options.label(), dimension=retrieval.dim if retrieval else engine.dim,
        timing={"extraction": extraction, "postprocessing_fit_seconds": round(fit_seconds, 2),
                "leave_one_out_ms_per_query_and_metrics": round(1000 * ranking_seconds / len(paths), 3)},
    )
    if robustness:
        result["robustness"], positives = _robustness(engine, Path(dataset), paths, vectors, retrieval, robustness,
                                                      seed, cache_dir, batch_size, progress)
        negatives = same_class_pair_similarities(vectors, labels, engine.metric)
        study = duplicate_threshold_study(np.concatenate(list(positives.values())), negatives)
        study["recall_by_transform"] = {name: float((scores >= study["threshold"]).mean())
                                        for name, scores in positives.items()}
        result["duplicate_threshold"] = study
    return result


def _robustness(engine: Engine, root: Path, paths: Sequence[Path], vectors: np.ndarray, retrieval: Retrieval | None,
                size: int, seed: int, cache_dir: Path | None, batch_size: int,
                progress) -> tuple[dict, dict[str, np.ndarray]]:
    """Recall@1 per transform, and per transform the engine-metric similarity of each original to its copy."""
    sample = robustness_sample(len(paths), size, seed)
    sample_paths = [paths[i] for i in sample]
    stored = Snapshot(vectors, tuple(map(str, range(len(vectors)))), np.einsum("ij,ij->i", vectors, vectors))
    recall, mean_rank, positives = {}, {}, {}
    for name in TRANSFORMS:
        progress(f"{engine.model_id}: near-duplicate queries, {name}")
        copies, _ = dataset_features(engine, root, sample_paths, cache_dir, batch_size, transform_name=name)
        scores = retrieval.scores(copies) if retrieval is not None else similarities(stored, copies, engine.metric)
        ranks = near_duplicate_ranks(scores, sample)
        recall[name] = float((ranks == 1).mean())
        mean_rank[name] = float(ranks.mean())
        raw = similarities(stored, copies, engine.metric)
        positives[name] = raw[np.arange(len(sample)), sample]
    summary = {"sample": len(sample), "seed": seed, "recall_at_1": recall, "mean_rank": mean_rank}
    return summary, positives


# ----- the report ------------------------------------------------------------------------------


def build_report(runs: list[dict], settings: dict) -> dict:
    return {"created": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
            "settings": settings, "runs": runs}


def run_title(run: dict) -> str:
    return run["model_id"] + ("" if run["postprocessing"] == "none" else f" + {run['postprocessing']}")


def markdown_report(report: dict) -> str:
    runs = report["runs"]
    lines = ["# Retrieval evaluation", "",
             f"{report['created']}; leave-one-out: each image queries all the others of its set.", "",
             "| dataset | engine | post-processing | images | classes | P@1 | P@10 | mAP | extraction img/s |",
             "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for run in runs:
        rate = run["timing"]["extraction"].get("images_per_second")
        lines.append(f"| {run['dataset']} | {run['model_id']} | {run['postprocessing']} | {run['images']} | "
                     f"{run['classes']} | {run['P@1']:.3f} | {run['P@10']:.3f} | {run['mAP']:.3f} | "
                     f"{rate if rate is not None else '-'} |")
    robust = [run for run in runs if "robustness" in run]
    if robust:
        names = list(TRANSFORMS)
        lines += ["", "## Near-duplicate recall@1", "",
                  "Each sampled image is transformed and queries the whole untransformed set; recall@1 is the "
                  "share whose original comes first.", "",
                  "| dataset | engine | post-processing | sample | " + " | ".join(names) + " |",
                  "| --- | --- | --- | ---: | " + " | ".join("---:" for _ in names) + " |"]
        for run in robust:
            figures = run["robustness"]["recall_at_1"]
            lines.append(f"| {run['dataset']} | {run['model_id']} | {run['postprocessing']} | "
                         f"{run['robustness']['sample']} | " + " | ".join(f"{figures[n]:.2f}" for n in names) + " |")
        lines += ["", "## Duplicate threshold", "",
                  "Positives: each sampled image against its transformed copies. Negatives: every pair of different "
                  "images with the same label. Engine metric, no post-processing (what the duplicate finder uses).", "",
                  "| dataset | engine | threshold | precision | recall | false positives | missed | positives | "
                  "negatives | lowest positive | highest negative |",
                  "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
        seen = {}
        for run in robust:
            key = (run["dataset"], run["model_id"])
            if key in seen:
                continue
            seen[key] = True
            study = run["duplicate_threshold"]
            lines.append(f"| {run['dataset']} | {run['model_id']} | {study['threshold']:.2f} | "
                         f"{study['precision']:.3f} | {study['recall']:.3f} | {study['false_positives']} | "
                         f"{study['missed']} | {study['positives']} | {study['negatives']} | "
                         f"{study['positive_min']:.3f} | {study['negative_max']:.3f} |")
        lines += ["", "Share of copies at or above that threshold, by transform:", "",
                  "| dataset | engine | " + " | ".join(names) + " |",
                  "| --- | --- | " + " | ".join("---:" for _ in names) + " |"]
        for dataset, model_id in seen:
            run = next(r for r in robust if (r["dataset"], r["model_id"]) == (dataset, model_id))
            found = run["duplicate_threshold"]["recall_by_transform"]
            lines.append(f"| {dataset} | {model_id} | " + " | ".join(f"{found[n]:.2f}" for n in names) + " |")
    for dataset in dict.fromkeys(run["dataset"] for run in runs):
        group = [run for run in runs if run["dataset"] == dataset]
        lines += ["", f"## Per class: {dataset} (P@10 / mAP)", "",
                  "| class | " + " | ".join(run_title(run) for run in group) + " |",
                  "| --- | " + " | ".join("---:" for _ in group) + " |"]
        for name in group[0]["per_class"]:
            cells = []
            for run in group:
                figures = run["per_class"].get(name)
                cells.append(f"{figures['P@10']:.2f} / {figures['mAP']:.2f}" if figures else "-")
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def precision_chart(report: dict, path: Path) -> None:
    """Precision at k = 1..50, one panel per dataset, one line per engine and post-processing."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    datasets = list(dict.fromkeys(run["dataset"] for run in report["runs"]))
    figure, axes = plt.subplots(1, len(datasets), figsize=(6 * len(datasets), 4.5), squeeze=False)
    for axis, dataset in zip(axes[0], datasets):
        for run in report["runs"]:
            if run["dataset"] == dataset:
                curve = run["precision_curve"]
                axis.plot(range(1, len(curve) + 1), curve, label=f"{run_title(run)} (mAP {run['mAP']:.3f})")
        axis.set_title(dataset)
        axis.set_xlabel("k")
        axis.set_ylabel("precision at k")
        axis.set_xlim(1, CURVE_DEPTH)
        axis.set_ylim(0, 1.02)
        axis.grid(True, alpha=0.3)
        axis.legend(fontsize=7, loc="lower left")
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110)
    plt.close(figure)
    atomic_write_bytes(path, buffer.getvalue())


def write_report(report: dict, out_dir: Path) -> dict[str, Path]:
    """Write evaluation.json, evaluation.md and precision_at_k.png into `out_dir`; returns their paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"json": out_dir / "evaluation.json", "markdown": out_dir / "evaluation.md",
             "chart": out_dir / "precision_at_k.png"}
    atomic_write_bytes(paths["json"], json.dumps(report, indent=2).encode("utf-8"))
    atomic_write_bytes(paths["markdown"], markdown_report(report).encode("utf-8"))
    precision_chart(report, paths["chart"])
    return paths
