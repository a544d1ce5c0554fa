"""Word search on a labelled folder: precision per class query, how many tags an image needs, and their cost.

    .venv/bin/python -m bench.word_search /work/shared/datasets/corel1k [--output word_search.json]

Every image is tagged by the EfficientNet-Lite0 ImageNet classifier. For each class of the folder the
class name itself is searched (as a person would type it, plural included); where it matches no
vocabulary word, the suggestions are shown and the hand-picked words in ALTERNATIVES are searched
instead. Each query runs against tags kept under several policies (top-N, probability floor): P@10,
average precision over all images of the class, and how many of them carry the query's concepts at all.
Storage: the bytes per image that tags add to a SQLite table (as a catalogue would keep them) and as JSON.
Tagging cost per image: the classifier's own pass (TensorFlow, as the engine runs it with its classifier),
and the alternative of the backbone on ONNX Runtime plus the head in numpy, which is all a ranking engine
that already computes EfficientNet-Lite0 features would add (its probabilities are compared with the first).
"""
from __future__ import annotations

import argparse
import json
import os
import sqlite3
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

if __package__ in (None, ""):
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

from imgsearch.config import Settings  # noqa: E402
from imgsearch.engines.efficientnet_lite import (  # noqa: E402
    INPUT_TRANSFORM,
    EfficientNetLite0Engine,
    assign_weights,
    build_backbone,
    load_converted,
)
from imgsearch.engines.onnx_runtime import export, session_runner  # noqa: E402
from imgsearch.evaluate import read_labelled_folder  # noqa: E402
from imgsearch.extraction import prepare_file  # noqa: E402
from imgsearch.tagging import NO_TAG, TAG_FLOOR, TAGS_PER_IMAGE, rank_by_text, top_tags  # noqa: E402
from imgsearch.vocabulary import NoVocabularyMatch, load  # noqa: E402

# Vocabulary words for a class whose own name is not one, each naming what the class shows.
ALTERNATIVES = {"beaches": ["seashore", "sandbar"]}
# Classes with no ImageNet concept at all: the nearest vocabulary word, searched to show what it finds.
NO_COUNTERPART = {"africans": ["person"]}
# (tags kept per image, probability floor); 1000 tags is every class, the most a catalogue could keep.
POLICIES = [(1, 0.0), (3, 0.0), (5, 0.0), (10, 0.0), (20, 0.0), (50, 0.0), (1000, 0.0),
            (10, 0.001), (20, 0.001), (50, 0.001), (20, 0.005),
            (5, 0.01), (10, 0.01), (1000, 0.01), (1000, 0.05), (1000, 0.1)]
TOP = 10
# A tag packed as a 2-byte class and a 4-byte float32 probability, the smallest honest encoding.
PACKED_BYTES_PER_TAG = 6


def classify(engine: EfficientNetLite0Engine, paths: list[Path], batch_size: int) -> tuple[np.ndarray, dict]:
    """(n, 1000) probabilities, and seconds spent decoding and in the classifier."""
    engine.load()
    engine.classify(np.zeros((1, 224, 224, 3), np.uint8))  # tracing is not part of the cost per image
    probabilities, decode_seconds, model_seconds = [], 0.0, 0.0
    with ThreadPoolExecutor(2) as pool:
        for start in range(0, len(paths), batch_size):
            began = time.perf_counter()
            batch = np.stack(list(pool.map(lambda p: prepare_file(engine, p), paths[start:start + batch_size])))
            decode_seconds += time.perf_counter() - began
            began = time.perf_counter()
            probabilities.append(engine.classify(batch))
            model_seconds += time.perf_counter() - began
    return np.concatenate(probabilities), {"decode_seconds": decode_seconds, "classifier_seconds": model_seconds}


