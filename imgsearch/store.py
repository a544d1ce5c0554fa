"""Feature sets in memory: an N×D float32 matrix with its filenames and file stamps, the search cache.

The catalogue database holds the vectors; these matrices mirror one engine's rows so that a search is
one matrix product. Only `space.FeatureSpace` changes them, after the catalogue has committed.

A change costs O(changed rows): new rows are appended, and a deleted row is left in place as a tombstone
(its name becomes None and its number goes on the snapshot's `dead` list). Once a quarter of the rows
are dead the live ones are copied into new arrays, so that cost is spread over many deletes. Readers take
immutable snapshots and never lock: a snapshot's matrix is a view of the buffer, and the buffer only
changes beyond that snapshot's end, or in place for a vector replaced under the same name.
"""
from __future__ import annotations

import dataclasses
import threading
from typing import Iterable, Sequence

import numpy as np

GROWTH = 1.25
COMPACT_DEAD_SHARE = 0.25  # compact once this share of the rows is dead ...
COMPACT_MIN_DEAD = 4096    # ... and at least this many, so small libraries never bother


@dataclasses.dataclass(frozen=True)
class Snapshot:
    """An immutable view of a set at one moment; searches use it without holding any lock.

    Rows listed in `dead` are deleted images: their names are None and ranking must skip them.
    """

    matrix: np.ndarray  # (n, dim) float32, a view into the set's buffer
    names: tuple[str | None, ...]
    sq_norms: np.ndarray  # (n,) squared row norms, for Euclidean ranking
    dead: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0, np.int64))
    stamps: np.ndarray | None = None  # (n, 2) the file stamp each vector was computed from

    def __len__(self) -> int:
        return len(self.names)

    def live_rows(self) -> np.ndarray:
        """Row numbers of the images present, in order."""
        if not len(self.dead):
            return np.arange(len(self.names))
        keep = np.ones(len(self.names), bool)
        keep[self.dead] = False
        return np.flatnonzero(keep)

    def chunks(self, size: int, wanted: set[str] | None = None):
        """(names, (m, dim) vectors, (m, 2) stamps) of the live rows, `size` rows at a time."""
        rows = self.live_rows()
        if wanted is not None:
            rows = np.array([row for row in rows if self.names[row] in wanted], np.int64)
        for start in range(0, len(rows), size):
            chosen = rows[start:start + size]
            yield ([self.names[row] for row in chosen], np.ascontiguousarray(self.matrix[chosen], np.float32),
                   self.stamps[chosen])


