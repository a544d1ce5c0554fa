"""The `custom:<path>` engine, on a tiny red-versus-blue classifier trained here in a few seconds."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from imgsearch.engines.custom import CustomKerasEngine

# Slow: builds Keras networks with TensorFlow; `make test-fast` leaves these out.
pytestmark = pytest.mark.slow

SIZE = 64
RED, BLUE = (200, 30, 30), (30, 30, 200)


def noisy_squares(colour, count: int, seed: int) -> np.ndarray:
    """(count, 64, 64, 3) uint8: a coloured square on a grey background, with pixel noise."""
    rng = np.random.default_rng(seed)
    images = np.full((count, SIZE, SIZE, 3), 128, np.int16)
    for image in images:
        top, left = rng.integers(0, SIZE // 2, 2)
        image[top:top + SIZE // 2, left:left + SIZE // 2] = colour
    images += rng.integers(-25, 26, images.shape, dtype=np.int16)
    return np.clip(images, 0, 255).astype(np.uint8)


def build_classifier():
    import keras

    inputs = keras.Input((SIZE, SIZE, 3))
    x = keras.layers.Rescaling(1 / 255)(inputs)
    x = keras.layers.Conv2D(8, 3, strides=2, activation="relu", name="conv_a")(x)
    x = keras.layers.Conv2D(12, 3, strides=2, activation="relu", name="conv_b")(x)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    x = keras.layers.Dense(16, activation="relu", name="embedding")(x)
    outputs = keras.layers.Dense(2, activation="softmax", name="classes")(x)
    return keras.Model(inputs, outputs)


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    import keras

    keras.utils.set_random_seed(0)
    images = np.concatenate([noisy_squares(RED, 24, seed=1), noisy_squares(BLUE, 24, seed=2)])
    labels = np.array([0] * 24 + [1] * 24)
    model = build_classifier()
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="sparse_categorical_crossentropy")
    model.fit(images.astype(np.float32), labels, epochs=4, batch_size=16, verbose=0)
    path = tmp_path_factory.mktemp("model") / "colours.keras"
    model.save(path)
    return path


@pytest.fixture(scope="module")
def engine(model_path):
    return CustomKerasEngine(str(model_path)).load()


def test_last_hidden_layer_is_the_feature_vector(engine):
    assert (engine.name, engine.metric, engine.dim, engine.input_size) == ("custom", "cosine", 16, SIZE)
    vectors = engine.extract(noisy_squares(RED, 3, seed=5))
    assert vectors.shape == (3, 16) and vectors.dtype == np.float32
    assert np.linalg.norm(vectors, axis=1) == pytest.approx(np.ones(3), abs=1e-5)


def test_a_named_convolution_is_pooled_to_one_number_per_channel(model_path, engine):
    conv = CustomKerasEngine(str(model_path), feature_layer="conv_b").load()
    assert conv.dim == 12
    assert conv.extract(noisy_squares(BLUE, 2, seed=6)).shape == (2, 12)
    assert conv.model_id != engine.model_id


def test_red_queries_rank_red_images_above_blue_ones(engine):
    library = engine.extract(np.concatenate([noisy_squares(RED, 8, seed=10), noisy_squares(BLUE, 8, seed=11)]))
    queries = engine.extract(noisy_squares(RED, 3, seed=12))
    for similarities in queries @ library.T:
        assert similarities[:8].min() > similarities[8:].max()


def test_prepare_stretches_any_image_to_the_model_input(engine):
    prepared = engine.prepare(Image.new("RGB", (300, 100), RED))
    assert prepared.shape == (SIZE, SIZE, 3) and prepared.dtype == np.uint8
    assert tuple(prepared[0, 0]) == RED
    engine.warm_up()


def test_unknown_layer_lists_the_real_ones(model_path):
    with pytest.raises(ValueError, match="no layer 'nope'.*conv_a.*embedding"):
        CustomKerasEngine(str(model_path), feature_layer="nope").load()


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        CustomKerasEngine(str(tmp_path / "absent.keras"))


def test_unreadable_file_is_a_clear_error(tmp_path):
    broken = tmp_path / "broken.keras"
    broken.write_bytes(b"not a model")
    with pytest.raises(ValueError, match="Could not load the Keras model"):
        CustomKerasEngine(str(broken)).load()


def test_retraining_makes_a_new_feature_space(model_path, tmp_path):
    import keras

    retrained = keras.models.load_model(model_path)
    embedding = retrained.get_layer("embedding")
    kernel, bias = embedding.get_weights()
    embedding.set_weights([kernel * 1.5, bias])
    retrained_path = tmp_path / "colours.keras"
    retrained.save(retrained_path)
    assert CustomKerasEngine(str(retrained_path)).model_id != CustomKerasEngine(str(model_path)).model_id


def test_h5_models_load_too(model_path, tmp_path):
    import keras

    h5_path = tmp_path / "colours.h5"
    keras.models.load_model(model_path).save(h5_path)
    assert CustomKerasEngine(str(h5_path)).load().dim == 16


def test_a_model_without_a_dense_head_needs_a_named_layer(tmp_path):
    import keras

    inputs = keras.Input((SIZE, SIZE, 3))
    outputs = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(4, 3, name="only_conv")(inputs))
    path = tmp_path / "headless.keras"
    keras.Model(inputs, outputs).save(path)
    with pytest.raises(ValueError, match="IMAGE_SEARCH_FEATURE_LAYER.*only_conv"):
        CustomKerasEngine(str(path)).load()
    assert CustomKerasEngine(str(path), feature_layer="only_conv").load().dim == 4
