"""Serving from the cached ONNX graph, against IMAGE_SEARCH_RUNTIME=tensorflow, side by side in one run.

For each configuration (the default settings on a machine without ResNet50's weights, `efficientnet-lite0`
named explicitly, and `resnet50` with random weights) one prefilled library of N stored vectors is served by
`python app.py` three ways, the three servers running side by side and searched in turns:
- lean (ours): the graph was cached by `python -m imgsearch prepare` beforehand, so TensorFlow is not loaded;
- cold: an empty cache folder, so the start imports TensorFlow, builds the Keras model, exports and checks
  it, as every start did before the graph was cached (the query-time reference);
- baseline: `IMAGE_SEARCH_RUNTIME=tensorflow`, the model built and run by TensorFlow.
Reported: process start to first answer, RSS after searches, `POST /api/search` p50, whether TensorFlow's
library was mapped, the time `prepare` took, and the lowest cosine between the two runtimes' vectors of the
bench photos, computed in this process.

`python -m bench.lean_serving [--n 5000] [--repeats 3]` runs it alone; `bench.run` runs it as section "lean".
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

import numpy as np  # noqa: E402
import requests  # noqa: E402

from bench.common import (PROJECT_DIR, ServerProcess, latency_summary, prefill_library,  # noqa: E402
                          prepare_graphs, query_jpeg, result_row, write_photos)

# The weights' origin is reached through a proxy address where nothing listens, and Keras's folder is empty:
# the default start then meets missing ResNet50 weights on any machine, and nothing is downloaded.
OFFLINE = {"HTTPS_PROXY": "http://127.0.0.1:9", "HTTP_PROXY": "http://127.0.0.1:9"}
CONFIGS = {
    # label: (the model stored vectors belong to, settings)
    "default settings": ("efficientnet-lite0", {}),
    "efficientnet-lite0": ("efficientnet-lite0", {"IMAGE_SEARCH_MODEL": "efficientnet-lite0"}),
    "resnet50 (random weights)": ("resnet50", {"IMAGE_SEARCH_MODEL": "resnet50", "IMAGE_SEARCH_WEIGHTS": "random"}),
}
TARGET_STARTUP_RATIO = 0.5
TARGET_RSS_RATIO = 0.45
TARGET_COSINE = 0.9999


def _server(data_dir: Path, env: dict[str, str], log_path: Path) -> ServerProcess:
    return ServerProcess([sys.executable, str(PROJECT_DIR / "app.py")],
                         {"IMAGE_SEARCH_DATA_DIR": str(data_dir), "IMAGE_SEARCH_LOG_LEVEL": "WARNING", **env},
                         log_path, "/api/check-features")


def _serve_side_by_side(data_dir: Path, envs: dict[str, dict[str, str]], logs: Path, jpeg: bytes,
                        queries: int) -> dict[str, dict]:
    """Start one server per kind in turn (each start timed while the others idle), then search them in
    turns, one query each round, so a busy machine slows every kind alike; RSS is read after the searches."""
    with contextlib.ExitStack() as stack:
        servers = {kind: stack.enter_context(_server(data_dir, env, logs / f"{kind}.log"))
                   for kind, env in envs.items()}
        seconds: dict[str, list[float]] = {kind: [] for kind in servers}
        with requests.Session() as session:
            for round_number in range(queries + 2):  # two warm-up rounds
                for kind, server in servers.items():
                    start = time.perf_counter()
                    response = session.post(server.url + "/api/search",
                                            files={"file": ("q.jpg", jpeg, "image/jpeg")}, timeout=120)
                    response.raise_for_status()
                    if round_number >= 2:
                        seconds[kind].append(time.perf_counter() - start)
            statuses = {kind: session.get(server.url + "/api/status", timeout=30).json()
                        for kind, server in servers.items()}
        return {kind: {"startup_s": server.seconds_to_first_answer, **server.memory(), **latency_summary(seconds[kind]),
                       "tensorflow_loaded": "libtensorflow" in Path(f"/proc/{server.process.pid}/maps").read_text(),
                       "model": statuses[kind]["model"], "runtime": statuses[kind]["runtime"],
                       "fallback": statuses[kind]["fallback"]}
                for kind, server in servers.items()}


def _vector_agreement(model: str, env: dict[str, str], photos: list[Path]) -> float:
    """The lowest cosine between ONNX Runtime (from the cached graph) and TensorFlow vectors of the photos."""
    from imgsearch.config import Settings
    from imgsearch.engines import get_engine
    from imgsearch.extraction import extract_files

    by_name = {path.name: path for path in photos}
    vectors = []
    for runtime in ("onnxruntime", "tensorflow"):
        settings = Settings.from_env({**env, "IMAGE_SEARCH_RUNTIME": runtime}, model=model)
        engine = get_engine(model, settings)
        assert engine.runtime == runtime, f"{model} ran on {engine.runtime}, not {runtime}"
        batches = extract_files(engine, list(by_name), by_name.__getitem__, batch_size=8, workers=2)
        vectors.append(np.concatenate([batch.vectors for batch in batches]))
    return float(np.min(np.sum(vectors[0] * vectors[1], axis=1)))


def _median(runs: list[dict], key: str) -> float:
    return float(statistics.median(run[key] for run in runs))


def run(labels: list[str], n: int, workdir: Path, queries: int, photos: list[Path], repeats: int = 1,
        cold: bool = True) -> tuple[list[dict], dict]:
    jpeg = query_jpeg()
    rows, details = [], {}
    for label in labels:
        model, settings = CONFIGS[label]
        slug = label.split(" ")[0]
        cache = workdir / f"lean-cache-{slug}"
        env = {**OFFLINE, "KERAS_HOME": str(workdir / "empty-keras-home"), "IMAGE_SEARCH_CACHE_DIR": str(cache),
               **settings}
        data_dir = workdir / f"lean-{slug}-{n}"
        prefill_library(data_dir, model, n)
        prepare_s = prepare_graphs(env)
        measured = {"lean": [], "cold": [], "tensorflow": []}
        for repeat in range(repeats):
            envs = {"lean": env}
            if cold:
                # Only the converted weights are kept, as before graphs were cached: the graph is exported again.
                cold_cache = workdir / f"lean-cold-{slug}-{repeat}"
                cold_cache.mkdir()
                for converted in cache.glob("*.npz"):
                    shutil.copy(converted, cold_cache)
                envs["cold"] = {**env, "IMAGE_SEARCH_CACHE_DIR": str(cold_cache)}
            envs["tensorflow"] = {**env, "IMAGE_SEARCH_RUNTIME": "tensorflow"}
            logs = workdir / f"lean-logs-{slug}-{repeat}"
            logs.mkdir()
            for kind, result in _serve_side_by_side(data_dir, envs, logs, jpeg, queries).items():
                measured[kind].append(result)
        served = measured["lean"][0]["model"]
        cosine = _vector_agreement(served, env, photos)
        lean, baseline = measured["lean"], measured["tensorflow"]
        startup, startup_tf = _median(lean, "startup_s"), _median(baseline, "startup_s")
        rss, rss_tf = _median(lean, "rss_mb"), _median(baseline, "rss_mb")
        p50, p50_tf = _median(lean, "p50_ms"), _median(baseline, "p50_ms")
        p50_cold = _median(measured["cold"], "p50_ms") if cold else None
        name = f"{label}, serving {served}"
        note = "baseline column: IMAGE_SEARCH_RUNTIME=tensorflow"
        rows += [
            result_row("lean", f"{name}: start to first answer, N={n:,}", "s", startup, startup_tf,
                       higher_is_better=False, target=f"<= {TARGET_STARTUP_RATIO}x baseline",
                       met=startup <= TARGET_STARTUP_RATIO * startup_tf,
                       cold_cache_s=_median(measured["cold"], "startup_s") if cold else None, prepare_s=prepare_s,
                       note=note),
            result_row("lean", f"{name}: RSS after searches", "MiB", rss, rss_tf, higher_is_better=False,
                       target=f"<= {TARGET_RSS_RATIO}x baseline", met=rss <= TARGET_RSS_RATIO * rss_tf,
                       cold_cache_mb=_median(measured["cold"], "rss_mb") if cold else None, note=note),
            result_row("lean", f"{name}: POST /api/search p50", "ms", p50, p50_tf, higher_is_better=False,
                       target=f"<= fresh-cache start's {p50_cold:.1f} ms" if cold else "",
                       met=p50 <= p50_cold if cold else None, note=note),
            result_row("lean", f"{name}: min cosine to TensorFlow vectors, {len(photos)} photos", "cosine", cosine, None,
                       higher_is_better=True, target=f">= {TARGET_COSINE}", met=cosine >= TARGET_COSINE),
        ]
        details[label] = {"n": n, "prepare_s": prepare_s, "runs": measured, "min_cosine": cosine,
                          "tensorflow_loaded_lean": any(r["tensorflow_loaded"] for r in lean)}
    return rows, details


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Lean serving against IMAGE_SEARCH_RUNTIME=tensorflow.")
    parser.add_argument("--n", type=int, default=5_000, help="stored vectors (default: %(default)s)")
    parser.add_argument("--queries", type=int, default=20, help="timed searches per server (default: %(default)s)")
    parser.add_argument("--photos", type=int, default=12, help="photos for the vector check (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=1, help="servers started per kind; medians are reported")
    parser.add_argument("--config", choices=list(CONFIGS), action="append", help="only this configuration")
    parser.add_argument("--output", type=Path, help="also write the rows and details as JSON here")
    args = parser.parse_args(argv)
    from bench.run import table

    with tempfile.TemporaryDirectory(prefix="imgsearch-lean-") as temp:
        workdir = Path(temp)
        load_before = os.getloadavg()
        rows, details = run(args.config or list(CONFIGS), args.n, workdir, args.queries,
                            write_photos(workdir / "photos", args.photos), args.repeats)
        details["load_average"] = {"before": load_before, "after": os.getloadavg()}
    print(table(rows))
    print(f"load average before {load_before[0]:.2f}, after {details['load_average']['after'][0]:.2f}")
    if args.output:
        args.output.write_text(json.dumps({"rows": rows, "details": details}, indent=2, default=float))


if __name__ == "__main__":
    main()
