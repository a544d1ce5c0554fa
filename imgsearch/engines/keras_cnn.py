"""ImageNet CNNs from keras.applications: ResNet50 (the default), VGG16 and MobileNetV2, from one table."""
from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import numpy as np

from .base import Engine, WeightsUnavailable
from .graph_cache import GraphKey, file_sha256
from .keras_weights import WeightsFile, imagenet_weights
from .onnx_runtime import CAFFE, RUNTIMES, SYMMETRIC, InputTransform, export, probe_pixels
from .runtime import KerasFeatures, compile_features, import_tensorflow

log = logging.getLogger(__name__)

KERAS_WEIGHTS_URL = "https://storage.googleapis.com/tensorflow/keras-applications/"
INPUT_SIZE = 224
# `IMAGE_SEARCH_WEIGHTS=random` networks start from this seed, so every process (and the cached export)
# holds the same untrained weights, and the vectors a test stores stay valid across restarts.
RANDOM_WEIGHTS_SEED = 0


@dataclasses.dataclass(frozen=True)
class KerasNetwork:
    """One keras.applications network as an engine uses it."""

    application: str                  # the keras.applications class
    module: str                       # the keras.applications module holding its preprocess_input
    options: dict                     # keyword arguments for the class besides `weights`
    dim: int
    metrics: tuple[str, ...]          # the first is the default
    transform: InputTransform         # preprocess_input as the exported graph computes it
    imagenet: WeightsFile
    output_layer: str | None = None   # a layer whose output is the feature vector, when not the model's own


NETWORKS = {
    "resnet50": KerasNetwork(
        "ResNet50", "resnet50", {"include_top": False, "pooling": "avg"}, 2048, ("cosine",), CAFFE,
        WeightsFile("resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5",
                    KERAS_WEIGHTS_URL + "resnet/resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5",
                    "4d473c1dd8becc155b73f8504c6f6626")),
    "vgg16": KerasNetwork(
        "VGG16", "vgg16", {"include_top": True}, 4096, ("euclidean", "cosine"), CAFFE,
        WeightsFile("vgg16_weights_tf_dim_ordering_tf_kernels.h5",
                    KERAS_WEIGHTS_URL + "vgg16/vgg16_weights_tf_dim_ordering_tf_kernels.h5",
                    "64373286793e3c8b2b4e3219cbf3544b"),
        output_layer="fc2"),
    "mobilenetv2": KerasNetwork(
        # A fixed input size lets the strided "same" convolutions be exported to ONNX.
        "MobileNetV2", "mobilenet_v2", {"input_shape": (INPUT_SIZE, INPUT_SIZE, 3), "include_top": False,
                                        "pooling": "avg"}, 1280, ("cosine",), SYMMETRIC,
        WeightsFile("mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5",
                    KERAS_WEIGHTS_URL + "mobilenet_v2/mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5",
                    None)),
}
# "bfloat16" computes in bfloat16 with float32 weights (Keras "mixed_bfloat16"). On CPUs with AMX (Sapphire
# Rapids and later) ResNet50 ran 1.7-2.9x faster; on others it can be slower. Opt-in, because vectors move
# a little: cosine to float32 >= 0.99999 for ResNet50, but only >= 0.996 for the trained EfficientNet-Lite0.
# It runs on TensorFlow only.
PRECISIONS = ("float32", "bfloat16")


