"""What runs a Keras-defined engine: its cached ONNX graph, a fresh export of it, or TensorFlow.

Every Keras-defined engine (the keras.applications networks, EfficientNet-Lite, custom models) loads
through `compile_features`. When ONNX Runtime is asked for and a valid exported graph is cached, the
engine runs from that file and TensorFlow is never imported: the process stays a few hundred MB smaller
and starts seconds sooner. Otherwise the engine builds its Keras model, and the export is checked against
Keras on a probe batch, cached, and used; what cannot be exported runs on TensorFlow.
"""
from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import logging
import os
import re
import sys
import tempfile
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from .graph_cache import GraphCache, GraphKey
from .onnx_runtime import MIN_PROBE_COSINE, UnsupportedModel, agreement, release_freed_memory, session_runner

log = logging.getLogger(__name__)

Features = Callable[[np.ndarray], np.ndarray]

# What TensorFlow's C++ side prints while it loads: absl's notice about logging before it is set up,
# absl-formatted lines (I1130 ..., W1130 ...), and the continuation of its CPU-instructions notice.
_START_UP_NOISE = re.compile(r"^(WARNING: All log messages before absl::InitializeLog|[IW]\d{4} |To enable the )")


@dataclasses.dataclass
class KerasFeatures:
    """An engine's Keras model, built (TensorFlow is loaded by now), as `compile_features` needs it."""

    run: Features                             # TensorFlow: (n, h, w, 3) uint8 -> (n, dim) features
    probe: np.ndarray                         # a batch that the export must compute as TensorFlow does
    export: Callable[[], bytes] | None = None  # writes the same computation as an ONNX graph; None: not exportable
    properties: dict = dataclasses.field(default_factory=dict)  # kept with the graph, for loading without Keras


@dataclasses.dataclass(frozen=True)
class CompiledFeatures:
    run: Features
    runtime: str                # "onnxruntime" or "tensorflow"
    properties: dict
    graph_path: Path | None     # the cached graph being run, if any


def compile_features(name: str, build: Callable[[], KerasFeatures], runtime: str, cache_dir: Path | None = None,
                     key: GraphKey | None = None) -> CompiledFeatures:
    """The features function of one engine on `runtime` ("onnxruntime" or "tensorflow").

    `build` is called only when the cached graph for `key` cannot be used. Without `key` (a variant that never
    exports, such as GeM pooling) or `cache_dir` nothing is cached.
    """
    onnx_available = importlib.util.find_spec("onnxruntime") is not None
    if runtime == "onnxruntime" and not onnx_available:
        log.info("onnxruntime is not installed; running %s with TensorFlow", name)
    use_onnx = runtime == "onnxruntime" and onnx_available
    cache = GraphCache(cache_dir) if cache_dir is not None and key is not None else None
    if use_onnx and cache:
        cached = cache.load(key)
        if cached:
            try:
                run = session_runner(cached.path)
            except Exception as exc:  # whatever ONNX Runtime refuses in the file, an export can replace it
                log.warning("ONNX Runtime could not load %s (%s); exporting it again", cached.path, exc)
            else:
                log.info("Loaded %s on ONNX Runtime from %s", name, cached.path)
                return CompiledFeatures(run, "onnxruntime", cached.properties, cached.path)
    features = build()
    exported = _checked_export(name, features) if use_onnx else None
    if exported is None:
        return CompiledFeatures(features.run, "tensorflow", features.properties, None)
    run, graph = exported
    path = cache.store(key, graph, features.properties) if cache else None
    log.info("Loaded %s on ONNX Runtime from a new export%s", name, f", cached in {path}" if path else "")
    return CompiledFeatures(run, "onnxruntime", features.properties, path)


def _checked_export(name: str, features: KerasFeatures) -> tuple[Features, bytes] | None:
    """(runner, graph bytes) of the export, or None when it cannot be exported or disagrees with Keras."""
    if features.export is None:
        return None
    try:
        graph = features.export()
    except UnsupportedModel as exc:
        log.info("Running %s with TensorFlow: %s", name, exc)
        return None
    run = session_runner(graph)
    cosine = agreement(np.asarray(features.run(features.probe), np.float32), run(features.probe))
    if cosine < MIN_PROBE_COSINE:
        log.warning("ONNX Runtime features of %s differ from Keras (cosine %.6f); running it with TensorFlow",
                    name, cosine)
        return None
    release_freed_memory()
    return run, graph


def import_tensorflow():
    """Import TensorFlow (once) and return it; below DEBUG logging, its start-up messages are kept off stderr.

    TensorFlow 2.21 prints absl's "before InitializeLog" notice and its oneDNN notice once per native
    library, before it reads TF_CPP_MIN_LOG_LEVEL, so that variable alone cannot silence them: the import
    runs with the process's stderr captured, and captured lines go to the log at DEBUG (anything else that
    was written meanwhile, by other threads, goes back to stderr).
    """
    if "tensorflow" in sys.modules:
        return sys.modules["tensorflow"]
    if log.isEnabledFor(logging.DEBUG):
        import tensorflow
        return tensorflow
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    with _captured_stderr() as captured:
        import tensorflow
    for line in captured:
        if _START_UP_NOISE.match(line):
            log.debug("TensorFlow: %s", line.rstrip())
        else:
            sys.stderr.write(line)
    # Keras reports through absl's Python logger (saving formats, compiled metrics): warnings for developers.
    from absl import logging as absl_logging

    absl_logging.set_verbosity(absl_logging.ERROR)
    tensorflow.get_logger().setLevel(logging.ERROR)
    return tensorflow


@contextlib.contextmanager
def _captured_stderr() -> Iterator[list[str]]:
    """Redirect file descriptor 2 (Python's and native code's stderr) to a temporary file for the block."""
    lines: list[str] = []
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        try:
            yield lines
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            lines.extend(capture.read().decode("utf-8", errors="replace").splitlines(keepends=True))
