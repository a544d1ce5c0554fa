"""Retrieval quality on a labelled image folder: leave-one-out precision@k and mean average precision.

Every image is used once as the query against all the others, ranked by cosine similarity.
"""
from __future__ import annotations

import csv
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Sequence

import numpy as np

from .engines.base import Engine, l2_normalize
from .imaging import ALLOWED_EXTENSIONS, open_image

LABELS_FILE = "labels.csv"


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
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        for file in sorted(folder.rglob("*")):
            if file.is_file() and file.suffix.lower().lstrip(".") in ALLOWED_EXTENSIONS:
                paths.append(file)
                labels.append(folder.name)
    if not paths:
        raise ValueError(f"{root} has neither {LABELS_FILE} nor class subfolders with images")
    return paths, labels


def leave_one_out_metrics(vectors: np.ndarray, labels: Sequence[str], ks: Sequence[int] = (1, 10),
                          chunk_size: int = 1024) -> dict:
    """Precision@k for each k and mAP, overall and per class, ranking by cosine similarity.

    The query itself is left out of its own ranking. Average precision is over all other images of the
    query's class; a query whose class has no other member is skipped. Queries are scored `chunk_size`
    at a time so memory stays bounded on large sets.
    """
    vectors = l2_normalize(np.asarray(vectors, dtype=np.float32))
    n = len(labels)
    if n != len(vectors):
        raise ValueError(f"{len(vectors)} vectors but {n} labels")
    if n < 2:
        raise ValueError("leave-one-out needs at least two images")
    classes, class_ids = np.unique(np.asarray(labels), return_inverse=True)
    ranks = np.arange(1, n)
    precision = {k: np.empty(n) for k in ks}
    average_precision = np.empty(n)
    for start in range(0, n, chunk_size):
        rows = np.arange(start, min(start + chunk_size, n))
        similarity = vectors[rows] @ vectors.T
        similarity[np.arange(len(rows)), rows] = -np.inf
        # A stable sort keeps tied images in index order, so the figures are reproducible.
        order = np.argsort(-similarity, axis=1, kind="stable")[:, : n - 1]
        relevant = class_ids[order] == class_ids[rows, None]
        hits_so_far = np.cumsum(relevant, axis=1)
        positives = hits_so_far[:, -1]
        average_precision[rows] = np.where(
            positives > 0, (relevant * hits_so_far / ranks).sum(axis=1) / np.maximum(positives, 1), np.nan)
        for k in ks:
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
    result["per_class"] = {}
    for index, name in enumerate(classes):
        mask = queries & (class_ids == index)
        if mask.any():
            result["per_class"][str(name)] = summary(mask)
    return result


def extract_folder(engine: Engine, paths: Sequence[Path], batch_size: int = 32,
                   decode_workers: int = 2) -> tuple[np.ndarray, float]:
    """Feature vectors for `paths` and the seconds spent in the model alone (decoding excluded)."""
    engine.load()

    def prepare(path: Path) -> np.ndarray:
        return engine.prepare(open_image(path))

    vectors = []
    model_seconds = 0.0
    with ThreadPoolExecutor(decode_workers) as pool:
        for start in range(0, len(paths), batch_size):
            batch = np.stack(list(pool.map(prepare, paths[start:start + batch_size])))
            began = time.perf_counter()
            vectors.append(engine.extract(batch))
            model_seconds += time.perf_counter() - began
    return np.concatenate(vectors) if vectors else np.zeros((0, engine.dim), np.float32), model_seconds


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


def evaluate_engine(engine: Engine, dataset_path: str | Path, batch_size: int = 32,
                    ks: Sequence[int] = (1, 10)) -> dict:
    """Extract every image of a labelled folder with `engine` and score leave-one-out retrieval."""
    paths, labels = read_labelled_folder(dataset_path)
    began = time.perf_counter()
    vectors, model_seconds = extract_folder(engine, paths, batch_size=batch_size)
    total_seconds = time.perf_counter() - began
    result = leave_one_out_metrics(vectors, labels, ks=ks)
    result.update(
        engine=engine.name,
        model_id=engine.model_id,
        dataset=str(dataset_path),
        batch_size=batch_size,
        seconds=total_seconds,
        images_per_second=len(paths) / total_seconds if total_seconds else float("nan"),
        model_images_per_second=len(paths) / model_seconds if model_seconds else float("nan"),
    )
    return result
