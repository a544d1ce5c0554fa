"""Search latency over N synthetic 2048-d vectors: the app's ranking path against the seed's.

Ours: `ranking.top_k` over store snapshots (what ExactIndex calls): the 50 originals plus N user rows,
pre-normalised, one matrix product, argpartition, top 6. Baseline: sklearn `cosine_similarity` of the
raw query against the raw matrix, then a full argsort. Both answer the same queries; the check that
they return the same top 6 runs on every query.
"""
from __future__ import annotations

import gc

import numpy as np

from imgsearch.ranking import top_k
from imgsearch.store import Snapshot

from . import seed_baseline
from .common import (available_memory_bytes, latency_summary, normalise_rows_in_place, repeat_timed, result_row,
                     synthetic_vectors)

DIM = 2048
K = 6
ORIGINALS = 50
BATCH = 16
# The baseline copies the matrix; keep a wide margin so a shared machine never reaches the OOM killer.
BASELINE_MEMORY_FACTOR = 1.5
TARGET_P50_MS = {100_000: 60.0, 1_000_000: 600.0}


def _snapshot(matrix: np.ndarray, prefix: str) -> Snapshot:
    names = tuple(f"{prefix}_{i:07d}.jpg" for i in range(len(matrix)))
    return Snapshot(matrix, names, np.einsum("ij,ij->i", matrix, matrix))


def measure_size(n: int, queries: int, baseline_queries: int, seed: int = 0) -> tuple[list[dict], dict]:
    originals = normalise_rows_in_place(synthetic_vectors(ORIGINALS, DIM, seed + 1))
    raw_queries = synthetic_vectors(max(queries, BATCH), DIM, seed + 2)
    matrix = synthetic_vectors(n, DIM, seed)
    raw_all = np.concatenate([originals, matrix]) if n <= 100_000 else None

    # The seed searches the raw matrix, and its cosine_similarity makes a normalised copy of it each time.
    baseline_rows: list[np.ndarray] = []
    baseline_ms = None
    if available_memory_bytes() > BASELINE_MEMORY_FACTOR * matrix.nbytes:
        searched = raw_all if raw_all is not None else matrix

        def seed_search(i: int) -> None:
            baseline_rows.append(seed_baseline.search(raw_queries[i:i + 1], searched, K)[0])

        seconds = [repeat_timed(lambda i=i: seed_search(i), 1)[0] for i in range(baseline_queries)]
        baseline_ms = latency_summary(seconds)
    del raw_all
    gc.collect()

    snapshots = (_snapshot(originals, "original"), _snapshot(normalise_rows_in_place(matrix), "user"))
    query_vectors = normalise_rows_in_place(raw_queries.copy())
    top_k(snapshots, query_vectors[:1], K, "cosine")
    answers = []
    seconds = []
    for i in range(queries):
        seconds.append(repeat_timed(lambda i=i: answers.append(top_k(snapshots, query_vectors[i], K, "cosine")[0]),
                                    1)[0])
    ours_ms = latency_summary(seconds)
    batch_seconds = repeat_timed(lambda: top_k(snapshots, query_vectors[:BATCH], K, "cosine"), max(3, queries // 10))
    per_query_batched_ms = float(np.median(batch_seconds)) * 1000.0 / BATCH

    all_names = snapshots[0].names + snapshots[1].names
    same = None
    if baseline_rows and n <= 100_000:
        same = all([[name for name, _ in answers[i]] == [all_names[j] for j in baseline_rows[i]]
                    for i in range(len(baseline_rows))])
    target = TARGET_P50_MS.get(n)
    rows = [
        result_row("search", f"top-6 p50, N={n:,}", "ms", ours_ms["p50_ms"],
                   baseline_ms["p50_ms"] if baseline_ms else None, higher_is_better=False,
                   target=f"p50 <= {target:.0f} ms" if target else "",
                   met=(ours_ms["p50_ms"] <= target) if target else None,
                   ours_p99_ms=ours_ms["p99_ms"], baseline_p99_ms=baseline_ms["p99_ms"] if baseline_ms else None,
                   same_top6_as_baseline=same, queries=queries,
                   baseline_note=None if baseline_ms else "skipped: not enough free memory for sklearn's copy"),
        result_row("search", f"top-6 p99, N={n:,}", "ms", ours_ms["p99_ms"],
                   baseline_ms["p99_ms"] if baseline_ms else None, higher_is_better=False),
        result_row("search", f"per query in a batch of {BATCH}, N={n:,}", "ms", per_query_batched_ms,
                   baseline_ms["p50_ms"] if baseline_ms else None, higher_is_better=False,
                   note="baseline: the seed answers queries one at a time"),
    ]
    detail = {"n": n, "ours": ours_ms, "baseline": baseline_ms, "batch_per_query_ms": per_query_batched_ms,
              "matrix_gb": matrix.nbytes / 1e9, "same_top6_as_baseline": same}
    return rows, detail


def run(sizes: list[int], queries: int, baseline_queries: int) -> tuple[list[dict], dict]:
    rows, details = [], {}
    for n in sizes:
        size_rows, detail = measure_size(n, queries if n < 1_000_000 else max(5, queries // 3),
                                         baseline_queries if n < 1_000_000 else 3)
        rows += size_rows
        details[str(n)] = detail
        gc.collect()
    return rows, details