class FeatureSet:
    """Vectors for one group of images (originals or uploads) under one engine."""

    def __init__(self, dim: int):
        self.dim = dim
        self._buffer = np.zeros((0, dim), np.float32)
        self._stamps = np.zeros((0, 2), np.int64)
        self._sq_norms = np.zeros(0, np.float32)
        self._names: list[str | None] = []
        self._rows: dict[str, int] = {}
        self._dead: list[int] = []  # rows of deleted images, until the next compaction
        # Single-row readers hold this briefly: compaction renumbers the rows and must never be seen half-done.
        self._rows_lock = threading.Lock()
        self._snapshot = Snapshot(self._buffer, (), self._sq_norms, stamps=self._stamps)

    def __len__(self) -> int:
        return len(self._rows)

    def __contains__(self, name: str) -> bool:
        return name in self._rows

    @property
    def names(self) -> list[str]:
        return [name for name in self._snapshot.names if name is not None]

    def snapshot(self) -> Snapshot:
        return self._snapshot

    def stamp(self, name: str) -> tuple[int, int] | None:
        with self._rows_lock:
            row = self._rows.get(name)
            return None if row is None else (int(self._stamps[row, 0]), int(self._stamps[row, 1]))

    def vector(self, name: str) -> np.ndarray | None:
        with self._rows_lock:
            row = self._rows.get(name)
            return None if row is None else self._buffer[row].copy()

    def add(self, names: Sequence[str], vectors: np.ndarray, stamps: Sequence[tuple[int, int]]) -> None:
        """Insert or replace rows. Existing snapshots keep seeing the rows they had."""
        vectors = np.asarray(vectors, np.float32).reshape(len(names), self.dim)
        stamps = np.asarray(stamps, np.int64).reshape(len(names), 2)
        with self._rows_lock:
            self._reserve(len(self._names) + sum(1 for name in names if name not in self._rows))
            for i, name in enumerate(names):
                row = self._rows.get(name)
                if row is None:
                    row = self._rows[name] = len(self._names)
                    self._names.append(name)
                self._buffer[row] = vectors[i]
                self._stamps[row] = stamps[i]
                self._sq_norms[row] = float(vectors[i] @ vectors[i])
            self._publish()

    def remove(self, names: Iterable[str]) -> list[str]:
        """Drop rows; returns the names that were present."""
        with self._rows_lock:
            removed = []
            for name in dict.fromkeys(names):
                row = self._rows.pop(name, None)
                if row is not None:
                    self._names[row] = None
                    self._dead.append(row)
                    removed.append(name)
            if removed:
                if len(self._dead) >= max(COMPACT_MIN_DEAD, COMPACT_DEAD_SHARE * len(self._names)):
                    self._compact()
                self._publish()
            return removed

    def replace_all(self, names: Sequence[str], matrix: np.ndarray, stamps: np.ndarray) -> None:
        """Make the set hold exactly these rows (used when loading from the catalogue).

        `matrix` may have more rows than `names`: the rest is room for the rows added next, which then
        copy nothing (growing a 100k × 2048-d set copies 800 MB)."""
        n = len(names)
        matrix = np.ascontiguousarray(matrix, np.float32).reshape(-1, self.dim)
        with self._rows_lock:
            self._buffer = matrix
            self._stamps = np.zeros((len(matrix), 2), np.int64)
            self._stamps[:n] = np.asarray(stamps, np.int64).reshape(n, 2)
            self._sq_norms = np.zeros(len(matrix), np.float32)
            self._sq_norms[:n] = np.einsum("ij,ij->i", matrix[:n], matrix[:n])
            self._names = list(names)
            self._rows = {name: row for row, name in enumerate(names)}
            self._dead = []
            self._publish()

    def _compact(self) -> None:
        """Copy the live rows into new arrays (old snapshots keep the old ones)."""
        live = [row for row, name in enumerate(self._names) if name is not None]
        self._buffer, self._stamps = self._buffer[live], self._stamps[live]
        self._sq_norms = self._sq_norms[live]
        self._names = [self._names[row] for row in live]
        self._rows = {name: row for row, name in enumerate(self._names)}
        self._dead = []

    def _reserve(self, rows: int) -> None:
        if rows <= len(self._buffer):
            return
        capacity = max(rows, int(len(self._buffer) * GROWTH) + 16)
        buffer = np.zeros((capacity, self.dim), np.float32)
        stamps = np.zeros((capacity, 2), np.int64)
        sq_norms = np.zeros(capacity, np.float32)
        n = len(self._names)
        buffer[:n], stamps[:n], sq_norms[:n] = self._buffer[:n], self._stamps[:n], self._sq_norms[:n]
        self._buffer, self._stamps, self._sq_norms = buffer, stamps, sq_norms

    def _publish(self) -> None:
        n = len(self._names)
        self._snapshot = Snapshot(self._buffer[:n], tuple(self._names), self._sq_norms[:n],
                                  np.array(self._dead, np.int64), self._stamps[:n])


class FeatureStore:
    """The two sets of one engine: originals (shipped with the app, never deleted) and user images.

    Readers take snapshots and need no lock; the catalogue's write lock serialises every change.
    """

    def __init__(self, model_id: str, dim: int):
        self.model_id = model_id
        self.dim = dim
        self.originals = FeatureSet(dim)
        self.uploads = FeatureSet(dim)

    def set_for(self, is_original: bool) -> FeatureSet:
        return self.originals if is_original else self.uploads

    def __contains__(self, name: str) -> bool:
        return name in self.originals or name in self.uploads

    def __len__(self) -> int:
        return len(self.originals) + len(self.uploads)

    def stamp(self, name: str) -> tuple[int, int] | None:
        return self.originals.stamp(name) or self.uploads.stamp(name)

    def stamps(self) -> dict[str, tuple[int, int]]:
        """Every stored image's stamp by name, read from the snapshots at once (not one lock per name)."""
        found = {}
        for snapshot in (self.uploads.snapshot(), self.originals.snapshot()):
            found.update(zip(snapshot.names, map(tuple, snapshot.stamps.tolist())))
        found.pop(None, None)  # deleted rows
        return found

    def vector(self, name: str) -> np.ndarray | None:
        vector = self.originals.vector(name)
        return vector if vector is not None else self.uploads.vector(name)

    def remove(self, names: Sequence[str]) -> None:
        self.originals.remove(names)
        self.uploads.remove(names)

    def snapshots(self) -> tuple[Snapshot, Snapshot]:
        return self.originals.snapshot(), self.uploads.snapshot()
