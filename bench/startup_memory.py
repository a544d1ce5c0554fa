"""Startup time and resident memory of a server holding N stored user vectors, ours against the seed's.

Startup: from process start to the first answered request (model load and warm-up included), with the
model's graph already exported and cached by `python -m imgsearch prepare`, as after the first use.
Memory: RSS of the server after searches, with an empty store (the model alone) and with N vectors;
the target is model-only RSS plus at most 1.3 times the matrix's bytes. The growth of RSS over a run
of searches shows whether a request copies the matrix.
"""
from __future__ import annotations

from pathlib import Path

import requests

from .common import app_env, app_server, prefill_library, prepare_graphs, query_jpeg, result_row, seed_server

TARGET_STARTUP_S = 10.0
MEMORY_FACTOR = 1.3
MEMORY_TARGET_MIN_N = 100_000


def _searches(url: str, jpeg: bytes, count: int) -> None:
    with requests.Session() as session:
        for _ in range(count):
            response = session.post(url + "/api/search", files={"file": ("q.jpg", jpeg, "image/jpeg")}, timeout=120)
            response.raise_for_status()


def run(model: str, n: int, workdir: Path, searches: int) -> tuple[list[dict], dict]:
    jpeg = query_jpeg()
    prepare_graphs(app_env(model))
    empty_dir = workdir / f"store-empty-{model}"
    empty_dir.mkdir(parents=True, exist_ok=True)
    with app_server(empty_dir, model, workdir / "startup-empty.log") as server:
        _searches(server.url, jpeg, 3)
        model_only = server.memory()
        empty_startup = server.seconds_to_first_answer

    full_dir = workdir / f"store-{model}-{n}"
    info = prefill_library(full_dir, model, n)
    matrix_mb = info["matrix_bytes"] / 2**20
    with app_server(full_dir, model, workdir / "startup-full.log") as server:
        startup = server.seconds_to_first_answer
        _searches(server.url, jpeg, 1)
        after_first = server.memory()
        _searches(server.url, jpeg, searches)
        ours = server.memory()
    with seed_server(full_dir, model, workdir / "startup-seed.log") as server:
        seed_startup = server.seconds_to_first_answer
        _searches(server.url, jpeg, max(3, searches // 4))
        seed = server.memory()

    memory_budget = model_only["rss_mb"] + MEMORY_FACTOR * matrix_mb
    # Below ~100k vectors the matrix is smaller than the noise of thread arenas, so the ratio says nothing.
    judged = n >= MEMORY_TARGET_MIN_N
    rows = [
        result_row("startup", f"{model}, process start to first answer, N={n:,}", "s", startup, seed_startup,
                   higher_is_better=False, target=f"<= {TARGET_STARTUP_S:.0f} s", met=startup <= TARGET_STARTUP_S,
                   empty_store_s=empty_startup),
        result_row("memory", f"{model} RSS after searches, N={n:,} ({matrix_mb:.0f} MiB matrix)", "MiB",
                   ours["rss_mb"], seed["rss_mb"], higher_is_better=False,
                   target=f"<= model {model_only['rss_mb']:.0f} + {MEMORY_FACTOR} x matrix = {memory_budget:.0f}"
                   if judged else "", met=ours["rss_mb"] <= memory_budget if judged else None,
                   model_only_rss_mb=model_only["rss_mb"]),
        result_row("memory", f"{model} peak RSS, N={n:,}", "MiB", ours["peak_rss_mb"], seed["peak_rss_mb"],
                   higher_is_better=False),
        result_row("memory", f"RSS growth over {searches} searches", "MiB",
                   ours["rss_mb"] - after_first["rss_mb"], None, higher_is_better=False,
                   note="near zero: no per-request copy of the matrix"),
    ]
    detail = {"n": n, "matrix_mb": matrix_mb, "model_only": model_only, "ours": ours, "after_first_search": after_first,
              "seed": seed, "startup_s": startup, "seed_startup_s": seed_startup, "empty_startup_s": empty_startup}
    return rows, detail
