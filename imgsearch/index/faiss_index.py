"""Approximate search with a Faiss inverted-file index (IVF-Flat, inner product) kept on disk between runs.

Why IVF-Flat and not HNSW: the library changes one upload at a time and deletes must take effect at once.
`IndexIVFFlat` supports `add_with_ids` and `remove_ids` natively, so a filename maps to a stable int64 id and
a delete removes its row immediately. HNSW cannot remove rows; it would need tombstones filtered at query
time plus periodic rebuilds, and building HNSW over a million 2048-d vectors takes far longer on a small
machine than training IVF centroids on a sample. IVF stores full float32 vectors, so the scores it returns
are exact cosines; only the choice of which lists to scan (`nprobe`) is approximate.

The coarse centroids are trained once, in `rebuild()`, on a sample of the store; later adds only assign
vectors to their nearest centroid. When the library has grown or shrunk so much that the number of lists
no longer suits it, the next `rebuild()` retrains.

On disk (under the engine's feature folder, `faiss/`): `ivf-<token>.faiss` (the index), `rows-<token>.npz`
(ids, filenames and the file stamps they were computed from) and `manifest.json`, which names the current
pair. The manifest is replaced atomically after both files are written, so a crash leaves either
the old pair or the new pair. The saved index is a checkpoint, written by `rebuild()`; the catalogue is the
source of truth, and `rebuild()` at start-up reconciles the checkpoint with the vectors loaded from it
(drops rows whose file vanished or changed, adds what is missing) instead of rebuilding from scratch.
"""
from __future__ import annotations

import json
import logging
import math
import threading
import uuid
import zipfile
from pathlib import Path
from typing import Sequence

import faiss
import numpy as np

from ..persist import atomic_file, atomic_write_bytes
from ..store import FeatureStore
from .base import VectorIndex

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
SMALL_LIBRARY = 2048      # below this, one list: a plain exhaustive scan is fast enough and needs no training
TRAIN_PER_LIST = 64       # training sample size per centroid (faiss warns below 39)
NPROBE = 32               # lists scanned per query; see BENCHMARKS.md for the recall/latency trade-off
CHUNK_ROWS = 32768        # rows copied from the store per add call, to bound temporary memory
KMEANS_ITERATIONS = 10


def lists_for(count: int) -> int:
    """About sqrt(n) lists, so a list holds about sqrt(n) vectors."""
    return 1 if count < SMALL_LIBRARY else int(math.sqrt(count))


