"""Extraction throughput of candidate feature configurations, end to end from JPEG files, interleaved.

Each configuration is `engine[@scale,scale...][+flip]`, built through the engine registry as the app builds
it from its settings (`efficientnet-lite1@240` is IMAGE_SEARCH_MODEL=efficientnet-lite1 with
IMAGE_SEARCH_FEATURE_SCALES=240; a name alone gets the engine's default scales, 176 and 240 px for Lite1).
Per round, every configuration runs `extraction.extract_files` (what
"Generate Features" runs) over the same generated photos, in turn, so load from other processes hits them
alike; the median of the rounds is reported with each round's figure, and each rate as a share of the first
configuration's in the same round. Decoding alone (JPEG draft decode + resize, no model) is timed too.
On a shared machine the wall-clock rates move with other processes' load, so the CPU time the process spent
per image (all its threads) is reported beside them: it changes much less with load, and on an otherwise
idle machine throughput is about cores ÷ CPU time per image when both cores stay busy.

    .venv/bin/python -m bench.candidates efficientnet-lite0 efficientnet-lite1@240 efficientnet-lite1@176,240
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from imgsearch.config import Settings
from imgsearch.engines import get_engine
from imgsearch.extraction import prepare_file

from .common import write_photos
from .extraction import _model_only_rate, _ours


def engine_for(configuration: str, settings: Settings):
    """`name[@scales][+flip]` -> the loaded engine the app would run with those settings."""
    name, flip = (configuration[:-5], True) if configuration.endswith("+flip") else (configuration, False)
    name, _, scales = name.partition("@")
    return get_engine(name, dataclasses.replace(settings, feature_scales=scales, flip_average=flip))


def decode_rate(engine, paths: list[Path], workers: int) -> float:
    """Images/s of decoding and preparing alone, with the same thread pool size as extraction."""
    began = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(lambda path: prepare_file(engine, path), paths))
    return len(paths) / (time.perf_counter() - began)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("configurations", nargs="+", metavar="CONFIG")
    parser.add_argument("--photos", type=int, default=64, help="generated JPEGs, 640 to 4000 px (default: 64)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default: 3)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=2, help="decoding threads (default: 2)")
    parser.add_argument("--output", type=Path, help="also write the figures as JSON here")
    args = parser.parse_args(argv)

    settings = Settings.from_env()
    engines = {configuration: engine_for(configuration, settings) for configuration in args.configurations}
    with tempfile.TemporaryDirectory(prefix="bench-candidates-") as workdir:
        paths = write_photos(Path(workdir) / "photos", args.photos)
        for engine in engines.values():
            _ours(engine, paths[:4], args.batch_size, args.workers)  # warm up: first runs pay for set-up
        rounds = {configuration: [] for configuration in engines}
        cpu_ms = {configuration: [] for configuration in engines}
        model_only = {configuration: [] for configuration in engines}
        decoding = {configuration: [] for configuration in engines}
        for _ in range(args.rounds):
            for configuration, engine in engines.items():
                cpu_began = time.process_time()
                seconds, _ = _ours(engine, paths, args.batch_size, args.workers)
                cpu_ms[configuration].append(1000 * (time.process_time() - cpu_began) / len(paths))
                rounds[configuration].append(len(paths) / seconds)
                model_only[configuration].append(_model_only_rate(engine, paths, args.batch_size))
                decoding[configuration].append(decode_rate(engine, paths, args.workers))
    first = args.configurations[0]
    figures = []
    for configuration, engine in engines.items():
        ratios = [rate / reference for rate, reference in zip(rounds[configuration], rounds[first])]
        figures.append({
            "configuration": configuration, "model_id": engine.model_id, "runtime": engine.runtime,
            "end_to_end_img_s": round(statistics.median(rounds[configuration]), 1),
            "rounds_img_s": [round(rate, 1) for rate in rounds[configuration]],
            "vs_first": round(statistics.median(ratios), 2), "rounds_vs_first": [round(r, 2) for r in ratios],
            "cpu_ms_per_image": round(statistics.median(cpu_ms[configuration]), 1),
            "cpu_vs_first": round(statistics.median(cpu_ms[first]) / statistics.median(cpu_ms[configuration]), 2),
            "model_only_img_s": round(statistics.median(model_only[configuration]), 1),
            "decode_only_img_s": round(statistics.median(decoding[configuration]), 1),
        })
    print(f"{args.photos} photos, {args.rounds} rounds, batch {args.batch_size}, {args.workers} decoding threads, "
          f"load average {os.getloadavg()[0]:.1f} at the end")
    print("| configuration | runtime | end to end img/s (rounds) | vs first (rounds) | CPU ms per image | first's CPU "
          "time ÷ this | model only img/s | decoding img/s |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for row in figures:
        print(f"| {row['configuration']} | {row['runtime']} | {row['end_to_end_img_s']} "
              f"({', '.join(map(str, row['rounds_img_s']))}) | {row['vs_first']} "
              f"({', '.join(map(str, row['rounds_vs_first']))}) | {row['cpu_ms_per_image']} | {row['cpu_vs_first']} | "
              f"{row['model_only_img_s']} | "
              f"{row['decode_only_img_s']} |")
    if args.output:
        args.output.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
