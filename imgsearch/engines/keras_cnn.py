"""ImageNet CNNs from keras.applications: ResNet50 (the default), VGG16 and MobileNetV2, from one table."""
from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import numpy as np

from .base import Engine, WeightsUnavailable
from .onnx_runtime import CAFFE, RUNTIMES, SYMMETRIC, load_runner, probe_pixels

log = logging.getLogger(__name__)


def _resnet50(weights):
    import keras

    return keras.applications.ResNet50(include_top=False, pooling="avg", weights=weights)


def _vgg16(weights):
    import keras

    full = keras.applications.VGG16(include_top=True, weights=weights)
    return keras.Model(full.input, full.get_layer("fc2").output, name="vgg16_fc2")


def _mobilenetv2(weights):
    import keras

    # A fixed input size lets the strided "same" convolutions be exported to ONNX.
    return keras.applications.MobileNetV2(input_shape=(224, 224, 3), include_top=False, pooling="avg", weights=weights)


def _builder_and_preprocess(name: str):
    from keras.applications import mobilenet_v2, resnet50, vgg16

    return {
        "resnet50": (_resnet50, resnet50.preprocess_input),
        "vgg16": (_vgg16, vgg16.preprocess_input),
        "mobilenetv2": (_mobilenetv2, mobilenet_v2.preprocess_input),
    }[name]


# The same input scaling as each network's Keras preprocess_input, for the ONNX Runtime graph.
INPUT_TRANSFORMS = {"resnet50": CAFFE, "vgg16": CAFFE, "mobilenetv2": SYMMETRIC}


DIMENSIONS = {"resnet50": 2048, "vgg16": 4096, "mobilenetv2": 1280}
DEFAULT_METRICS = {"resnet50": "cosine", "vgg16": "euclidean", "mobilenetv2": "cosine"}
ALLOWED_METRICS = {"resnet50": ("cosine",), "vgg16": ("euclidean", "cosine"), "mobilenetv2": ("cosine",)}
# "bfloat16" computes in bfloat16 with float32 weights (Keras "mixed_bfloat16"). On CPUs with AMX (Sapphire
# Rapids and later) ResNet50 ran 1.7-2.9x faster; on others it can be slower. Opt-in, because vectors move
# a little: cosine to float32 >= 0.99999 for ResNet50, but only >= 0.996 for the trained EfficientNet-Lite0.
PRECISIONS = ("float32", "bfloat16")


class KerasApplicationEngine(Engine):
    """One keras.applications network; `weights` is `imagenet`, `random`, or a path to a weights file."""

    def __init__(self, name: str, weights: str = "imagenet", metric: str | None = None, precision: str = "float32",
                 runtime: str = "onnxruntime"):
        super().__init__()
        if runtime not in RUNTIMES:
            raise ValueError(f"runtime must be one of {', '.join(RUNTIMES)}, not {runtime!r}")
        if name not in DIMENSIONS:
            raise ValueError(f"Unknown Keras engine {name!r}; known: {', '.join(DIMENSIONS)}")
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
        metric = metric or DEFAULT_METRICS[name]
        if metric not in ALLOWED_METRICS[name]:
            raise ValueError(f"{name} ranks by {' or '.join(ALLOWED_METRICS[name])}, not {metric!r}")
        self.name = name
        self.dim = DIMENSIONS[name]
        self.metric = metric
        self.input_size = 224
        self._weights_setting = weights
        self.precision = precision
        self.requested_runtime = runtime
        self._features = None
        if weights in ("imagenet", "random"):
            self.weights = self._weights_tag = weights
        else:
            if not Path(weights).is_file():
                raise ValueError(f"Weights file {weights} does not exist")
            self.weights = f"file {weights}"
            # Retrained weights are a new feature space: the tag follows the file's content.
            self._weights_tag = "file" + hashlib.sha256(Path(weights).read_bytes()).hexdigest()[:12]

    @property
    def weights_tag(self) -> str:
        return self._weights_tag if self.precision == "float32" else f"{self._weights_tag}-{self.precision}"

    def _load(self) -> None:
        import tensorflow as tf

        build, preprocess = _builder_and_preprocess(self.name)
        weights = self._weights_setting
        keras_weights = None if weights == "random" else weights
        try:
            model = self._build_with_precision(build, keras_weights)
        except Exception as exc:
            if weights == "imagenet":
                raise WeightsUnavailable(
                    f"The ImageNet weights for {self.name} are not in the Keras cache and could not be "
                    f"downloaded ({type(exc).__name__}: {exc})."
                ) from exc
            raise

        if self.requested_runtime == "onnxruntime" and self.precision == "float32":
            self._features = load_runner(model, INPUT_TRANSFORMS[self.name], probe_pixels(self.input_size))
            if self._features is not None:
                self.runtime = "onnxruntime"
                log.info("Loaded %s (%s weights, %d-d) on ONNX Runtime", self.name, self.weights, self.dim)
                return

        # No jit_compile: XLA ran ResNet50 at 10 images/s against 17 without it on this CPU (batch 32, 2 cores).
        @tf.function(input_signature=[tf.TensorSpec([None, 224, 224, 3], tf.uint8)], reduce_retracing=True)
        def features(batch):
            return tf.cast(model(preprocess(tf.cast(batch, tf.float32)), training=False), tf.float32)

        self._features = lambda batch: features(batch).numpy()
        log.info("Loaded %s (%s weights, %d-d)", self.name, self.weights, self.dim)

    def _build_with_precision(self, build, keras_weights):
        import keras

        if self.precision == "float32":
            return build(keras_weights)
        previous = keras.config.dtype_policy()
        keras.config.set_dtype_policy("mixed_bfloat16")
        try:
            return build(keras_weights)
        finally:
            keras.config.set_dtype_policy(previous)

    def _extract(self, batch: np.ndarray) -> np.ndarray:
        return self._features(batch)
