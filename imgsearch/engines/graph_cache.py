"""Exported ONNX graphs kept on disk, so a later start runs them without TensorFlow.

Each graph is stored as `<cache>/onnx/<name>-<key hash>.onnx` beside a `.json` record holding its full key,
its size and sha256, and what the engine needs to know without Keras (its dimension and input size). The key
names the model and its variant, the sha256 of the weights it was made from, the options that shape the
graph, the exporter's version and the Keras version that built it, so any change writes a new graph
instead of reusing an old one. A graph whose record is missing, unreadable, made for another key, or
whose bytes do not match the recorded checksum is never used: the engine exports it again.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import importlib.metadata
import json
import logging
import re
from pathlib import Path

from ..persist import atomic_write_bytes
from .onnx_runtime import EXPORTER_VERSION, OPSET

log = logging.getLogger(__name__)

FOLDER = "onnx"


def file_sha256(path: Path) -> str:
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


@dataclasses.dataclass(frozen=True)
class GraphKey:
    """Everything a cached graph depends on."""

    model: str                  # the engine and variant, e.g. "efficientnet-lite0-imagenet-s160+224"
    weights_sha256: str         # of the weights file(s), or a fixed label such as "random-seed-0"
    options: tuple[tuple[str, str], ...] = ()   # the settings that shape the graph

    def record(self) -> dict:
        return {"model": self.model, "weights_sha256": self.weights_sha256, "options": dict(self.options),
                "exporter": EXPORTER_VERSION, "opset": OPSET, "keras": _keras_version()}

    @property
    def file_stem(self) -> str:
        digest = hashlib.sha256(json.dumps(self.record(), sort_keys=True).encode()).hexdigest()[:16]
        return f"{re.sub(r'[^A-Za-z0-9.+-]+', '_', self.model)[:80]}-{digest}"


@functools.cache
def _keras_version() -> str:
    """Read from the package metadata: importing Keras would import TensorFlow."""
    try:
        return importlib.metadata.version("keras")
    except importlib.metadata.PackageNotFoundError:
        return "none"


@dataclasses.dataclass(frozen=True)
class CachedGraph:
    path: Path
    properties: dict            # what the engine recorded with it, e.g. {"dim": 1280, "input_size": [224, 224]}


class GraphCache:
    def __init__(self, cache_dir: Path):
        self.directory = Path(cache_dir) / FOLDER

    def paths(self, key: GraphKey) -> tuple[Path, Path]:
        """(graph file, record file) for `key`."""
        stem = key.file_stem
        return self.directory / f"{stem}.onnx", self.directory / f"{stem}.json"

    def load(self, key: GraphKey) -> CachedGraph | None:
        """The valid cached graph for `key`, or None (logging why, when one was there but cannot be used)."""
        graph_path, record_path = self.paths(key)
        if not record_path.exists():
            return None
        try:
            record = json.loads(record_path.read_text(encoding="utf-8"))
            if record.get("key") != key.record():
                problem = "it was made for other weights or settings"
            elif graph_path.stat().st_size != record["size"] or file_sha256(graph_path) != record["sha256"]:
                problem = "its checksum does not match"
            else:
                return CachedGraph(graph_path, record["properties"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            problem = f"it cannot be read ({type(exc).__name__}: {exc})"
        log.warning("Not using the cached graph %s: %s; exporting it again", graph_path, problem)
        return None

    def store(self, key: GraphKey, graph: bytes, properties: dict) -> Path | None:
        """Write `graph` for `key`; the record goes last, so a half-written pair is never taken as valid."""
        graph_path, record_path = self.paths(key)
        record = {"key": key.record(), "size": len(graph), "sha256": hashlib.sha256(graph).hexdigest(),
                  "properties": properties}
        try:
            atomic_write_bytes(graph_path, graph)
            atomic_write_bytes(record_path, json.dumps(record, indent=2, sort_keys=True).encode("utf-8"))
        except OSError as exc:
            # A read-only cache costs the next start an export, nothing more.
            log.warning("Could not cache the exported graph in %s: %s", self.directory, exc)
            return None
        return graph_path