class FaissIndex(VectorIndex):
    name = "faiss"

    def __init__(self, store: FeatureStore, metric: str, directory: Path, nprobe: int = NPROBE):
        if metric != "cosine":
            raise ValueError(f"The faiss index needs a cosine engine; this engine ranks by {metric}. "
                             "Use IMAGE_SEARCH_INDEX=exact.")
        super().__init__(store, metric)
        self.directory = Path(directory) / "faiss"
        self.nprobe = nprobe
        self._lock = threading.Lock()
        self._index: faiss.IndexIVFFlat | None = None
        self._ids: dict[str, int] = {}
        self._names: dict[int, str] = {}
        self._stamps: dict[str, tuple[int, int] | None] = {}  # file stamp each row was computed from
        self._next_id = 0
        self._consistency_key: tuple | None = None
        self._consistent = False

    # ----- building ----------------------------------------------------------------------------

    def rebuild(self) -> None:
        """Make the index hold exactly the store's vectors, reusing the saved checkpoint when it fits."""
        with self._lock:
            if self._index is None:
                self._load_checkpoint()
            count = len(self.store)
            if self._index is None or self._needs_training(count):
                self._train_and_fill()
                changed = True
            else:
                changed = self._reconcile()
            if changed:
                self._save_checkpoint()

    def _needs_training(self, count: int) -> bool:
        wanted, current = lists_for(count), self._index.nlist
        return wanted >= 2 * current or current >= 2 * max(wanted, 1)

    def _train_and_fill(self) -> None:
        count = len(self.store)
        nlist = lists_for(count)
        log.info("Building the faiss IVF index: %d vectors in %d lists", count, nlist)
        quantizer = faiss.IndexFlatIP(self.store.dim)
        index = faiss.IndexIVFFlat(quantizer, self.store.dim, nlist, faiss.METRIC_INNER_PRODUCT)
        if nlist == 1:
            # One list needs no training: every vector belongs to it whatever the centroid is.
            quantizer.add(np.zeros((1, self.store.dim), np.float32))
            index.is_trained = True
        else:
            sample = self._training_sample(min(count, nlist * TRAIN_PER_LIST))
            clustering = faiss.Clustering(self.store.dim, nlist)
            clustering.niter = KMEANS_ITERATIONS
            clustering.spherical = True
            clustering.train(sample, quantizer)
            index.is_trained = True
        self._index, self._ids, self._names, self._stamps, self._next_id = index, {}, {}, {}, 0
        for snapshot in self.store.snapshots():
            for names, vectors, stamps in snapshot.chunks(CHUNK_ROWS):
                self._insert(names, vectors, stamps)

    def _training_sample(self, size: int) -> np.ndarray:
        """An evenly spread sample of store rows (the originals come first, so don't take a prefix)."""
        snapshots = self.store.snapshots()
        live = [snapshot.live_rows() for snapshot in snapshots]
        rows = np.linspace(0, sum(map(len, live)) - 1, size).astype(np.int64)
        parts, offset = [], 0
        for snapshot, snapshot_rows in zip(snapshots, live):
            mine = rows[(rows >= offset) & (rows < offset + len(snapshot_rows))] - offset
            parts.append(np.asarray(snapshot.matrix[snapshot_rows[mine]], np.float32))
            offset += len(snapshot_rows)
        return np.ascontiguousarray(np.concatenate(parts))

    def _reconcile(self) -> bool:
        """Apply the difference between the loaded checkpoint and the store; True if anything changed."""
        stale = [name for name, stamp in self._stamps.items() if self.store.stamp(name) != stamp]
        self._delete(stale)
        missing = {name for snapshot in self.store.snapshots() for name in snapshot.names
                   if name is not None and name not in self._ids}
        for snapshot in self.store.snapshots():
            for names, vectors, stamps in snapshot.chunks(CHUNK_ROWS, missing):
                self._insert(names, vectors, stamps)
        if stale or missing:
            log.info("Faiss index reconciled with the feature store: %d dropped, %d added", len(stale), len(missing))
        return bool(stale or missing)

    # ----- changes -----------------------------------------------------------------------------

    def add(self, names: Sequence[str], vectors: np.ndarray, stamps: Sequence[tuple[int, int]]) -> None:
        with self._lock:
            if self._index is None:
                return  # not built yet: rebuild() will read these rows from the store
            self._delete([name for name in names if name in self._ids])
            self._insert(list(names), np.ascontiguousarray(vectors, np.float32).reshape(len(names), -1), stamps)

    def remove(self, names: Sequence[str]) -> None:
        with self._lock:
            if self._index is not None:
                self._delete([name for name in set(names) if name in self._ids])

    def _insert(self, names: list[str], vectors: np.ndarray, stamps) -> None:
        ids = np.arange(self._next_id, self._next_id + len(names), dtype=np.int64)
        self._index.add_with_ids(vectors, ids)
        for name, row_id, stamp in zip(names, ids.tolist(), stamps):
            self._ids[name] = row_id
            self._names[row_id] = name
            self._stamps[name] = (int(stamp[0]), int(stamp[1]))
        self._next_id += len(names)
        self._consistency_key = None

    def _delete(self, names: Sequence[str]) -> None:
        if not names:
            return
        ids = np.array([self._ids.pop(name) for name in names], np.int64)
        self._index.remove_ids(ids)
        for name, row_id in zip(names, ids.tolist()):
            del self._names[row_id]
            del self._stamps[name]
        self._consistency_key = None

    # ----- reading -----------------------------------------------------------------------------

    def _nearest(self, queries, n):
        with self._lock:
            if self._index is None or self._index.ntotal == 0 or n <= 0:
                return [[] for _ in queries]
            params = faiss.SearchParametersIVF(nprobe=min(self.nprobe, self._index.nlist))
            scores, ids = self._index.search(queries, min(n, self._index.ntotal), params=params)
            names = [[self._names.get(i) for i in row] for row in ids.tolist()]
        return [[(name, min(max(score, 0.0), 1.0)) for name, score in zip(row_names, row_scores) if name is not None]
                for row_names, row_scores in zip(names, scores.tolist())]

    def count(self) -> int:
        with self._lock:
            return 0 if self._index is None else int(self._index.ntotal)

    def describe(self) -> dict:
        with self._lock:
            count = 0 if self._index is None else int(self._index.ntotal)
            originals, uploads = self.store.snapshots()
            known = self._consistency_key
            if known is None or known[0] is not originals or known[1] is not uploads or known[2] != count:
                # Comparing names costs O(n): done once per change of either side, not on every status call.
                self._consistent = count == len(self.store) and all(
                    name in self._ids for snapshot in (originals, uploads) for name in snapshot.names if name is not None)
                self._consistency_key = (originals, uploads, count)
            return {"backend": self.name, "count": count, "consistent": self._consistent,
                    "lists": 0 if self._index is None else int(self._index.nlist),
                    "nprobe": self.nprobe}

    # ----- checkpoint --------------------------------------------------------------------------

    @property
    def _manifest(self) -> Path:
        return self.directory / "manifest.json"

    def _save_checkpoint(self) -> None:
        # A fresh name per checkpoint: a second writer can never overwrite one half of a pair.
        token = uuid.uuid4().hex[:16]
        index_file, rows_file = f"ivf-{token}.faiss", f"rows-{token}.npz"
        with atomic_file(self.directory / index_file) as handle:
            faiss.write_index(self._index, faiss.PyCallbackIOWriter(handle.write))
        names = list(self._ids)
        with atomic_file(self.directory / rows_file) as handle:
            np.savez(handle, ids=np.array([self._ids[n] for n in names], np.int64),
                     filenames=np.array(names, dtype=str),
                     stamps=np.array([self._stamps[n] or (-1, -1) for n in names], np.int64).reshape(len(names), 2),
                     next_id=np.array(self._next_id))
        manifest = {"version": FORMAT_VERSION, "model_id": self.store.model_id, "dim": self.store.dim,
                    "index": index_file, "rows": rows_file}
        atomic_write_bytes(self._manifest, json.dumps(manifest).encode())
        for path in self.directory.iterdir():
            if path.name not in (index_file, rows_file, self._manifest.name) and not path.name.startswith("."):
                path.unlink()

    def _read_manifest(self) -> dict:
        try:
            return json.loads(self._manifest.read_text())
        except (OSError, ValueError):
            return {}

    def _load_checkpoint(self) -> None:
        manifest = self._read_manifest()
        if not manifest:
            return
        if (manifest.get("version"), manifest.get("model_id"), manifest.get("dim")) != (
                FORMAT_VERSION, self.store.model_id, self.store.dim):
            log.warning("Ignoring faiss index made for %s: it will be rebuilt", manifest.get("model_id"))
            return
        try:
            index = faiss.read_index(str(self.directory / manifest["index"]))
            with np.load(self.directory / manifest["rows"], allow_pickle=False) as rows:
                ids, names = rows["ids"].tolist(), [str(n) for n in rows["filenames"]]
                stamps, next_id = rows["stamps"].tolist(), int(rows["next_id"])
        except (OSError, KeyError, ValueError, RuntimeError, zipfile.BadZipFile) as exc:
            log.warning("Ignoring unreadable faiss index in %s (%s): it will be rebuilt", self.directory, exc)
            return
        if index.ntotal != len(ids) or index.d != self.store.dim or not isinstance(index, faiss.IndexIVFFlat):
            log.warning("Ignoring inconsistent faiss index in %s: it will be rebuilt", self.directory)
            return
        self._index, self._next_id = index, next_id
        self._ids = dict(zip(names, ids))
        self._names = dict(zip(ids, names))
        self._stamps = {name: tuple(stamp) for name, stamp in zip(names, stamps)}
