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
"""
from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import numpy as np
from PIL import Image

from .base import Engine

log = logging.getLogger(__name__)

DEFAULT_INPUT_SIZE = 224
# Layers that may follow the classification Dense without changing what feeds it.
_HEAD_TAIL_LAYERS = ("Activation", "Softmax", "Dropout")


class CustomKerasEngine(Engine):
    name = "custom"
    metric = "cosine"

    def __init__(self, path: str, feature_layer: str | None = None):
        super().__init__()
        self.path = Path(path).expanduser()
        if not self.path.is_file():
            raise ValueError(
                f"Custom model file {self.path} does not exist; give the path of a .keras or .h5 model "
                f"saved with model.save(), as custom:<path>."
            )
        self.feature_layer = feature_layer
        self.weights = f"custom model {self.path}"
        with self.path.open("rb") as model_file:
            digest = hashlib.file_digest(model_file, "sha256").hexdigest()[:12]
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
        import keras
        import tensorflow as tf

        try:
            model = keras.models.load_model(self.path, compile=False)
        except Exception as exc:
            raise ValueError(f"Could not load the Keras model {self.path}: {type(exc).__name__}: {exc}") from exc
        height, width = _image_input_size(model)
        features = _feature_tensor(model, self.feature_layer)
        feature_model = keras.Model(model.inputs, features, name="custom_features")
        spatial_axes = list(range(1, len(features.shape) - 1))
        dim = features.shape[-1]
        if dim is None:
            raise ValueError(f"The feature layer of {self.path} has no fixed size, so it cannot give vectors.")

        @tf.function(input_signature=[tf.TensorSpec([None, height, width, 3], tf.uint8)], reduce_retracing=True)
        def extract_features(batch):
            outputs = feature_model(tf.cast(batch, tf.float32), training=False)
            # (n, h, w, c) maps -> (n, c): one vector per image whatever the layer's shape
            return tf.reduce_mean(outputs, axis=spatial_axes) if spatial_axes else outputs

        self.dim = int(dim)
        self.input_size, self._input_width = height, width
        self._features = extract_features
        log.info("Loaded custom model %s: %d-d features from %s", self.path, self.dim,
                 self.feature_layer or "the last hidden layer")

    def _extract(self, batch: np.ndarray) -> np.ndarray:
        return self._features(batch).numpy()


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
