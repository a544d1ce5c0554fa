"""What every feature engine offers: a name, a dimension, a metric, and batch extraction."""
from __future__ import annotations

import abc
import copy
import threading

import numpy as np
from PIL import Image

from ..imaging import resize_center_crop

METRICS = ("cosine", "euclidean", "chi2")


class WeightsUnavailable(RuntimeError):
    """The requested weights cannot be had here (for example ImageNet weights with no network)."""


class Engine(abc.ABC):
    """A feature extractor.

    Subclasses set `name`, `dim`, `metric` and `input_size`, and implement `_load` and `_extract`.
    `prepare` runs in decoding threads; `extract` runs the model on a whole batch at once.
    Vectors come back in the form the metric ranks: L2-normalised for cosine, raw otherwise.
    """

    name: str = ""
    dim: int = 0
    metric: str = "cosine"
    input_size: int = 224
    weights: str = "none"      # where the weights came from, shown to users
    runtime: str = "tensorflow"  # what executes the model, shown to users
    fallback_reason: str = ""  # set when this engine stands in for the one that was asked for

    def __init__(self):
        self._load_lock = threading.Lock()
        self._loaded = False

    @property
    def model_id(self) -> str:
        """Identifies the feature space: vectors from different ids must never be compared."""
        return f"{self.name}-{self.weights_tag}-{self.metric}"

    @property
    def weights_tag(self) -> str:
        return self.weights

    def load(self) -> "Engine":
        """Build the model once; safe to call from several threads."""
        with self._load_lock:
            if not self._loaded:
                self._load()
                self._loaded = True
        return self

    def prepare(self, image: Image.Image) -> np.ndarray:
        """RGB image -> (input_size, input_size, 3) uint8 array."""
        return np.asarray(resize_center_crop(image, self.input_size), dtype=np.uint8)

    def extract(self, batch: np.ndarray) -> np.ndarray:
        """(n, h, w, 3) uint8 -> (n, dim) float32, normalised as `metric` needs."""
        self.load()
        if len(batch) == 0:
            return np.zeros((0, self.dim), np.float32)
        vectors = np.asarray(self._extract(batch), dtype=np.float32).reshape(len(batch), self.dim)
        if self.metric == "cosine":
            vectors = l2_normalize(vectors)
        return vectors

    def standing_in(self, reason: str) -> "Engine":
        """This loaded engine, as a copy that says why it stands in for the engine that was asked for.

        The copy shares the loaded model; the engine itself, which other callers get from the cache, is unchanged.
        """
        stand_in = copy.copy(self.load())
        stand_in.fallback_reason = reason
        return stand_in

    def warm_up(self) -> None:
        """Run one dummy image so the first user request does not pay for tracing."""
        self.extract(np.zeros((1, self.input_size, self.input_size, 3), np.uint8))

    def describe(self) -> dict:
        return {
            "model": self.name,
            "dimension": self.dim,
            "metric": self.metric,
            "weights": self.weights,
            "runtime": self.runtime,
            "fallback": bool(self.fallback_reason),
            "fallback_reason": self.fallback_reason,
        }

    @abc.abstractmethod
    def _load(self) -> None: ...

    @abc.abstractmethod
    def _extract(self, batch: np.ndarray) -> np.ndarray: ...


def l2_normalize(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.maximum(norms, 1e-12)