def head_cost(engine: EfficientNetLite0Engine, paths: list[Path], probabilities: np.ndarray,
              batch_size: int) -> dict:
    """Tags from features a ranking engine already made: the classifier head alone, after the backbone on
    ONNX Runtime (as the efficientnet-lite0 engine runs it), compared with the TensorFlow classifier."""
    layers = load_converted(engine.cache_path)
    backbone = build_backbone()
    assign_weights(backbone, layers)
    runner = session_runner(export(backbone, INPUT_TRANSFORM))
    features, backbone_seconds = [], 0.0
    with ThreadPoolExecutor(2) as pool:
        for start in range(0, len(paths), batch_size):
            batch = np.stack(list(pool.map(lambda p: prepare_file(engine, p), paths[start:start + batch_size])))
            began = time.perf_counter()
            features.append(runner(batch))
            backbone_seconds += time.perf_counter() - began
    features = np.concatenate(features)
    weights, bias = layers["classifier"]
    began = time.perf_counter()
    logits = features @ weights + bias
    logits -= logits.max(axis=1, keepdims=True)
    head = np.exp(logits)
    head /= head.sum(axis=1, keepdims=True)
    seconds = time.perf_counter() - began
    return {"onnx_backbone_ms_per_image": 1000 * backbone_seconds / len(paths),
            "head_ms_per_image": 1000 * seconds / len(paths),
            "top1_agreement_with_tensorflow": float(np.mean(head.argmax(1) == probabilities.argmax(1))),
            "max_probability_difference": float(np.abs(head - probabilities).max())}


def average_precision(ranked_rows: list[int], relevant: np.ndarray) -> float:
    """Over all relevant images: those never retrieved count as missed."""
    hits, total = 0, 0.0
    for position, row in enumerate(ranked_rows, start=1):
        if relevant[row]:
            hits += 1
            total += hits / position
    return total / relevant.sum()


def query_metrics(match, classes, kept, relevant) -> dict:
    ranked = [row for row, _score in rank_by_text(match, classes, kept)]
    return {"p_at_10": sum(bool(relevant[row]) for row in ranked[:TOP]) / TOP,
            "ap": average_precision(ranked, relevant),
            "class_images_reached": int(sum(bool(relevant[row]) for row in ranked)),
            "results": len(ranked)}