class KerasApplicationEngine(Engine):
    """One keras.applications network; `weights` is `imagenet`, `random`, or a path to a weights file.

    `keras_home` is where Keras keeps downloaded weights; `cache_dir` holds the exported ONNX graph and the
    memory of failed downloads. Without `cache_dir` nothing is cached and every load exports again.
    """

    def __init__(self, name: str, weights: str = "imagenet", metric: str | None = None, precision: str = "float32",
                 runtime: str = "onnxruntime", cache_dir: Path | None = None,
                 keras_home: Path = Path.home() / ".keras"):
        super().__init__()
        if runtime not in RUNTIMES:
            raise ValueError(f"runtime must be one of {', '.join(RUNTIMES)}, not {runtime!r}")
        if name not in NETWORKS:
            raise ValueError(f"Unknown Keras engine {name!r}; known: {', '.join(NETWORKS)}")
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
        self.network = NETWORKS[name]
        metric = metric or self.network.metrics[0]
        if metric not in self.network.metrics:
            raise ValueError(f"{name} ranks by {' or '.join(self.network.metrics)}, not {metric!r}")
        self.name = name
        self.dim = self.network.dim
        self.metric = metric
        self.input_size = INPUT_SIZE
        self._weights_setting = weights
        self.precision = precision
        self.requested_runtime = runtime
        self.cache_dir = cache_dir
        self.keras_home = Path(keras_home)
        self._features = None
        self._weights_sha256 = f"random-seed-{RANDOM_WEIGHTS_SEED}"
        if weights in ("imagenet", "random"):
            self.weights = self._weights_tag = weights
        else:
            if not Path(weights).is_file():
                raise ValueError(f"Weights file {weights} does not exist")
            self.weights = f"file {weights}"
            # Retrained weights are a new feature space: the tag follows the file's content.
            self._weights_sha256 = file_sha256(Path(weights))
            self._weights_tag = "file" + self._weights_sha256[:12]

    @property
    def weights_tag(self) -> str:
        return self._weights_tag if self.precision == "float32" else f"{self._weights_tag}-{self.precision}"

    def _load(self) -> None:
        weights_file = self._weights_file()
        key = None
        if self.precision == "float32":
            digest = file_sha256(weights_file) if self._weights_setting == "imagenet" else self._weights_sha256
            key = GraphKey(f"{self.name}-{self.weights_tag}", digest)
        compiled = compile_features(self.name, lambda: self._keras_features(weights_file), self.requested_runtime,
                                    self.cache_dir, key)
        self._features, self.runtime = compiled.run, compiled.runtime
        log.info("Loaded %s (%s weights, %d-d) on %s", self.name, self.weights, self.dim, self.runtime)

    def _weights_file(self) -> Path | None:
        """The weights to load: the ImageNet file (found or downloaded), the given file, or None for random."""
        if self._weights_setting == "random":
            return None
        if self._weights_setting == "imagenet":
            return imagenet_weights(self.name, self.network.imagenet, self.keras_home, self.cache_dir)
        return Path(self._weights_setting)

    def _keras_features(self, weights_file: Path | None) -> KerasFeatures:
        tf = import_tensorflow()
        import keras

        preprocess = getattr(keras.applications, self.network.module).preprocess_input
        if weights_file is None:
            keras.utils.set_random_seed(RANDOM_WEIGHTS_SEED)
        try:
            model = self._build_with_precision(None if weights_file is None else str(weights_file))
        except Exception as exc:
            if self._weights_setting == "imagenet":
                raise WeightsUnavailable(
                    f"The ImageNet weights file {weights_file} for {self.name} could not be loaded "
                    f"({type(exc).__name__}: {exc}).") from exc
            raise

        # No jit_compile: XLA ran ResNet50 at 10 images/s against 17 without it on this CPU (batch 32, 2 cores).
        @tf.function(input_signature=[tf.TensorSpec([None, INPUT_SIZE, INPUT_SIZE, 3], tf.uint8)],
                     reduce_retracing=True)
        def features(batch):
            return tf.cast(model(preprocess(tf.cast(batch, tf.float32)), training=False), tf.float32)

        exportable = self.precision == "float32"
        return KerasFeatures(run=lambda batch: features(batch).numpy(), probe=probe_pixels(INPUT_SIZE),
                             export=(lambda: export(model, self.network.transform)) if exportable else None)

    def _build_with_precision(self, weights: str | None):
        import keras

        if self.precision == "float32":
            return self._build(weights)
        previous = keras.config.dtype_policy()
        keras.config.set_dtype_policy("mixed_bfloat16")
        try:
            return self._build(weights)
        finally:
            keras.config.set_dtype_policy(previous)

    def _build(self, weights: str | None):
        import keras

        model = getattr(keras.applications, self.network.application)(weights=weights, **self.network.options)
        if self.network.output_layer:
            model = keras.Model(model.input, model.get_layer(self.network.output_layer).output,
                                name=f"{model.name}_{self.network.output_layer}")
        return model

    def _extract(self, batch: np.ndarray) -> np.ndarray:
        return self._features(batch)
