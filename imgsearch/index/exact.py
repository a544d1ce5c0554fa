"""Brute force over the feature store's own in-memory matrices: no copy, always consistent."""
from __future__ import annotations

from typing import Sequence

import numpy as np

from ..ranking import top_k
from .base import VectorIndex


class ExactIndex(VectorIndex):
    """One matrix product per batch of queries over pre-normalised rows, then argpartition.

    It reads the store's snapshots directly, so add, remove and rebuild have nothing to do.
    """

    name = "exact"

    def rebuild(self) -> None:
        pass

    def add(self, names: Sequence[str], vectors: np.ndarray, stamps: Sequence[tuple[int, int]]) -> None:
        pass

    def remove(self, names: Sequence[str]) -> None:
        pass

    def search(self, queries, k, exclude=frozenset(), allowed=None):
        # Exact: the filter masks rows before the top-k cut, so no candidates need fetching twice.
        return top_k(self.store.snapshots(), queries, k, self.metric, exclude, allowed)

    def _nearest(self, queries, n):
        return top_k(self.store.snapshots(), queries, n, self.metric)

    def count(self) -> int:
        return len(self.store)
