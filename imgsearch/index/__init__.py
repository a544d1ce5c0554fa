"""Vector indexes behind one interface; `IMAGE_SEARCH_INDEX` picks the backend."""
from __future__ import annotations

from ..engines.base import Engine
from ..store import FeatureStore
from .base import VectorIndex
from .exact import ExactIndex

INDEX_NAMES = ("exact", "faiss", "milvus:<uri>")


def make_index(spec: str, store: FeatureStore, engine: Engine) -> VectorIndex:
    if spec == "exact":
        return ExactIndex(store, engine.metric)
    raise ValueError(f"Unknown index {spec!r}; known: {', '.join(INDEX_NAMES)}")
