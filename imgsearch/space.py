"""One engine's feature space: its catalogue rows, its in-memory matrices and its index, changed only together.

`FeatureSpace.put` is the one way to store vectors: it writes the rows inside a catalogue transaction
and, once that commits, the matrices and the index. Removals and other processes' changes reach the
space through the catalogue (it is attached as a listener), so no caller keeps an index in step by hand.
"""
from __future__ import annotations

import logging
import threading
from typing import Callable, Sequence

import numpy as np
import sqlalchemy as sa

from .catalogue import Catalogue, ImageRecord, Stamp, Write, count_vectors, read_vectors
from .engines.base import Engine
from .index.base import VectorIndex
from .store import GROWTH, FeatureStore

log = logging.getLogger(__name__)


class FeatureSpace:
    """The vectors of one engine (one `model_id`) for the whole library."""

    def __init__(self, catalogue: Catalogue, engine: Engine, make_index: Callable[[FeatureStore], VectorIndex],
                 model_id: str | None = None):
        self.catalogue = catalogue
        self.engine = engine
        self.model_id = model_id or engine.model_id  # another id keeps vectors of edited copies apart
        self.store = FeatureStore(self.model_id, engine.dim)
        self.index = make_index(self.store)
        self._pending_cache: tuple[tuple, list[str]] | None = None
        self._pending_lock = threading.Lock()
        self.version = 0

    # ----- loading -----------------------------------------------------------------------------

    def open(self) -> "FeatureSpace":
        """Load the stored vectors, build the index, and follow the catalogue from now on."""
        with self.catalogue.reading() as conn:
            self.reload(conn)
        self.catalogue.attach(self)
        return self

    def close(self) -> None:
        self.catalogue.detach(self)

    def reload(self, conn: sa.Connection) -> None:
        """Replace the matrices with what the catalogue holds, filling preallocated buffers in chunks.

        Each chunk is copied into its set's buffer in one step (a library of 100k × 2048-d is 800 MB: a
        loop over rows, or an extra copy, costs seconds of startup). The buffers keep room to grow, so
        the first images added after a start do not copy them all."""
        total = count_vectors(conn, self.model_id)
        originals = min(total, sum(1 for record in self.catalogue.records() if record.is_original))
        groups = {flag: ([], np.empty((int(rows * GROWTH) + 16, self.engine.dim), np.float32), [])
                  for flag, rows in ((True, originals), (False, total))}
        for names, matrix, stamps in read_vectors(conn, self.model_id, self.engine.dim):
            is_original = np.fromiter(map(self._is_original, names), bool, len(names))
            for flag in (True, False):
                rows = np.flatnonzero(is_original == flag)
                group_names, buffer, group_stamps = groups[flag]
                start = len(group_names)
                np.take(matrix, rows, axis=0, out=buffer[start:start + len(rows)], mode="clip")  # "raise" copies twice
                group_names.extend(names[row] for row in rows)
                group_stamps.extend(stamps[row] for row in rows)
        for flag, (names, buffer, stamps) in groups.items():
            self.store.set_for(flag).replace_all(names, buffer, np.asarray(stamps, np.int64))
        self.index.rebuild()
        self._changed()
        log.info("Loaded %d %s vectors from the catalogue", len(self.store), self.model_id)

    # ----- the write path ----------------------------------------------------------------------

    def put(self, write: Write, names: Sequence[str], vectors: np.ndarray, stamps: Sequence[Stamp]) -> None:
        """Store vectors computed from files with these stamps; memory follows when `write` commits."""
        if not len(names):
            return
        vectors = np.asarray(vectors, np.float32).reshape(len(names), self.engine.dim)
        write.put_vectors(self.model_id, names, vectors, stamps)
        write.after_commit(lambda: self._add(list(names), vectors, list(stamps)))

    def drop(self, write: Write, names: Sequence[str]) -> None:
        """Drop the vectors of these images (their files no longer give one); memory follows on commit."""
        if names:
            write.remove_vectors(self.model_id, names)
            write.after_commit(lambda: self.forget(names))

    def _add(self, names: list[str], vectors: np.ndarray, stamps: list[Stamp]) -> None:
        for flag in (True, False):
            rows = [i for i, name in enumerate(names) if self._is_original(name) == flag]
            if rows:
                chosen = [names[i] for i in rows]
                self.store.set_for(not flag).remove(chosen)  # the originals manifest may have changed
                self.store.set_for(flag).add(chosen, vectors[rows], [stamps[i] for i in rows])
        self.index.add(names, vectors, stamps)
        self._changed()

    def _is_original(self, name: str) -> bool:
        record = self.catalogue.get(name)
        return bool(record and record.is_original)

    # ----- catalogue listener ------------------------------------------------------------------

    def forget(self, names: Sequence[str]) -> None:
        self.store.remove(names)
        self.index.remove(names)
        self._changed()

    def refresh(self, conn: sa.Connection, names: Sequence[str], records: dict[str, ImageRecord | None]) -> None:
        """Another process changed these names: take their vectors as the catalogue has them now."""
        found_names, found_vectors, found_stamps = [], [], []
        for chunk_names, matrix, stamps in read_vectors(conn, self.model_id, self.engine.dim, names):
            found_names += chunk_names
            found_vectors.append(matrix)
            found_stamps += stamps
        gone = [name for name in names if name not in set(found_names)]
        if gone:
            self.forget(gone)
        if found_names:
            originals = {name for name in found_names if records.get(name) and records[name].is_original}
            vectors = np.concatenate(found_vectors)
            for flag in (True, False):
                rows = [i for i, name in enumerate(found_names) if (name in originals) == flag]
                if rows:
                    chosen = [found_names[i] for i in rows]
                    self.store.set_for(not flag).remove(chosen)
                    self.store.set_for(flag).add(chosen, vectors[rows], [found_stamps[i] for i in rows])
            self.index.add(found_names, vectors, found_stamps)
            self._changed()

    def regroup(self, records: Sequence[ImageRecord]) -> None:
        """Rows whose original flag changed move to the other set (a local change of the manifest)."""
        for record in records:
            source = self.store.set_for(not record.is_original)
            vector, stamp = source.vector(record.name), source.stamp(record.name)
            if vector is not None:
                source.remove([record.name])
                self.store.set_for(record.is_original).add([record.name], vector[None], [stamp])
        self._changed()

    # ----- reading -----------------------------------------------------------------------------

    def _changed(self) -> None:
        self.version += 1

    def pending(self, with_unreadable: bool = False) -> list[str]:
        """Images whose vector is missing or older than the file and (unless `with_unreadable`) that are not
        known to be unreadable: originals first, then by name. Cached until the catalogue or this space changes."""
        key = (self.catalogue.version, self.version, with_unreadable)
        with self._pending_lock:
            if self._pending_cache is None or self._pending_cache[0] != key:
                stamps = self.store.stamps()
                work = [record for record in self.catalogue.records()
                        if (with_unreadable or record.error is None) and stamps.get(record.name) != record.stamp]
                work.sort(key=lambda record: (not record.is_original, record.name))
                self._pending_cache = (key, [record.name for record in work])
            return self._pending_cache[1]
