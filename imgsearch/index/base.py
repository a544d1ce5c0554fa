"""What every vector index offers: add, remove, search top-k, count, and rebuild from the feature store."""
from __future__ import annotations

import abc
from typing import Sequence

import numpy as np

from ..store import FeatureStore


class VectorIndex(abc.ABC):
    """An index over the vectors of one feature store.

    The feature store (the in-memory mirror of the catalogue) is what an index can always be rebuilt from.
    Only `space.FeatureSpace` calls add, remove and rebuild, under the catalogue's write lock, so an index
    never sees two writers at once; it is given the file stamps each vector was computed from.
    """

    name = ""

    def __init__(self, store: FeatureStore, metric: str):
        self.store = store
        self.metric = metric

    @abc.abstractmethod
    def rebuild(self) -> None: ...

    @abc.abstractmethod
    def add(self, names: Sequence[str], vectors: np.ndarray, stamps: Sequence[tuple[int, int]]) -> None: ...

    @abc.abstractmethod
    def remove(self, names: Sequence[str]) -> None: ...

    @abc.abstractmethod
    def search(self, queries: np.ndarray, k: int,
               exclude: frozenset[str] = frozenset()) -> list[list[tuple[str, float]]]:
        """(m, dim) queries -> per query, up to k (filename, similarity 0..1) pairs, best first."""

    @abc.abstractmethod
    def count(self) -> int: ...

    def describe(self) -> dict:
        count = self.count()
        return {"backend": self.name, "count": count, "consistent": count == len(self.store)}
