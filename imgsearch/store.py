"""Feature sets: an N×D float32 matrix, its filenames and file stamps, kept in memory and saved as one file.

A set is saved as a single uncompressed `.npz` written all-or-nothing, so the matrix and the names can
never disagree after a crash. Each file records the engine's `model_id` and dimension; a file made by a
different engine is ignored (and recomputed by the feature job), never mixed in.
"""
from __future__ import annotations

import dataclasses
import logging
import threading
import zipfile
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from .persist import atomic_write_with

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
GROWTH = 1.25


@dataclasses.dataclass(frozen=True)
class Snapshot:
    """An immutable view of a set at one moment; searches use it without holding any lock."""

    matrix: np.ndarray  # (n, dim) float32, a view into the set's buffer
    names: tuple[str, ...]
    sq_norms: np.ndarray  # (n,) squared row norms, for Euclidean ranking

    def __len__(self) -> int:
        return len(self.names)


class FeatureSet:
    """Vectors for one group of images (originals or uploads) under one engine."""

    def __init__(self, path: Path, model_id: str, dim: int):
        self.path = Path(path)
        self.model_id = model_id
        self.dim = dim
        self._buffer = np.zeros((0, dim), np.float32)
        self._stamps = np.zeros((0, 2), np.int64)
        self._sq_norms = np.zeros(0, np.float32)
        self._names: list[str] = []
        self._rows: dict[str, int] = {}
        # Single-row readers hold this briefly: compaction renumbers the rows and must never be seen half-done.
        self._rows_lock = threading.Lock()
        self._snapshot = Snapshot(self._buffer, (), self._sq_norms)
        self.load_problem = ""

    def __len__(self) -> int:
        return len(self._names)

    def __contains__(self, name: str) -> bool:
        return name in self._rows

    @property
    def names(self) -> tuple[str, ...]:
        return self._snapshot.names

    def snapshot(self) -> Snapshot:
        return self._snapshot

    def stamp(self, name: str) -> tuple[int, int] | None:
        with self._rows_lock:
            row = self._rows.get(name)
            return None if row is None else tuple(int(v) for v in self._stamps[row])

    def vector(self, name: str) -> np.ndarray | None:
        with self._rows_lock:
            row = self._rows.get(name)
            return None if row is None else self._buffer[row].copy()

    def load(self) -> bool:
        """Read the saved set; returns False (leaving the set empty) if it is missing or from another engine."""
        if not self.path.exists():
            self.load_problem = "missing"
            return False
        try:
            with np.load(self.path, allow_pickle=False) as saved:
                model_id = str(saved["model_id"])
                matrix = saved["features"]
                names = [str(n) for n in saved["filenames"]]
                stamps = saved["stamps"]
                version = int(saved["version"])
        except (OSError, KeyError, ValueError, zipfile.BadZipFile) as exc:
            self.load_problem = f"unreadable ({exc})"
            log.warning("Ignoring unreadable feature file %s: %s", self.path, exc)
            return False
        if version != FORMAT_VERSION or model_id != self.model_id or matrix.shape[1:] != (self.dim,):
            self.load_problem = f"made by {model_id} ({matrix.shape[1] if matrix.ndim == 2 else '?'}-d)"
            log.warning("Feature file %s was made by %s, not %s: it will be recomputed",
                        self.path, model_id, self.model_id)
            return False
        if not (len(matrix) == len(names) == len(stamps)):
            self.load_problem = "inconsistent"
            return False
        self._replace_all(np.ascontiguousarray(matrix, np.float32), names, stamps.astype(np.int64))
        self.load_problem = ""
        return True

    def save(self) -> None:
        snapshot = self._snapshot
        stamps = self._stamps[: len(snapshot)]

        def write(handle):
            np.savez(
                handle,
                features=snapshot.matrix,
                filenames=np.array(snapshot.names, dtype=str),
                stamps=stamps,
                model_id=np.array(self.model_id),
                version=np.array(FORMAT_VERSION),
            )

        atomic_write_with(self.path, write)
        self.load_problem = ""  # what is on disk now is this set

    def add(self, names: Sequence[str], vectors: np.ndarray, stamps: Sequence[tuple[int, int]]) -> None:
        """Insert or replace rows. Existing snapshots keep seeing the rows they had."""
        vectors = np.asarray(vectors, np.float32).reshape(len(names), self.dim)
        stamps = np.asarray(stamps, np.int64).reshape(len(names), 2)
        fresh = []
        for i, name in enumerate(names):
            row = self._rows.get(name)
            if row is None:
                fresh.append(i)
            else:
                self._buffer[row] = vectors[i]
                self._stamps[row] = stamps[i]
                self._sq_norms[row] = float(vectors[i] @ vectors[i])
        if fresh:
            n, extra = len(self._names), len(fresh)
            self._reserve(n + extra)
            self._buffer[n:n + extra] = vectors[fresh]
            self._stamps[n:n + extra] = stamps[fresh]
            self._sq_norms[n:n + extra] = np.einsum("ij,ij->i", vectors[fresh], vectors[fresh])
            for offset, i in enumerate(fresh):
                self._rows[names[i]] = n + offset
                self._names.append(names[i])
        self._publish()

    def remove(self, names: Iterable[str]) -> list[str]:
        """Drop rows; returns the names that were present. Compacts into new arrays, so snapshots stay valid."""
        drop = sorted(self._rows[name] for name in set(names) if name in self._rows)
        if not drop:
            return []
        keep = np.ones(len(self._names), bool)
        keep[drop] = False
        removed = [self._names[row] for row in drop]
        self._replace_all(self._buffer[: len(self._names)][keep],
                          [name for name, k in zip(self._names, keep) if k],
                          self._stamps[: len(self._names)][keep])
        return removed

    def _replace_all(self, matrix: np.ndarray, names: list[str], stamps: np.ndarray) -> None:
        sq_norms = np.einsum("ij,ij->i", matrix, matrix).astype(np.float32)
        rows = {name: row for row, name in enumerate(names)}
        with self._rows_lock:
            self._buffer, self._stamps, self._sq_norms = matrix, stamps, sq_norms
            self._names = list(names)
            self._rows = rows
            self._publish()

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
        self._snapshot = Snapshot(self._buffer[:n], tuple(self._names), self._sq_norms[:n])


class FeatureStore:
    """The two sets of one engine: originals (precomputed, never deleted) and user uploads.

    Writers hold `lock`; readers take snapshots and need no lock.
    """

    def __init__(self, features_dir: Path, model_id: str, dim: int):
        self.directory = Path(features_dir) / model_id
        self.model_id = model_id
        self.dim = dim
        self.originals = FeatureSet(self.directory / "originals.npz", model_id, dim)
        self.uploads = FeatureSet(self.directory / "uploads.npz", model_id, dim)
        self.lock = threading.RLock()

    def load(self) -> None:
        with self.lock:
            self.originals.load()
            self.uploads.load()

    def set_for(self, is_original: bool) -> FeatureSet:
        return self.originals if is_original else self.uploads

    def __contains__(self, name: str) -> bool:
        return name in self.originals or name in self.uploads

    def __len__(self) -> int:
        return len(self.originals) + len(self.uploads)

    def stamp(self, name: str) -> tuple[int, int] | None:
        return self.originals.stamp(name) or self.uploads.stamp(name)

    def vector(self, name: str) -> np.ndarray | None:
        vector = self.originals.vector(name)
        return vector if vector is not None else self.uploads.vector(name)

    def snapshots(self) -> tuple[Snapshot, Snapshot]:
        return self.originals.snapshot(), self.uploads.snapshot()
