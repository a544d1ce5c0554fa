"""The engine registry: one name per feature extractor, loaded lazily and cached per process."""
from __future__ import annotations

import logging
import threading

from ..config import Settings
from .base import Engine, WeightsUnavailable

log = logging.getLogger(__name__)

ENGINE_NAMES = ("resnet50", "efficientnet-lite0", "vgg16", "mobilenetv2", "color", "custom:<path>")
OFFLINE_ENGINE = "efficientnet-lite0"
MIN_SCALE, MAX_SCALE = 32, 1024

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
        scales = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise ValueError(f"IMAGE_SEARCH_FEATURE_SCALES must be comma-separated whole numbers, got {text!r}") from None
    if not scales or min(scales) < MIN_SCALE or max(scales) > MAX_SCALE:
        raise ValueError(f"IMAGE_SEARCH_FEATURE_SCALES must be input sizes from {MIN_SCALE} to {MAX_SCALE}, "
                         f"got {text!r}")
    return scales


def check_settings(settings: Settings) -> None:
    """Refuse engine options that cannot work, naming the setting, before any model loads (no TensorFlow)."""
    from .efficientnet_lite import POOLINGS
    from .keras_cnn import NETWORKS, PRECISIONS
    from .onnx_runtime import RUNTIMES

    name = settings.model
    if name not in ENGINE_NAMES and not (name.startswith("custom:") and len(name) > len("custom:")):
        raise ValueError(f"IMAGE_SEARCH_MODEL: unknown engine {name!r}; known engines: {', '.join(ENGINE_NAMES)}")
    for env, value, allowed in (("IMAGE_SEARCH_RUNTIME", settings.runtime, RUNTIMES),
                                ("IMAGE_SEARCH_PRECISION", settings.precision, PRECISIONS),
                                ("IMAGE_SEARCH_FEATURE_POOLING", settings.feature_pooling, POOLINGS)):
        if value not in allowed:
            raise ValueError(f"{env} must be one of {', '.join(allowed)}, not {value!r}")
    parse_scales(settings.feature_scales)
    metrics = NETWORKS[name].metrics if name in NETWORKS else ("chi2",) if name == "color" else ("cosine",)
    if settings.metric and settings.metric not in metrics:
        raise ValueError(f"IMAGE_SEARCH_METRIC: {name} ranks by {' or '.join(metrics)}, not {settings.metric!r}")
    if settings.precision != "float32" and name not in NETWORKS:
        raise ValueError(f"IMAGE_SEARCH_PRECISION={settings.precision} applies only to "
                         f"{', '.join(NETWORKS)}, not {name}")
    if settings.feature_layer and not name.startswith("custom:"):
        raise ValueError(f"IMAGE_SEARCH_FEATURE_LAYER applies only to custom:<path> engines, not {name}")


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


def get_tagger(settings: Settings) -> Engine:
    """The ImageNet tagger (the offline network's classifier), built once per process and cache folder."""
    key = ("imagenet-tags", str(settings.cache_dir), settings.runtime)
    with _cache_lock:
        tagger = _cache.get(key)
        if tagger is None:
            from .tagger import ImageNetTagger

            tagger = ImageNetTagger(cache_dir=settings.cache_dir, runtime=settings.runtime).load()
            _cache[key] = tagger
    return tagger


def load_active_engine(settings: Settings) -> Engine:
    """The engine the settings ask for, or the offline model when its ImageNet weights cannot be had."""
    try:
        return get_engine(settings.model, settings)
    except WeightsUnavailable as exc:
        log.warning("%s Falling back to the offline model %s.", exc, OFFLINE_ENGINE)
        return get_engine(OFFLINE_ENGINE, settings).standing_in(f"{exc} Using the offline {OFFLINE_ENGINE} model instead.")
