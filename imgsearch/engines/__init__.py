"""The engine registry: one name per feature extractor, loaded lazily and cached per process."""
from __future__ import annotations

import logging
import threading

from ..config import Settings
from .base import Engine, WeightsUnavailable

log = logging.getLogger(__name__)

ENGINE_NAMES = ("resnet50", "efficientnet-lite0", "vgg16", "mobilenetv2", "color", "custom:<path>")
OFFLINE_ENGINE = "efficientnet-lite0"

_cache: dict[tuple, Engine] = {}
_cache_lock = threading.Lock()


def _build(name: str, settings: Settings) -> Engine:
    from .keras_cnn import NETWORKS

    if name in NETWORKS:
        from .keras_cnn import KerasApplicationEngine

        return KerasApplicationEngine(name, settings.weights, metric=settings.metric or None,
                                      precision=settings.precision, runtime=settings.runtime,
                                      cache_dir=settings.cache_dir, keras_home=settings.keras_home)
    if name == OFFLINE_ENGINE:
        from .efficientnet_lite import EfficientNetLite0Engine

        return EfficientNetLite0Engine(cache_dir=settings.cache_dir, pooling=settings.feature_pooling,
                                       scales=parse_scales(settings.feature_scales), flip=settings.flip_average,
                                       runtime=settings.runtime)
    if name == "color":
        from .color import ColorHistogramEngine

        return ColorHistogramEngine()
    if name.startswith("custom:"):
        from .custom import CustomKerasEngine

        return CustomKerasEngine(name.removeprefix("custom:"), feature_layer=settings.feature_layer or None,
                                 runtime=settings.runtime, cache_dir=settings.cache_dir)
    raise ValueError(f"Unknown engine {name!r}; known engines: {', '.join(ENGINE_NAMES)}")


def parse_scales(text: str) -> tuple[int, ...]:
    """"224,288" -> (224, 288)."""
    try:
        return tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise ValueError(f"IMAGE_SEARCH_FEATURE_SCALES must be comma-separated whole numbers, got {text!r}") from None


def get_engine(name: str, settings: Settings) -> Engine:
    """The loaded engine called `name`, built once per process and settings."""
    key = (name, settings.weights, settings.metric, settings.precision, settings.feature_layer, str(settings.cache_dir),
           str(settings.keras_home), settings.feature_pooling, settings.feature_scales, settings.flip_average,
           settings.runtime)
    with _cache_lock:
        engine = _cache.get(key)
        if engine is None:
            engine = _build(name, settings).load()
            _cache[key] = engine
    return engine


def load_active_engine(settings: Settings) -> Engine:
    """The engine the settings ask for, or the offline model when its ImageNet weights cannot be had."""
    try:
        return get_engine(settings.model, settings)
    except WeightsUnavailable as exc:
        log.warning("%s; falling back to the offline model %s", exc, OFFLINE_ENGINE)
        engine = get_engine(OFFLINE_ENGINE, settings)
        engine.fallback_reason = f"{exc} Using the offline {OFFLINE_ENGINE} model instead."
        return engine
