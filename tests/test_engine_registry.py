"""Engine options are checked when the settings are made, before any model loads."""
from __future__ import annotations

import pytest

from imgsearch.config import Settings


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
