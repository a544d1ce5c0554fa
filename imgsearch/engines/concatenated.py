"""Several cosine engines' features side by side: one feature space made of two or more networks.

Each part's vector is L2-normalised, the parts are joined, and the whole is normalised again, so the cosine
of two joined vectors is the mean of the parts' cosines and every network weighs the same. Different
networks fail on different edits of a photo, so together they find copies that either alone misses.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
from PIL import Image

from .base import Engine, l2_normalize


def join_features(parts: Sequence[np.ndarray]) -> np.ndarray:
    """Each part's (n, d_i) vectors at unit length, side by side, then the whole at unit length."""
    return l2_normalize(np.hstack([l2_normalize(np.asarray(part, dtype=np.float32)) for part in parts]))


class ConcatenatedEngine(Engine):
    """Parts run one after the other on every batch.

    A prepared image is a record with one field per part, each holding that part's own prepared input,
    so every network sees exactly what it sees alone (sizes and crops differ between them).
    """

    metric = "cosine"

    def __init__(self, parts: Sequence[Engine]):
        super().__init__()
        if len(parts) < 2 or any(part.metric != "cosine" for part in parts):
            raise ValueError("a concatenated engine needs two or more cosine engines")
        self.parts = tuple(parts)
        self.name = "+".join(part.name for part in self.parts)
        self.dim = sum(part.dim for part in self.parts)
        self.input_size = max(part.input_size for part in self.parts)
        self.weights = "; ".join(part.weights for part in self.parts)
        self.record = np.dtype([(f"part{i}", np.uint8, (part.input_size, part.input_size, 3))
                                for i, part in enumerate(self.parts)])

    @property
    def weights_tag(self) -> str:
        return "+".join(part.weights_tag for part in self.parts)

    def _load(self) -> None:
        for part in self.parts:
            part.load()
        self.runtime = "+".join(dict.fromkeys(part.runtime for part in self.parts))

    def prepare(self, image: Image.Image) -> np.ndarray:
        """RGB image -> a record of every part's own prepared input."""
        record = np.zeros((), self.record)
        for i, part in enumerate(self.parts):
            record[f"part{i}"] = part.prepare(image)
        return record

    def _extract(self, batch: np.ndarray) -> np.ndarray:
        return join_features([part.extract(np.ascontiguousarray(batch[f"part{i}"]))
                              for i, part in enumerate(self.parts)])

    def warm_up(self) -> None:
        self.extract(np.zeros(1, self.record))
