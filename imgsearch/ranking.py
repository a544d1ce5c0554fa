"""Turn stored vectors and query vectors into ranked (filename, similarity) lists.

Similarity shown to users is always 0..1, 1 meaning identical:
- cosine: the cosine itself, clipped at 0;
- euclidean: 1 / (1 + distance);
- chi2: 1 - distance / 5: each of the colour descriptor's five region histograms sums to 1,
  which bounds its chi-squared distance by 1.
"""
from __future__ import annotations

import numpy as np

from .engines.color import chi2_distances, chi2_similarity
from .store import Snapshot


def similarities(snapshot: Snapshot, queries: np.ndarray, metric: str) -> np.ndarray:
    """(m, dim) queries against a snapshot -> (m, n) similarities in 0..1."""
    matrix = snapshot.matrix
    if len(snapshot) == 0:
        return np.zeros((len(queries), 0), np.float32)
    if metric == "cosine":
        scores = queries @ matrix.T
        return np.clip(scores, 0.0, 1.0, out=scores)
    if metric == "euclidean":
        query_sq = np.einsum("ij,ij->i", queries, queries)[:, None]
        distances = np.sqrt(np.maximum(snapshot.sq_norms[None, :] + query_sq - 2.0 * (queries @ matrix.T), 0.0))
        return 1.0 / (1.0 + distances)
    if metric == "chi2":
        return np.stack([chi2_similarity(chi2_distances(query, matrix)) for query in queries])
    raise ValueError(f"Unknown metric {metric!r}")


def top_k(snapshots: tuple[Snapshot, ...], queries: np.ndarray, k: int, metric: str,
          exclude: frozenset[str] = frozenset(),
          allowed: frozenset[str] | None = None) -> list[list[tuple[str, float]]]:
    """The k best (filename, similarity) pairs per query over all snapshots, best first.

    All queries go through one matrix product per snapshot. Each snapshot gives only its own best
    candidates, so a large library costs no (queries × rows) concatenation and no list of every name.
    Ties are broken by snapshot order, then row order. With `allowed`, only those names can be returned:
    the others are masked before the top-k cut.
    """
    queries = np.atleast_2d(np.asarray(queries, np.float32))
    total = sum(len(snapshot) for snapshot in snapshots)
    if total == 0:
        return [[] for _ in queries]
    wanted = min(k + len(exclude), total)
    candidates = []  # (snapshot number, snapshot names, (m, w) row indices, (m, w) similarities)
    for number, snapshot in enumerate(snapshots):
        n = len(snapshot)
        if n == 0:
            continue
        scores = similarities(snapshot, queries, metric)
        if len(snapshot.dead):
            scores[:, snapshot.dead] = -np.inf  # deleted images
        if allowed is not None:
            scores[:, [row for row, name in enumerate(snapshot.names) if name not in allowed]] = -np.inf
        if wanted < n:
            rows = np.argpartition(scores, n - wanted, axis=1)[:, n - wanted:]
        else:
            rows = np.broadcast_to(np.arange(n), scores.shape)
        candidates.append((number, snapshot.names, rows, np.take_along_axis(scores, rows, axis=1)))
    results = []
    for q in range(len(queries)):
        pool = [(-float(score), number, int(row), names[row])
                for number, names, rows, scores in candidates
                for row, score in zip(rows[q], scores[q])]
        pool.sort()
        hits = [(name, -negative) for negative, _, _, name in pool
                if name is not None and name not in exclude and negative != np.inf]
        results.append(hits[:k])
    return results
