"""Engine options are checked when the settings are made; the offline stand-in leaves the shared engine alone."""
from __future__ import annotations

import dataclasses
import json
import time

import numpy as np
import pytest

from imgsearch.config import Settings
from imgsearch.engines import get_engine, load_active_engine
from imgsearch.engines.base import WeightsUnavailable
from imgsearch.engines.keras_cnn import NETWORKS
from imgsearch.engines.keras_weights import imagenet_weights


@pytest.mark.parametrize("options, message", [
    ({"model": "resnet5"}, "IMAGE_SEARCH_MODEL: unknown engine 'resnet5'; known engines: resnet50,"),
    ({"model": "custom:"}, "IMAGE_SEARCH_MODEL: unknown engine 'custom:'"),
    ({"runtime": "tflite"}, "IMAGE_SEARCH_RUNTIME must be one of onnxruntime, tensorflow, not 'tflite'"),
    ({"precision": "float16"}, "IMAGE_SEARCH_PRECISION must be one of float32, bfloat16"),
    ({"feature_pooling": "max"}, "IMAGE_SEARCH_FEATURE_POOLING must be one of avg, gem"),
    ({"feature_scales": "224,big"}, "IMAGE_SEARCH_FEATURE_SCALES must be comma-separated whole numbers"),
    ({"feature_scales": "16,224"}, "IMAGE_SEARCH_FEATURE_SCALES must be input sizes from 32 to 1024"),
    ({"metric": "euclidean"}, "IMAGE_SEARCH_METRIC: resnet50 ranks by cosine, not 'euclidean'"),
    ({"model": "color", "metric": "cosine"}, "IMAGE_SEARCH_METRIC: color ranks by chi2"),
    ({"model": "efficientnet-lite0", "precision": "bfloat16"}, "IMAGE_SEARCH_PRECISION=bfloat16 applies only to"),
    ({"model": "vgg16", "feature_layer": "fc1"}, "IMAGE_SEARCH_FEATURE_LAYER applies only to custom:<path>"),
])
def test_settings_refuse_engine_options_that_cannot_work(options, message):
    with pytest.raises(ValueError) as refused:
        Settings(**options)
    assert message in str(refused.value)


@pytest.mark.parametrize("options", [
    {"model": "vgg16", "metric": "cosine"}, {"model": "color", "metric": "chi2"},
    {"model": "custom:/models/mine.keras", "feature_layer": "embedding"}, {"precision": "bfloat16"},
    {"model": "efficientnet-lite0", "feature_scales": "160, 224", "feature_pooling": "gem"},
])
def test_settings_accept_working_combinations(options):
    assert Settings(**options).model == options.get("model", "resnet50")


def test_the_offline_stand_in_does_not_change_the_shared_engine(settings, tmp_path, monkeypatch):
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:9")  # the weights' origin cannot be reached
    wanted = dataclasses.replace(settings, model="resnet50", weights="imagenet", keras_home=tmp_path / "keras")
    active = load_active_engine(wanted)
    shared = get_engine("efficientnet-lite0", wanted)
    assert active.describe()["fallback"] is True and "resnet50" in active.describe()["fallback_reason"]
    assert shared.describe()["fallback"] is False and shared is not active
    batch = np.random.default_rng(1).integers(0, 256, (2, 224, 224, 3), dtype=np.uint8)
    np.testing.assert_array_equal(active.extract(batch), shared.extract(batch))


def test_imagenet_weights_are_found_in_the_keras_folder_without_asking_the_network(tmp_path, monkeypatch):
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:9")
    weights = NETWORKS["mobilenetv2"].imagenet
    present = tmp_path / "keras" / "models" / weights.name
    present.parent.mkdir(parents=True)
    present.write_bytes(b"weights")
    assert imagenet_weights("mobilenetv2", weights, tmp_path / "keras", tmp_path / "cache") == present
    assert not (tmp_path / "cache").exists()


def test_a_failed_download_is_remembered_for_a_day(tmp_path, monkeypatch):
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:9")
    weights = NETWORKS["resnet50"].imagenet
    with pytest.raises(WeightsUnavailable, match="could not be downloaded"):
        imagenet_weights("resnet50", weights, tmp_path / "keras", tmp_path / "cache")
    record = tmp_path / "cache" / "failed-downloads" / f"{weights.name}.json"
    first = json.loads(record.read_text())
    with pytest.raises(WeightsUnavailable, match="The download is tried again a day later"):
        imagenet_weights("resnet50", weights, tmp_path / "keras", tmp_path / "cache")
    assert json.loads(record.read_text()) == first

    record.write_text(json.dumps({**first, "failed_at": time.time() - 25 * 3600}))
    with pytest.raises(WeightsUnavailable, match="could not be downloaded"):  # a day later it is tried again
        imagenet_weights("resnet50", weights, tmp_path / "keras", tmp_path / "cache")
    assert json.loads(record.read_text())["failed_at"] > time.time() - 3600
