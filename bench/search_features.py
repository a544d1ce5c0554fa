"""Search beyond one whole image, measured on a labelled folder: region search on composites, what tagging
costs per image, and how much the catalogue grows per image.

    .venv/bin/python -m bench.search_features /work/shared/datasets/corel1k [--pairs 200] [--output FILE]

- Region search: pairs of library images of different classes are pasted side by side (each scaled to
  256×256) into one query. A box on each half must find that half's image (recall@1 and @10), or its class
  (precision@10 over the half's class). The whole composite, without a box, is the baseline. Everything
  runs through the app's own path: the service's search with `box`, the default engine.
- Tagging: milliseconds per image of the tagger alone, beside the ranking engine's, on the same prepared
  batches.
- Catalogue growth: a catalogue of the folder built by the app's sync loop (features and tags), its SQLite
  file size per image after a checkpoint, beside the bytes of one vector and one tag vector.
"""
from __future__ import annotations

import argparse
import io
import json
import random
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

if __package__ in (None, ""):
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

from imgsearch.config import Settings  # noqa: E402
from imgsearch.engines import load_active_engine  # noqa: E402
from imgsearch.evaluate import read_labelled_folder  # noqa: E402
from imgsearch.extraction import prepare_file  # noqa: E402
from imgsearch.query import Box  # noqa: E402
from imgsearch.service import ImageSearchService, SearchOptions  # noqa: E402

HALF = 256
BATCH = 32


def composite(left: Path, right: Path) -> bytes:
    image = Image.new("RGB", (2 * HALF, HALF))
    for offset, path in ((0, left), (HALF, right)):
        image.paste(Image.open(path).convert("RGB").resize((HALF, HALF), Image.Resampling.BICUBIC), (offset, 0))
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=92)
    return buffer.getvalue()


def library_of(dataset: Path, workdir: Path) -> tuple[Path, dict[str, str]]:
    """A data folder whose images/ are the dataset's files (linked, not copied), with their labels."""
    paths, labels = read_labelled_folder(dataset)
    images = workdir / "data" / "images"
    images.mkdir(parents=True)
    label_of = {}
    for path, label in zip(paths, labels):
        name = f"{label}__{path.name}"
        (images / name).symlink_to(path.resolve())
        label_of[name] = label
    return images.parent, label_of


def region_search(service: ImageSearchService, label_of: dict[str, str], pairs: int, seed: int) -> dict:
    rng = random.Random(seed)
    names = sorted(label_of)
    hits = {key: {"recall_at_1": 0, "recall_at_10": 0, "class_precision_at_10": 0.0}
            for key in ("box", "whole")}
    queries = 0
    for _ in range(pairs):
        left, right = rng.sample(names, 2)
        while label_of[left] == label_of[right]:
            right = rng.choice(names)
        data = composite(service.library.path_of(left), service.library.path_of(right))
        for target, box in ((left, Box(0, 0, 0.5, 1)), (right, Box(0.5, 0, 0.5, 1))):
            queries += 1
            for key, options in (("box", SearchOptions(k=10, box=box)), ("whole", SearchOptions(k=10))):
                found = [hit.filename for hit in service.search_bytes(data, options).hits]
                hits[key]["recall_at_1"] += found[:1] == [target]
                hits[key]["recall_at_10"] += target in found
                hits[key]["class_precision_at_10"] += sum(label_of[n] == label_of[target] for n in found) / 10
    return {"queries": queries, **{key: {metric: round(value / queries, 3) for metric, value in values.items()}
                                   for key, values in hits.items()}}


def tagging_cost(service: ImageSearchService, dataset: Path, sample: int) -> dict:
    paths = read_labelled_folder(dataset)[0][:sample]
    engines = {"engine": service.engine, "tagger": service.tagger}
    seconds = {}
    for role, engine in engines.items():
        batches = [np.stack([prepare_file(engine, p) for p in paths[i:i + BATCH]]) for i in range(0, len(paths), BATCH)]
        engine.extract(batches[0])
        began = time.perf_counter()
        for batch in batches:
            engine.extract(batch)
        seconds[role] = time.perf_counter() - began
    return {"images": len(paths), "engine": service.engine.model_id,
            "engine_ms_per_image": round(1000 * seconds["engine"] / len(paths), 2),
            "tagger_ms_per_image": round(1000 * seconds["tagger"] / len(paths), 2)}


def catalogue_growth(data_dir: Path, service: ImageSearchService) -> dict:
    database = data_dir / "catalogue.db"
    with sqlite3.connect(database) as connection:
        connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        images = connection.execute("SELECT count(*) FROM images").fetchone()[0]
        per_table = {table: connection.execute("SELECT sum(length(vector)) FROM vectors WHERE model_id = ?",
                                               (model,)).fetchone()[0] / images
                     for table, model in (("feature_vector", service.engine.model_id),
                                          ("tag_vector", service.tagger.model_id))}
    return {"images": images, "database_bytes_per_image": round(database.stat().st_size / images),
            **{f"{key}_bytes": round(value) for key, value in per_table.items()}}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dataset", type=Path)
    parser.add_argument("--pairs", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", type=Path)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="imgsearch-search-features-") as temp:
        data_dir, label_of = library_of(args.dataset, Path(temp))
        settings = Settings.from_env(data_dir=data_dir, watch_folder=False, rescan_seconds=0)
        engine = load_active_engine(settings)
        began = time.perf_counter()
        service = ImageSearchService(settings, engine).open()
        if service.startup_job is not None:
            service.startup_job.thread.join()
        indexed_seconds = time.perf_counter() - began
        results = {
            "dataset": args.dataset.name, "engine": engine.model_id,
            "indexing": {"images": len(label_of), "seconds": round(indexed_seconds, 1)},
            "region_search": region_search(service, label_of, args.pairs, args.seed),
            "tagging": tagging_cost(service, args.dataset, 256),
            "catalogue": catalogue_growth(data_dir, service),
        }
        service.close()
    print(json.dumps(results, indent=2))
    if args.output:
        args.output.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
