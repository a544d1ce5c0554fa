"""The performance suite in one command: `python -m bench.run [--quick | --smoke]`.

Every line shows our figure, the seed-style baseline measured in the same run on the same machine,
and the speed-up (baseline / ours for times, ours / baseline for rates). Results go to bench/results.json.
Full mode took about 5 minutes on 2 cores before the lean section, which adds several more (ten or more
in all on a busy machine); --quick took 3.8 minutes on a busy machine; --smoke less.
Nothing here asserts a number: the targets column only reports.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):
    # Run as `python bench/run.py`: import the bench package, not this folder's modules as top-level names.
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

from bench import catalogue, extraction, http_search, lean_serving, search, startup_memory  # noqa: E402
from bench.common import machine_info, peak_gflops, write_photos  # noqa: E402

RESULTS_PATH = Path(__file__).resolve().parent / "results.json"
SECTIONS = ("extraction", "search", "http", "startup_memory", "lean", "catalogue")

MODES = {
    "full": {
        "photos": 64, "baseline_photos": 16, "extraction_models": ["resnet50", "efficientnet-lite0"],
        "resnet50_options": True,
        "search_sizes": [10_000, 100_000, 1_000_000], "search_queries": 40, "search_baseline_queries": 8,
        "http_models": ["resnet50", "efficientnet-lite0"], "http_n": 10_000, "http_queries": 50,
        "throughput_requests": 96, "store_model": "resnet50", "store_n": 100_000, "store_searches": 10,
        "lean_configs": list(lean_serving.CONFIGS), "lean_n": 5_000, "lean_queries": 20, "lean_cold": True,
    },
    "quick": {
        "photos": 12, "baseline_photos": 4, "extraction_models": ["efficientnet-lite0"], "resnet50_options": False,
        "search_sizes": [10_000], "search_queries": 20, "search_baseline_queries": 5,
        "http_models": ["efficientnet-lite0"], "http_n": 2_000, "http_queries": 10,
        "throughput_requests": 24, "store_model": "efficientnet-lite0", "store_n": 5_000, "store_searches": 5,
        "lean_configs": ["efficientnet-lite0"], "lean_n": 5_000, "lean_queries": 10, "lean_cold": True,
    },
    "smoke": {
        "photos": 4, "baseline_photos": 2, "extraction_models": ["efficientnet-lite0"], "resnet50_options": False,
        "search_sizes": [2_000], "search_queries": 5, "search_baseline_queries": 2,
        "http_models": ["efficientnet-lite0"], "http_n": 200, "http_queries": 3,
        "throughput_requests": 8, "store_model": "efficientnet-lite0", "store_n": 500, "store_searches": 2,
        "lean_configs": ["efficientnet-lite0"], "lean_n": 200, "lean_queries": 2, "lean_cold": False,
    },
}


def _format(value, unit: str) -> str:
    if value is None:
        return "-"
    if unit == "cosine":
        return f"{value:.6f}"
    if unit in ("ms", "s", "%", "img/s", "req/s") and abs(value) < 100:
        return f"{value:.1f}" if abs(value) >= 10 else f"{value:.2f}"
    return f"{value:,.0f}"


def table(rows: list[dict]) -> str:
    header = ("section", "metric", "unit", "ours", "seed-style", "speed-up", "target")
    lines = [header]
    for row in rows:
        target = row["target"]
        if row["target_met"] is not None:
            target = f"{target} [{'met' if row['target_met'] else 'NOT met'}]"
        lines.append((row["section"], row["metric"], row["unit"], _format(row["ours"], row["unit"]),
                      _format(row["baseline"], row["unit"]),
                      f"{row['speedup']:.1f}x" if row["speedup"] else "-", target))
    widths = [max(len(str(line[i])) for line in lines) for i in range(len(header))]
    return "\n".join("  ".join(str(cell).ljust(width) for cell, width in zip(line, widths)).rstrip()
                     for line in lines)


def run(mode: str, output: Path, sections: tuple[str, ...] = SECTIONS) -> dict:
    plan = MODES[mode]
    started = time.perf_counter()
    results = {"mode": mode, "machine": machine_info(), "plan": plan, "rows": [], "sections": {}, "seconds": {}}
    with tempfile.TemporaryDirectory(prefix="imgsearch-bench-") as temp:
        workdir = Path(temp)
        results["machine"]["peak_fp32_gflop_s"] = peak = peak_gflops()
        results["seconds"]["setup"] = time.perf_counter() - started
        steps = {
            "extraction": lambda: extraction.run(
                plan["extraction_models"], write_photos(workdir / "photos", plan["photos"]),
                plan["baseline_photos"], batch_size=32, workers=2, peak_gflops=peak,
                resnet50_options=plan["resnet50_options"]),
            "search": lambda: search.run(plan["search_sizes"], plan["search_queries"],
                                         plan["search_baseline_queries"]),
            "http": lambda: http_search.run(plan["http_models"], plan["http_n"], workdir, plan["http_queries"],
                                            plan["throughput_requests"]),
            "startup_memory": lambda: startup_memory.run(plan["store_model"], plan["store_n"], workdir,
                                                         plan["store_searches"]),
            "lean": lambda: lean_serving.run(plan["lean_configs"], plan["lean_n"], workdir, plan["lean_queries"],
                                             write_photos(workdir / "lean-photos", plan["photos"]),
                                             cold=plan["lean_cold"]),
            "catalogue": lambda: catalogue.run(catalogue.PLANS[mode], workdir),
        }
        for name in sections:
            section_start = time.perf_counter()
            print(f"[bench] {name} ...", file=sys.stderr, flush=True)
            rows, details = steps[name]()
            results["rows"] += rows
            results["sections"][name] = details
            results["seconds"][name] = time.perf_counter() - section_start
        cleanup_start = time.perf_counter()
    results["seconds"]["cleanup"] = time.perf_counter() - cleanup_start
    results["seconds"]["total"] = time.perf_counter() - started
    output.write_text(json.dumps(results, indent=2, default=float))
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Image search performance suite.")
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="small sizes, a few minutes")
    size.add_argument("--smoke", action="store_true", help="tiny sizes, only checks that every part runs")
    parser.add_argument("--only", choices=SECTIONS, action="append", help="run only this section (repeatable)")
    parser.add_argument("--output", type=Path, default=RESULTS_PATH, help="where to write the JSON results")
    args = parser.parse_args(argv)
    mode = "smoke" if args.smoke else "quick" if args.quick else "full"
    results = run(mode, args.output, tuple(args.only or SECTIONS))
    machine = results["machine"]
    print(f"{machine['cpu']}, {machine['cores']} cores, TensorFlow {machine['tensorflow']}, {machine['date']}, "
          f"fp32 matmul peak {machine['peak_fp32_gflop_s']:.0f} GFLOP/s, mode {mode}, "
          f"{results['seconds']['total']:.0f} s")
    print(table(results["rows"]))
    print(f"Results written to {args.output}")


if __name__ == "__main__":
    main()
