"""Vector indexes behind one interface; `IMAGE_SEARCH_INDEX` picks the backend."""
from __future__ import annotations

from pathlib import Path

from ..config import Settings
from ..engines.base import Engine
from ..store import FeatureStore
from .base import VectorIndex
from .exact import ExactIndex

INDEX_NAMES = ("exact", "faiss", "milvus:<uri>")


def make_index(settings: Settings, store: FeatureStore, engine: Engine) -> VectorIndex:
    """The backend `settings.index` names. Approximate backends import their library only when chosen."""
    spec = settings.index
    if spec == "exact":
        return ExactIndex(store, engine.metric)
    if spec == "faiss":
        from .faiss_index import FaissIndex

        return FaissIndex(store, engine.metric, settings.features_dir / engine.model_id)
    if spec.startswith("milvus:") and spec != "milvus:":
        from .milvus_index import MilvusIndex

        return MilvusIndex(store, engine.metric, milvus_uri(spec[len("milvus:"):], settings.data_dir))
    raise ValueError(f"Unknown index {spec!r}; known: {', '.join(INDEX_NAMES)}")


def milvus_uri(uri: str, data_dir: Path) -> str:
    """A URL is a Milvus server; anything else is a Milvus Lite file, relative paths inside the data folder."""
    if "://" in uri:
        return uri
    if not uri.endswith(".db"):
        raise ValueError(f"A Milvus Lite file must end in .db, got {uri!r} (or give http://host:19530)")
    return str(Path(data_dir) / Path(uri).expanduser())
