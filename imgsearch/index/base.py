"""What every vector index offers: add, remove, search top-k, count, and rebuild from the feature store."""
from __future__ import annotations

import abc
from typing import Sequence

import numpy as np

from ..ranking import top_k
from ..store import FeatureStore

# A filter admitting at most this many images, or this share of the library, is ranked exactly among them.
EXACT_FILTER_SIZE = 20_000
EXACT_FILTER_SHARE = 0.1


class VectorIndex(abc.ABC):
    """An index over the vectors of one feature store.

    The feature store (the in-memory mirror of the catalogue) is what an index can always be rebuilt from.
    Only `space.FeatureSpace` calls add, remove and rebuild, under the catalogue's write lock, so an index
    never sees two writers at once; it is given the file stamps each vector was computed from.
    """

    name = ""
    exact_filter_size = EXACT_FILTER_SIZE
    exact_filter_share = EXACT_FILTER_SHARE

    def __init__(self, store: FeatureStore, metric: str):
        self.store = store
        self.metric = metric

    @abc.abstractmethod
    def rebuild(self) -> None: ...

    @abc.abstractmethod
    def add(self, names: Sequence[str], vectors: np.ndarray, stamps: Sequence[tuple[int, int]]) -> None: ...

    @abc.abstractmethod
    def remove(self, names: Sequence[str]) -> None: ...

    def search(self, queries: np.ndarray, k: int, exclude: frozenset[str] = frozenset(),
               allowed: frozenset[str] | None = None) -> list[list[tuple[str, float]]]:
        """(m, dim) queries -> per query, up to k (filename, similarity 0..1) pairs, best first.

        Names in `exclude` are never returned, nor, when `allowed` is given, names outside it. The filter
        applies before the top-k cut. A filter that admits few images is searched exactly among them (their
        vectors are in memory); otherwise the index is asked for more candidates, four times as many each
        round, and what it cannot find (an approximate index skips some) is completed exactly.
        """
        queries = np.ascontiguousarray(np.atleast_2d(queries), np.float32)
        total = len(self.store)
        if allowed is not None and len(allowed) <= max(self.exact_filter_size, self.exact_filter_share * total):
            return top_k(self.store.snapshots(), queries, k, self.metric, exclude, allowed)

        def admitted(hits):
            return [(name, score) for name, score in hits
                    if name not in exclude and (allowed is None or name in allowed)][:k]

        fetch = min(k + len(exclude), total)
        while True:
            results = [admitted(hits) for hits in self._nearest(queries, fetch)]
            if allowed is None or all(len(hits) == k for hits in results):
                return results
            if fetch >= total:
                return top_k(self.store.snapshots(), queries, k, self.metric, exclude, allowed)
            fetch = min(4 * fetch, total)

    @abc.abstractmethod
    def _nearest(self, queries: np.ndarray, n: int) -> list[list[tuple[str, float]]]:
        """Per query, the index's n best (filename, similarity 0..1) candidates, best first."""

    @abc.abstractmethod
    def count(self) -> int: ...

    def describe(self) -> dict:
        count = self.count()
        return {"backend": self.name, "count": count, "consistent": count == len(self.store)}
