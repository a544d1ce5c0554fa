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
        return np.clip(queries @ matrix.T, 0.0, 1.0)
    if metric == "euclidean":
        query_sq = np.einsum("ij,ij->i", queries, queries)[:, None]
        distances = np.sqrt(np.maximum(snapshot.sq_norms[None, :] + query_sq - 2.0 * (queries @ matrix.T), 0.0))
        return 1.0 / (1.0 + distances)
    if metric == "chi2":
        return np.stack([chi2_similarity(chi2_distances(query, matrix)) for query in queries])
    raise ValueError(f"Unknown metric {metric!r}")


def top_k(snapshots: tuple[Snapshot, ...], queries: np.ndarray, k: int, metric: str,
          exclude: frozenset[str] = frozenset()) -> list[list[tuple[str, float]]]:
    """The k best (filename, similarity) pairs per query over all snapshots, best first."""
    queries = np.atleast_2d(np.asarray(queries, np.float32))
    names = [name for snapshot in snapshots for name in snapshot.names]
    if not names:
        return [[] for _ in queries]
    scores = np.concatenate([similarities(s, queries, metric) for s in snapshots], axis=1)
    wanted = min(k + len(exclude), len(names))
    results = []
    for row in scores:
        if wanted < len(row):
            candidates = np.argpartition(-row, wanted - 1)[:wanted]
        else:
            candidates = np.arange(len(row))
        ranked = candidates[np.argsort(-row[candidates], kind="stable")]
        hits = [(names[i], float(row[i])) for i in ranked if names[i] not in exclude]
        results.append(hits[:k])
    return results