def storage_bytes(classes: np.ndarray, kept: np.ndarray) -> dict:
    """Bytes per image that the tags add: rows of a SQLite table with an index by concept, and JSON text."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "tags.sqlite"
        with sqlite3.connect(path) as db:
            db.execute("CREATE TABLE tags (image INTEGER NOT NULL, concept INTEGER NOT NULL, "
                       "probability REAL NOT NULL, PRIMARY KEY (image, concept)) WITHOUT ROWID")
            db.execute("CREATE INDEX tags_by_concept ON tags (concept, probability)")
            db.commit()
            empty = path.stat().st_size
            db.executemany("INSERT INTO tags VALUES (?, ?, ?)",
                           ((image, int(c), float(p)) for image, (row_c, row_p) in enumerate(zip(classes, kept))
                            for c, p in zip(row_c, row_p) if c != NO_TAG))
            db.commit()
        with sqlite3.connect(path) as db:
            db.execute("VACUUM")
        sqlite_bytes = path.stat().st_size - empty
    as_json = [json.dumps([[int(c), round(float(p), 4)] for c, p in zip(row_c, row_p) if c != NO_TAG],
                          separators=(",", ":")) for row_c, row_p in zip(classes, kept)]
    return {"sqlite_bytes_per_image": sqlite_bytes / len(classes),
            "json_bytes_per_image": sum(map(len, as_json)) / len(classes)}


def queries_for(label: str, vocabulary) -> list[dict]:
    """The class name, then the alternatives when the name is not in the vocabulary."""
    try:
        return [{"query": label, "match": vocabulary.match(label), "alternative": False, "counterpart": True}]
    except NoVocabularyMatch as refused:
        entries = [{"query": label, "match": None, "suggestions": refused.suggestions}]
    return entries + [{"query": word, "match": vocabulary.match(word), "alternative": True,
                       "counterpart": label not in NO_COUNTERPART}
                      for word in ALTERNATIVES.get(label, []) + NO_COUNTERPART.get(label, [])]


def describe(match) -> str:
    return "; ".join(f"{', '.join(term.words)} -> " + ", ".join(f"{c.name} ({c.wnid}, {len(c.classes)} classes)"
                                                                 for c in term.concepts)
                     for term in match.terms)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dataset", type=Path, help="folder with labels.csv (filename,label) or class subfolders")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--output", type=Path, help="write the results as JSON here")
    args = parser.parse_args(argv)

    paths, labels = read_labelled_folder(args.dataset)
    labels = np.array(labels)
    vocabulary = load()
    engine = EfficientNetLite0Engine(Settings.from_env().cache_dir, include_classifier=True)
    probabilities, timing = classify(engine, paths, args.batch_size)
    n = len(paths)
    cost = {"images": n, "decode_ms_per_image": 1000 * timing["decode_seconds"] / n,
            "classifier_ms_per_image": 1000 * timing["classifier_seconds"] / n,
            "load_average": os.getloadavg()[0], **head_cost(engine, paths, probabilities, args.batch_size)}
    print(f"# tagging cost, {n} images: " + ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                                                    for k, v in cost.items()))

    policies = []
    for count, floor in POLICIES:
        classes, kept = top_tags(probabilities, count, floor)
        policies.append({"tags": count, "floor": floor, "mean_tags": float((classes != NO_TAG).sum(1).mean()),
                         **storage_bytes(classes, kept), "arrays": (classes, kept)})

    rows = []
    for label in sorted(set(labels)):
        relevant = labels == label
        for entry in queries_for(label, vocabulary):
            row = {"class": label, "query": entry["query"], "alternative": entry.get("alternative", False),
                   "counterpart": entry.get("counterpart", False)}
            if entry["match"] is None:
                rows.append({**row, "matched": None, "suggestions": entry["suggestions"]})
                continue
            row["matched"] = describe(entry["match"])
            row["by_policy"] = [{"tags": p["tags"], "floor": p["floor"],
                                 **query_metrics(entry["match"], *p["arrays"], relevant)} for p in policies]
            rows.append(row)

    chosen = next(i for i, p in enumerate(policies) if (p["tags"], p["floor"]) == (TAGS_PER_IMAGE, TAG_FLOOR))
    print(f"\n## Per class, tags kept: top {TAGS_PER_IMAGE} with p >= {TAG_FLOOR} | every class (1000)\n")
    print("| class | query | matched concepts | P@10 | AP | class images reached | P@10 (all) | AP (all) |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    everything = next(i for i, p in enumerate(policies) if (p["tags"], p["floor"]) == (1000, 0.0))
    for row in rows:
        query = row["query"] + (" (no counterpart)" if not row["counterpart"] else
                                " (alternative)" if row["alternative"] else "")
        if row["matched"] is None:
            print(f"| {row['class']} | {query} | none; closest: {', '.join(row['suggestions'])} | - | - | - | - | - |")
            continue
        ours, full = row["by_policy"][chosen], row["by_policy"][everything]
        print(f"| {row['class']} | {query} | {row['matched']} | {ours['p_at_10']:.1f} | {ours['ap']:.3f} | "
              f"{ours['class_images_reached']} | {full['p_at_10']:.1f} | {full['ap']:.3f} |")

    # One query per class that has a counterpart: its own name, else its first alternative.
    searched = {}
    for row in rows:
        if row["matched"] is not None and row["counterpart"]:
            searched.setdefault(row["class"], row)
    searched = list(searched.values())
    print(f"\n## Tag policies (means over {len(searched)} classes: {', '.join(row['query'] for row in searched)})\n")
    print("| tags kept | floor | mean tags/image | mean P@10 | mean AP | class images reached | "
          "SQLite bytes/image | JSON bytes/image | packed bytes/image |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for i, policy in enumerate(policies):
        metrics = [row["by_policy"][i] for row in searched]
        print(f"| {policy['tags']} | {policy['floor']} | {policy['mean_tags']:.2f} | "
              f"{np.mean([m['p_at_10'] for m in metrics]):.3f} | {np.mean([m['ap'] for m in metrics]):.3f} | "
              f"{np.mean([m['class_images_reached'] for m in metrics]):.1f} | "
              f"{policy['sqlite_bytes_per_image']:.0f} | {policy['json_bytes_per_image']:.0f} | "
              f"{PACKED_BYTES_PER_TAG * policy['mean_tags']:.0f} |")

    if args.output:
        for policy in policies:
            del policy["arrays"]
        args.output.write_text(json.dumps({"cost": cost, "policies": policies, "queries": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
