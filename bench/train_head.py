"""Train your own model on labelled folders: retrieval on held-out images of trained and unseen classes, and its cost.

    .venv/bin/python -m bench.train_head /work/shared/datasets/corel1k /work/shared/datasets/caltech101 \\
        [--unseen 20] [--seeds 0 1 2] [--fine-tune N] [--cache DIR] [--output train_head.json]

For each folder and seed, the head is trained as `python -m imgsearch train --holdout 0.5` trains it, on the
base engine's cached features (and with `--fine-tune N`, the top N blocks after it, as `train --fine-tune N`):
- trained classes: each class is split in half; the head learns from one half (a fifth of it for validation)
  and leave-one-out retrieval is measured on the other half, with the base engine's features and with the
  trained embedding;
- unseen classes: `--unseen` whole classes (a seeded choice, at most a third of the folder's classes) are left
  out of training, the head learns from half of each other class, and retrieval is measured on the held-out
  halves: of the unseen classes alone, of the trained classes alone, and of all of them in one library (new
  kinds of image arriving in a library searched with the trained model).
Times: the first, cold extraction of the features (as the dataset's cached catalogue recorded it, with the load
average then), the activations fine-tuning starts from, each training, and building and saving the full model.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

if __package__ in (None, ""):
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

from imgsearch.config import Settings  # noqa: E402
from imgsearch.training import (  # noqa: E402
    Split,
    TrainingOptions,
    base_backbone,
    base_engine,
    block_activations,
    build_model,
    fine_tune,
    labelled_features,
    retrieval_comparison,
    save_model,
    split_classes,
    train_head,
)

HOLDOUT = 0.5
STAGES = ("head", "fine-tuned")


def train_and_compare(base, vectors: np.ndarray, activations: np.ndarray | None, labels: np.ndarray, rows: np.ndarray,
                      split: Split, held: dict[str, np.ndarray], blocks: int, seed: int) -> dict:
    """Train on `rows` (split within them), then compare retrieval on each set of `held` rows (indices of all)."""
    classes = sorted(set(labels[rows].tolist()))
    targets = np.searchsorted(classes, labels[rows])
    options = TrainingOptions(seed=seed)
    head = train_head(vectors[rows], targets, len(classes), split, options)
    stages = {"head": (head, vectors)}
    if blocks:
        tuned = fine_tune(base_backbone(base), blocks, activations[rows], targets, split, head, options)
        stages["fine-tuned"] = (tuned, activations)
    retrieval = {}
    for part, part_rows in held.items():
        embedded = {stage: trained.embed(inputs[part_rows]) for stage, (trained, inputs) in stages.items()}
        retrieval[part] = retrieval_comparison(vectors[part_rows], embedded, labels[part_rows].tolist())
    return {"seed": seed, **{f"{stage}_epochs": trained.epochs for stage, (trained, _) in stages.items()},
            **{f"{stage}_seconds": round(trained.seconds, 1) for stage, (trained, _) in stages.items()},
            "validation_accuracy": {stage: trained.validation_accuracy for stage, (trained, _) in stages.items()},
            "retrieval": retrieval, "head": head}


def trained_classes(base, vectors, activations, labels, blocks: int, seed: int) -> dict:
    split = split_classes(labels, HOLDOUT, TrainingOptions.validation, seed)
    return train_and_compare(base, vectors, activations, labels, np.arange(len(labels)), split,
                             {"all": split.held_out}, blocks, seed)


def unseen_classes(base, vectors, activations, labels, count: int, blocks: int, seed: int) -> dict:
    classes = sorted(set(labels.tolist()))
    unseen = set(np.random.default_rng(seed).choice(classes, count, replace=False).tolist())
    seen = np.flatnonzero([label not in unseen for label in labels])
    left_out = np.flatnonzero([label in unseen for label in labels])
    split = split_classes(labels[seen], HOLDOUT, TrainingOptions.validation, seed)
    held = {"unseen": left_out[split_classes(labels[left_out], HOLDOUT, 0, seed).held_out],
            "trained": seen[split.held_out]}
    held["all"] = np.sort(np.concatenate([held["unseen"], held["trained"]]))
    result = train_and_compare(base, vectors, activations, labels, seen, split, held, blocks, seed)
    result.pop("head")
    return {**result, "unseen_classes": sorted(unseen)}


def row(runs: list[dict], part: str, stages: list[str]) -> str:
    def cell(values: list[float]) -> str:
        return f"{np.mean(values):.3f}" + (f" ± {np.std(values):.3f}" if len(values) > 1 else "")

    cells = []
    for stage in ["base", *stages]:
        for metric in ("P@10", "mAP"):
            cells.append(cell([run["retrieval"][part][stage][metric] for run in runs]))
    for stage in stages:
        changes = [run["retrieval"][part][stage]["mAP"] - run["retrieval"][part]["base"]["mAP"] for run in runs]
        cells.append(f"{np.mean(changes):+.3f}")
    return " | ".join(cells)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("datasets", nargs="+", type=Path)
    parser.add_argument("--unseen", type=int, default=20, help="whole classes left out of training (default: 20)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--fine-tune", type=int, default=0, metavar="N", help="also fine-tune the top N blocks")
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "imgsearch-eval-cache")
    parser.add_argument("--output", type=Path, default=Path(tempfile.gettempdir()) / "train_head.json")
    args = parser.parse_args()

    base = base_engine("efficientnet-lite0", Settings.from_env(model="efficientnet-lite0"))
    stages = list(STAGES[:2 if args.fine_tune else 1])
    report = []
    for dataset in args.datasets:
        data = labelled_features(dataset, base, args.cache)
        classes = sorted(set(data.labels.tolist()))
        unseen_count = min(args.unseen, len(classes) // 3)
        activations, activation_seconds = None, 0.0
        if args.fine_tune:
            began = time.perf_counter()
            activations = block_activations(base, base_backbone(base), args.fine_tune, dataset, data.names, 32)
            activation_seconds = time.perf_counter() - began
        trained = [trained_classes(base, data.vectors, activations, data.labels, args.fine_tune, seed)
                   for seed in args.seeds]
        began = time.perf_counter()
        with tempfile.TemporaryDirectory() as folder:
            save_model(build_model(base, trained[0]["head"], base_backbone(base)), Path(folder) / "model.keras", {})
        build_seconds = time.perf_counter() - began
        for run in trained:
            run.pop("head")
        unseen = [unseen_classes(base, data.vectors, activations, data.labels, unseen_count, args.fine_tune, seed)
                  for seed in args.seeds]
        report.append({"dataset": dataset.name, "images": len(data.labels), "classes": len(classes),
                       "skipped": data.skipped, "extraction": data.extraction, "fine_tune": args.fine_tune,
                       "activation_seconds": round(activation_seconds, 1), "load_average": os.getloadavg()[0],
                       "build_and_save_seconds": round(build_seconds, 1), "trained_classes": trained,
                       "unseen_count": unseen_count, "unseen_classes": unseen})

        print(f"\n{dataset.name}: {len(data.labels)} images, {len(classes)} classes; seeds {args.seeds}; "
              f"mean ± standard deviation over seeds")
        columns = ["base"] + [{"head": "trained", "fine-tuned": f"top {args.fine_tune} fine-tuned"}[s] for s in stages]
        print("| held-out images | " + " | ".join(f"{c} P@10 | {c} mAP" for c in columns) + " | "
              + " | ".join(f"{c} mAP change" for c in columns[1:]) + " |")
        print("| --- |" + " ---: |" * (3 * len(stages) + 2))
        print(f"| half of every class, all classes trained | {row(trained, 'all', stages)} |")
        for part, title in (("trained", "trained classes"), ("unseen", f"the {unseen_count} unseen classes"),
                            ("all", "all classes in one library")):
            print(f"| {unseen_count} classes left out: {title} | {row(unseen, part, stages)} |")
        extraction = data.extraction
        times = "; ".join(f"{stage}: " + ", ".join(f"{run[f'{stage}_seconds']} s ({run[f'{stage}_epochs']} epochs)"
                                                   for run in trained) for stage in stages)
        print(f"extraction: {extraction.get('images')} images in {extraction.get('seconds')} s "
              f"({extraction.get('images_per_second')} img/s, load average {extraction.get('load_average')}); "
              + (f"activations {activation_seconds:.0f} s; " if args.fine_tune else "")
              + f"{times}; build and save {build_seconds:.1f} s; load average now {os.getloadavg()[0]:.1f}")
    args.output.write_text(json.dumps(report, indent=2, default=str))
    print(f"\nwrote {args.output}")


if __name__ == "__main__":
    main()
