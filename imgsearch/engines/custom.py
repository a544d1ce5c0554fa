"""Your own trained Keras classifier as a feature extractor (`custom:<path>`).

Give the path of a model saved with `model.save("name.keras")` (or the older `.h5` format). The
feature vector is the output of the model's last hidden layer: the input of the final classification
Dense layer, found by walking back from the output past any trailing Activation, Softmax or Dropout
layers. To use another layer, name it with IMAGE_SEARCH_FEATURE_LAYER. A layer whose output is not one
vector per image (a convolution's (h, w, channels) maps, say) is averaged over its spatial axes, so its
feature vector has one number per channel. Vectors are compared by cosine similarity.

What the model is given:
- images resized to the model's input height and width (224×224 when the model leaves them open),
  stretched rather than cropped, with bilinear filtering: what `keras.utils.image_dataset_from_directory`
  does by default, so a model trained from folders sees the same kind of input;
- RGB pixel values as float32 in 0..255, with no other preprocessing. Scaling or normalising belongs
  inside the model (a `keras.layers.Rescaling(1/255)` layer first, or the preprocessing your base
  network expects), where it was during training.

The feature space is tied to the file's content (a short sha256) and the chosen layer, so vectors
from a retrained model are never compared with the old ones.

With `runtime="onnxruntime"` the feature part of the model is exported and run by ONNX Runtime when every
layer on its path exports (an input Rescaling, convolutions, batch norms, ReLUs, pooling, Dense layers:
what a fine-tuned EfficientNet-Lite or a small CNN is made of); the graph is cached, so later starts need no
TensorFlow. Anything else runs on TensorFlow.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from PIL import Image

from .base import Engine
from .graph_cache import GraphKey, file_sha256
from .onnx_runtime import IDENTITY, RUNTIMES, export, probe_pixels
from .runtime import KerasFeatures, compile_features, import_tensorflow

log = logging.getLogger(__name__)

DEFAULT_INPUT_SIZE = 224
# Layers that may follow the classification Dense without changing what feeds it.
_HEAD_TAIL_LAYERS = ("Activation", "Softmax", "Dropout")


class CustomKerasEngine(Engine):
    name = "custom"
    metric = "cosine"

    def __init__(self, path: str, feature_layer: str | None = None, runtime: str = "onnxruntime",
                 cache_dir: Path | None = None):
        super().__init__()
        if runtime not in RUNTIMES:
            raise ValueError(f"runtime must be one of {', '.join(RUNTIMES)}, not {runtime!r}")
        self.path = Path(path).expanduser()
        if not self.path.is_file():
            raise ValueError(
                f"Custom model file {self.path} does not exist; give the path of a .keras or .h5 model "
                f"saved with model.save(), as custom:<path>."
            )
        self.feature_layer = feature_layer
        self.weights = f"custom model {self.path}"
        self.requested_runtime = runtime
        self.cache_dir = cache_dir
        self._sha256 = file_sha256(self.path)
        digest = self._sha256[:12]
        self._weights_tag = f"{digest}-{feature_layer}" if feature_layer else digest
        self._input_width = DEFAULT_INPUT_SIZE
        self._features = None

    @property
    def weights_tag(self) -> str:
        return self._weights_tag

    def prepare(self, image: Image.Image) -> np.ndarray:
        """RGB image -> (height, width, 3) uint8 at the model's input size, stretched to fit."""
        self.load()
        size = (self._input_width, self.input_size)
        if image.size != size:
            image = image.resize(size, Image.Resampling.BILINEAR)
        return np.asarray(image, dtype=np.uint8)

    def warm_up(self) -> None:
        self.extract(np.zeros((1, self.input_size, self._input_width, 3), np.uint8))

    def _load(self) -> None:
        key = GraphKey(f"custom-{self._weights_tag}", self._sha256, (("feature_layer", self.feature_layer or ""),))
        compiled = compile_features(f"custom model {self.path}", self._keras_features, self.requested_runtime,
                                    self.cache_dir, key)
        self.dim = compiled.properties["dim"]
        self.input_size, self._input_width = compiled.properties["input_size"]
        self._features, self.runtime = compiled.run, compiled.runtime
        log.info("Loaded custom model %s: %d-d features from %s, on %s", self.path, self.dim,
                 self.feature_layer or "the last hidden layer", self.runtime)

    def _keras_features(self) -> KerasFeatures:
        tf = import_tensorflow()
        import keras

        try:
            model = keras.models.load_model(self.path, compile=False)
        except Exception as exc:
            raise ValueError(f"Could not load the Keras model {self.path}: {type(exc).__name__}: {exc}") from exc
        height, width = _image_input_size(model)
        features = _feature_tensor(model, self.feature_layer)
        dim = features.shape[-1]
        if dim is None:
            raise ValueError(f"The feature layer of {self.path} has no fixed size, so it cannot give vectors.")
        if len(features.shape) == 4:
            # (n, h, w, c) maps -> (n, c) as a layer, which the ONNX export knows
            features = keras.layers.GlobalAveragePooling2D(name="imgsearch_feature_map_mean")(features)
        feature_model = keras.Model(model.inputs, features, name="custom_features")
        spatial_axes = list(range(1, len(features.shape) - 1))

        @tf.function(input_signature=[tf.TensorSpec([None, height, width, 3], tf.uint8)], reduce_retracing=True)
        def extract_features(batch):
            outputs = feature_model(tf.cast(batch, tf.float32), training=False)
            # any other layer shape -> one vector per image
            return tf.reduce_mean(outputs, axis=spatial_axes) if spatial_axes else outputs

        return KerasFeatures(
            run=lambda batch: extract_features(batch).numpy(), probe=probe_pixels(height, width),
            export=None if spatial_axes else (lambda: export(feature_model, IDENTITY)),
            properties={"dim": int(dim), "input_size": [int(height), int(width)]})

    def _extract(self, batch: np.ndarray) -> np.ndarray:
        return self._features(batch)


def _image_input_size(model) -> tuple[int, int]:
    """(height, width) the model takes; open dimensions fall back to DEFAULT_INPUT_SIZE."""
    shape = model.input_shape
    if isinstance(shape, list) or len(shape) != 4 or shape[-1] not in (3, None):
        raise ValueError(f"A custom model must take one batch of RGB images (n, h, w, 3); this one takes {shape}.")
    return shape[1] or DEFAULT_INPUT_SIZE, shape[2] or DEFAULT_INPUT_SIZE


def _feature_tensor(model, feature_layer: str | None):
    """The symbolic output that becomes the feature vector: the named layer's, or the last hidden one."""
    if feature_layer:
        names = [layer.name for layer in model.layers]
        if feature_layer not in names:
            raise ValueError(f"The model has no layer {feature_layer!r}; its layers are: {', '.join(names)}.")
        return model.get_layer(feature_layer).output
    layers = list(model.layers)
    while layers and type(layers[-1]).__name__ in _HEAD_TAIL_LAYERS:
        layers.pop()
    if not layers or type(layers[-1]).__name__ != "Dense":
        raise ValueError(
            "The model does not end in a classification Dense layer, so its last hidden layer is unclear; "
            f"name one with IMAGE_SEARCH_FEATURE_LAYER: {', '.join(layer.name for layer in model.layers)}."
        )
    return layers[-1].input
