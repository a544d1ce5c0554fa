"""Exported graphs on disk: reused without Keras, and rebuilt (never used) when corrupt or made for other settings.

The model is shaped like what a fine-tuning run produces: Input → Rescaling → a flat EfficientNet-style
backbone → global average pooling → Dense(256, relu, "embedding") → Dense(classes, softmax).
"""
from __future__ import annotations

import json
import logging

import numpy as np
import pytest

from imgsearch.engines.custom import CustomKerasEngine

# Slow: builds Keras networks with TensorFlow; `make test-fast` leaves these out.
pytestmark = pytest.mark.slow

pytest.importorskip("onnxruntime")

SIZE = 40


@pytest.fixture(scope="module")
def fine_tuned_model(tmp_path_factory):
    import keras
    from keras import layers

    keras.utils.set_random_seed(21)
    inputs = keras.Input((SIZE, SIZE, 3))
    x = layers.Rescaling(1 / 127.5, offset=-1.0)(inputs)
    x = layers.ZeroPadding2D(((0, 1), (0, 1)))(x)
    x = layers.Conv2D(8, 3, strides=2, use_bias=False)(x)
    x = layers.BatchNormalization()(x)
    stem = layers.ReLU(max_value=6.0)(x)
    x = layers.DepthwiseConv2D(3, padding="same", use_bias=False)(stem)
    x = layers.BatchNormalization()(x)
    x = layers.ReLU(max_value=6.0)(x)
    x = layers.Conv2D(8, 1, use_bias=False)(x)
    x = layers.BatchNormalization()(x)
    x = layers.Add()([stem, x])
    x = layers.GlobalAveragePooling2D()(x)
    x = layers.Dense(256, activation="relu", name="embedding")(x)
    x = layers.Dropout(0.2)(x)
    model = keras.Model(inputs, layers.Dense(3, activation="softmax")(x))
    rng = np.random.default_rng(22)
    for layer in model.layers:  # fresh batch norms are identities; folding them must really be tested
        if isinstance(layer, layers.BatchNormalization):
            channels = layer.get_weights()[0].shape
            layer.set_weights([rng.uniform(0.5, 1.5, channels), rng.normal(0, 0.1, channels),
                               rng.normal(0, 0.1, channels), rng.uniform(0.5, 2.0, channels)])
    path = tmp_path_factory.mktemp("fine-tuned") / "fine_tuned.keras"
    model.save(path)
    return path


def photos(count: int = 3) -> np.ndarray:
    return np.random.default_rng(23).integers(0, 256, (count, SIZE, SIZE, 3), dtype=np.uint8)


def graph_files(cache_dir):
    return sorted((cache_dir / "onnx").glob("custom-*"))


def test_a_fine_tuned_model_runs_on_onnx_runtime_as_on_tensorflow(fine_tuned_model, tmp_path):
    fast = CustomKerasEngine(str(fine_tuned_model), cache_dir=tmp_path).load()
    reference = CustomKerasEngine(str(fine_tuned_model), runtime="tensorflow").load()
    assert (fast.runtime, reference.runtime) == ("onnxruntime", "tensorflow")
    assert (fast.dim, fast.input_size, fast.model_id) == (256, SIZE, reference.model_id)
    cosines = np.sum(fast.extract(photos()) * reference.extract(photos()), axis=1)
    assert cosines.min() > 0.9999
    assert [path.suffix for path in graph_files(tmp_path)] == [".json", ".onnx"]
    assert not list(tmp_path.rglob(".*"))  # no temporary file left behind


def forbid_building_keras(monkeypatch):
    def must_not_build(self):
        raise AssertionError("the Keras model was built although its graph is cached")

    monkeypatch.setattr(CustomKerasEngine, "_keras_features", must_not_build)


def test_a_cached_graph_is_run_without_building_the_keras_model(fine_tuned_model, tmp_path, monkeypatch):
    expected = CustomKerasEngine(str(fine_tuned_model), cache_dir=tmp_path).load().extract(photos())
    forbid_building_keras(monkeypatch)
    cached = CustomKerasEngine(str(fine_tuned_model), cache_dir=tmp_path).load()
    assert (cached.runtime, cached.dim, cached.input_size) == ("onnxruntime", 256, SIZE)
    np.testing.assert_allclose(cached.extract(photos()), expected, atol=1e-6)


def flip_bytes_in_the_middle(path):
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle:middle + 64] = bytes(255 - b for b in data[middle:middle + 64])
    path.write_bytes(bytes(data))


def change_exporter_version(path):
    record = json.loads(path.read_text())
    record["key"]["exporter"] -= 1
    path.write_text(json.dumps(record))


@pytest.mark.parametrize("damage, suffix, reason", [
    (flip_bytes_in_the_middle, ".onnx", "checksum does not match"),
    (lambda path: path.write_text("{not json"), ".json", "cannot be read"),
    (change_exporter_version, ".json", "made for other weights or settings"),
], ids=["corrupt-graph", "unreadable-record", "stale-key"])
def test_a_damaged_or_stale_graph_is_exported_again_never_used(fine_tuned_model, tmp_path, caplog, monkeypatch,
                                                                damage, suffix, reason):
    reference = CustomKerasEngine(str(fine_tuned_model), runtime="tensorflow").load().extract(photos())
    CustomKerasEngine(str(fine_tuned_model), cache_dir=tmp_path).load()
    damage(next(path for path in graph_files(tmp_path) if path.suffix == suffix))
    with caplog.at_level(logging.WARNING):
        rebuilt = CustomKerasEngine(str(fine_tuned_model), cache_dir=tmp_path).load()
    assert reason in caplog.text and "exporting it again" in caplog.text
    assert rebuilt.runtime == "onnxruntime"
    assert np.sum(rebuilt.extract(photos()) * reference, axis=1).min() > 0.9999
    forbid_building_keras(monkeypatch)  # the rewritten pair is valid again
    assert CustomKerasEngine(str(fine_tuned_model), cache_dir=tmp_path).load().runtime == "onnxruntime"
