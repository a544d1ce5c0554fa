"""Search in a Milvus collection: Milvus Lite for a local `.db` file, a Milvus server or cluster for a URL.

One collection per engine `model_id`, keyed by filename, with the image file's stamp (size, mtime) beside
the vector so `rebuild()` can tell which stored rows are stale without reading vectors back. Writes are
upserts, so re-uploading a changed file under the same name replaces its row. The collection uses Strong
consistency: an upload is searchable as soon as the request that added it returns.

The connection is opened on first use, so building the index object never touches the network.
"""
from __future__ import annotations

import logging
import re
import threading
from pathlib import Path
from typing import Sequence
from urllib.parse import urlsplit

import numpy as np
from pymilvus import DataType, MilvusClient, MilvusException

from ..store import FeatureStore
from .base import VectorIndex

log = logging.getLogger(__name__)

MAX_FILENAME = 1024
WRITE_BATCH = 512         # rows per upsert: 512 × 2048 floats stays far below gRPC's message limit
READ_BATCH = 16384
MAX_TOP_K = 16384         # Milvus refuses larger limits
HNSW_M = 16
HNSW_EF_CONSTRUCTION = 200
HNSW_EF_SEARCH = 128


def collection_name(model_id: str) -> str:
    """Milvus allows letters, digits and underscores, starting with a letter or underscore."""
    return ("images_" + re.sub(r"[^0-9A-Za-z_]", "_", model_id))[:255]


def describe_uri(uri: str) -> str:
    """The URI without any credentials, for status pages."""
    parts = urlsplit(uri)
    if parts.scheme and parts.hostname:
        port = f":{parts.port}" if parts.port else ""
        return f"{parts.scheme}://{parts.hostname}{port}"
    return uri


class MilvusIndex(VectorIndex):
    name = "milvus"

    def __init__(self, store: FeatureStore, metric: str, uri: str):
        if metric != "cosine":
            raise ValueError(f"The milvus index needs a cosine engine; this engine ranks by {metric}. "
                             "Use IMAGE_SEARCH_INDEX=exact.")
        super().__init__(store, metric)
        self.uri = uri
        self.collection = collection_name(store.model_id)
        self._client: MilvusClient | None = None
        self._connect_lock = threading.Lock()

    @property
    def client(self) -> MilvusClient:
        with self._connect_lock:
            if self._client is None:
                if self.uri.endswith(".db"):
                    Path(self.uri).parent.mkdir(parents=True, exist_ok=True)
                self._client = MilvusClient(self.uri)
            return self._client

    def close(self) -> None:
        with self._connect_lock:
            if self._client is not None:
                self._client.close()
                self._client = None

    # ----- building ----------------------------------------------------------------------------

    def rebuild(self) -> None:
        """Create the collection if needed, then upsert what the store has and it lacks, and drop the rest."""
        self._ensure_collection()
        indexed = self._indexed_stamps()
        stale = [name for name, stamp in indexed.items() if self.store.stamp(name) != stamp]
        if stale:
            self.client.delete(self.collection, ids=stale)
        missing = 0
        for snapshot in self.store.snapshots():
            wanted = {name for name in snapshot.names
                      if name is not None and (name not in indexed or indexed[name] != self.store.stamp(name))}
            for names, vectors, stamps in snapshot.chunks(WRITE_BATCH, wanted):
                self._upsert(names, vectors, stamps)
            missing += len(wanted)
        if stale or missing:
            # Sealing the written segments lets Milvus index them; unsealed rows are scanned one by one.
            self.client.flush(self.collection)
            log.info("Milvus collection %s reconciled with the feature store: %d dropped, %d written",
                     self.collection, len(stale), missing)

    def _ensure_collection(self) -> None:
        client = self.client
        if client.has_collection(self.collection):
            fields = client.describe_collection(self.collection)["fields"]
            dims = [int(f["params"].get("dim", 0)) for f in fields if f["name"] == "vector"]
            names = {f["name"] for f in fields}
            if dims == [self.store.dim] and {"filename", "size", "mtime_ns"} <= names:
                client.load_collection(self.collection)
                return
            log.warning("Milvus collection %s has another layout: recreating it", self.collection)
            client.drop_collection(self.collection)
        schema = client.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("filename", DataType.VARCHAR, is_primary=True, max_length=MAX_FILENAME)
        schema.add_field("size", DataType.INT64)
        schema.add_field("mtime_ns", DataType.INT64)
        schema.add_field("vector", DataType.FLOAT_VECTOR, dim=self.store.dim)
        index_params = client.prepare_index_params()
        index_params.add_index(field_name="vector", index_type="HNSW", metric_type="COSINE",
                               params={"M": HNSW_M, "efConstruction": HNSW_EF_CONSTRUCTION})
        client.create_collection(self.collection, schema=schema, index_params=index_params,
                                 consistency_level="Strong")

    def _indexed_stamps(self) -> dict[str, tuple[int, int]]:
        iterator = self.client.query_iterator(self.collection, batch_size=READ_BATCH, filter="",
                                              output_fields=["filename", "size", "mtime_ns"])
        stamps = {}
        try:
            while batch := iterator.next():
                stamps.update((row["filename"], (row["size"], row["mtime_ns"])) for row in batch)
        finally:
            iterator.close()
        return stamps

    # ----- changes -----------------------------------------------------------------------------

    def add(self, names: Sequence[str], vectors: np.ndarray, stamps: Sequence[tuple[int, int]]) -> None:
        vectors = np.asarray(vectors, np.float32).reshape(len(names), -1)
        for start in range(0, len(names), WRITE_BATCH):
            end = start + WRITE_BATCH
            self._upsert(names[start:end], vectors[start:end], stamps[start:end])

    def _upsert(self, names: Sequence[str], vectors: np.ndarray, stamps: Sequence[tuple[int, int]]) -> None:
        rows = [{"filename": name, "size": int(size), "mtime_ns": int(mtime_ns), "vector": np.asarray(vector, np.float32)}
                for name, vector, (size, mtime_ns) in zip(names, vectors, stamps)]
        self.client.upsert(self.collection, rows)

    def remove(self, names: Sequence[str]) -> None:
        if names:
            self.client.delete(self.collection, ids=list(dict.fromkeys(names)))

    # ----- reading -----------------------------------------------------------------------------

    def _nearest(self, queries, n):
        limit = min(n, MAX_TOP_K)
        if limit <= 0:
            return [[] for _ in queries]
        found = self.client.search(
            self.collection, data=queries, limit=limit, output_fields=["filename"],
            search_params={"metric_type": "COSINE", "params": {"ef": max(HNSW_EF_SEARCH, limit)}},
            consistency_level="Strong")
        return [[(hit["filename"], min(max(float(hit["distance"]), 0.0), 1.0)) for hit in hits] for hits in found]

    def count(self) -> int:
        rows = self.client.query(self.collection, filter="", output_fields=["count(*)"],
                                 consistency_level="Strong")
        return int(rows[0]["count(*)"])

    def describe(self) -> dict:
        # Names are not compared: that would mean reading every key back from the server.
        info = {"backend": self.name, "uri": describe_uri(self.uri), "collection": self.collection}
        try:
            count = self.count()
        except MilvusException as exc:  # the status page must still render when the server is down
            return {**info, "count": None, "consistent": False, "error": str(exc)}
        return {**info, "count": count, "consistent": count == len(self.store)}
