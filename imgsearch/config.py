"""All settings in one frozen object; `Settings.from_env` is the only reader of the environment."""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Mapping

PROJECT_DIR = Path(__file__).resolve().parent.parent
ENV_PREFIX = "IMAGE_SEARCH_"


def _field(default, env: str, help: str):
    return dataclasses.field(default=default, metadata={"env": env, "help": help})


def _parse_bool(text: str) -> bool:
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"expected 0 or 1, got {text!r}")


@dataclasses.dataclass(frozen=True)
class Settings:
    host: str = _field("127.0.0.1", "HOST", "Address the server binds to (also `--host`).")
    port: int = _field(5000, "PORT", "Port the server listens on (also `--port`).")
    model: str = _field(
        "resnet50", "IMAGE_SEARCH_MODEL",
        "Feature engine: `resnet50`, `efficientnet-lite0`, `vgg16`, `mobilenetv2`, `color` or `custom:<path>`.",
    )
    weights: str = _field(
        "imagenet", "IMAGE_SEARCH_WEIGHTS",
        "Weights for Keras engines: `imagenet` (Keras cache or download), a weights file path, or `random` (tests only).",
    )
    metric: str = _field(
        "", "IMAGE_SEARCH_METRIC",
        "Ranking metric; empty means the engine's own. `vgg16` accepts `euclidean` (its default) or `cosine`.",
    )
    feature_layer: str = _field(
        "", "IMAGE_SEARCH_FEATURE_LAYER",
        "For `custom:<path>`: the layer whose output is the feature vector; empty means the last hidden layer.",
    )
    precision: str = _field(
        "float32", "IMAGE_SEARCH_PRECISION",
        "`resnet50`, `vgg16`, `mobilenetv2`: `float32`, or `bfloat16` (faster on CPUs with AMX; vectors differ slightly, so it is its own feature space).",
    )
    runtime: str = _field(
        "onnxruntime", "IMAGE_SEARCH_RUNTIME",
        "What runs the CNN: `onnxruntime` (its Keras graph exported once, checked against Keras and cached, then run without loading TensorFlow; faster and smaller) or `tensorflow`. Falls back to TensorFlow for what it cannot export (GeM pooling, `bfloat16`, some custom layers).",
    )
    feature_pooling: str = _field(
        "avg", "IMAGE_SEARCH_FEATURE_POOLING",
        "`efficientnet-lite0` only: `avg` (global average) or `gem` (generalised mean, p = 3) pooling of the last feature map.",
    )
    feature_scales: str = _field(
        "224", "IMAGE_SEARCH_FEATURE_SCALES",
        "`efficientnet-lite0` only: comma-separated input sizes whose features are averaged, e.g. `224,288`.",
    )
    flip_average: bool = _field(
        False, "IMAGE_SEARCH_FLIP_AVERAGE",
        "`efficientnet-lite0` only: `1` averages the features of each image and its mirror (twice the extraction time).",
    )
    query_expansion: int = _field(
        0, "IMAGE_SEARCH_QUERY_EXPANSION",
        "Cosine engines: search again with the query plus its best k hits weighted by similarity³ (αQE), keeping the plain nearest image first; `0` is off.",
    )
    data_dir: Path = _field(
        PROJECT_DIR, "IMAGE_SEARCH_DATA_DIR",
        "Folder holding `images/`, `uploads/`, `thumbnails/` and `features/`.",
    )
    cache_dir: Path = _field(
        Path.home() / ".cache" / "image-search", "IMAGE_SEARCH_CACHE_DIR",
        "Where converted model weights, exported ONNX graphs and failed weight downloads (retried after a day) are remembered; safe to delete.",
    )
    keras_home: Path = _field(
        Path.home() / ".keras", "KERAS_HOME",
        "Keras's own folder: the ImageNet weights of `resnet50`, `vgg16` and `mobilenetv2` are looked for, and downloaded to, its `models/`.",
    )
    index: str = _field(
        "exact", "IMAGE_SEARCH_INDEX",
        "Vector index: `exact`, `faiss`, or `milvus:<uri>`: a Milvus Lite file ending in `.db` (relative to the data folder) or `http://host:19530`.",
    )
    allow_private_urls: bool = _field(
        False, "IMAGE_SEARCH_ALLOW_PRIVATE_URLS",
        "`1` lets URL search fetch loopback and private addresses. Keep `0` unless on a trusted network.",
    )
    token: str = _field(
        "", "IMAGE_SEARCH_TOKEN",
        "When set, upload, delete and generate require `Authorization: Bearer <token>`.",
    )
    max_upload_mb: int = _field(16, "IMAGE_SEARCH_MAX_UPLOAD_MB", "Largest accepted image file or URL body, in MiB.")
    max_files_per_request: int = _field(16, "IMAGE_SEARCH_MAX_FILES", "Most files one upload request may carry.")
    max_image_pixels: int = _field(
        64_000_000, "IMAGE_SEARCH_MAX_PIXELS",
        "Largest decoded image, in pixels; larger files are refused as decompression bombs.",
    )
    url_timeout: float = _field(10.0, "IMAGE_SEARCH_URL_TIMEOUT", "Time budget for fetching one URL, redirects included, in seconds.")
    batch_size: int = _field(32, "IMAGE_SEARCH_BATCH_SIZE", "Images per model call when extracting features.")
    decode_workers: int = _field(2, "IMAGE_SEARCH_DECODE_WORKERS", "Threads decoding images while the model runs.")
    duplicate_threshold: float = _field(
        0.84, "IMAGE_SEARCH_DUPLICATE_THRESHOLD",
        "Similarity at or above which two images count as near-duplicates in the duplicate finder.",
    )
    default_k: int = _field(6, "IMAGE_SEARCH_DEFAULT_K", "Results returned when a search does not give `k`.")
    max_k: int = _field(100, "IMAGE_SEARCH_MAX_K", "Upper bound on `k` for one search.")
    log_level: str = _field("INFO", "IMAGE_SEARCH_LOG_LEVEL",
                            "Python logging level; `DEBUG` also shows TensorFlow's start-up messages.")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides) -> "Settings":
        environ = os.environ if environ is None else environ
        values = {}
        for field in dataclasses.fields(cls):
            raw = environ.get(field.metadata["env"])
            if raw is None or raw == "":
                continue
            values[field.name] = _convert(field, raw)
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    def __post_init__(self):
        object.__setattr__(self, "data_dir", Path(self.data_dir))
        object.__setattr__(self, "cache_dir", Path(self.cache_dir))
        object.__setattr__(self, "keras_home", Path(self.keras_home))
        if self.max_k < 1 or self.default_k < 1:
            raise ValueError("IMAGE_SEARCH_DEFAULT_K and IMAGE_SEARCH_MAX_K must be at least 1")
        if self.query_expansion < 0:
            raise ValueError("IMAGE_SEARCH_QUERY_EXPANSION must be 0 (off) or a number of hits")
        from .engines import check_settings  # the engines know their options; they import this module

        check_settings(self)

    @property
    def max_upload_bytes(self) -> int:
        return self.max_upload_mb * 1024 * 1024

    @property
    def images_dir(self) -> Path:
        return self.data_dir / "images"

    @property
    def uploads_dir(self) -> Path:
        return self.data_dir / "uploads"

    @property
    def thumbnails_dir(self) -> Path:
        return self.data_dir / "thumbnails"

    @property
    def features_dir(self) -> Path:
        return self.data_dir / "features"

    @property
    def originals_manifest(self) -> Path:
        return self.data_dir / "original_filenames.txt"


def _convert(field: dataclasses.Field, raw: str):
    kind = type(field.default)
    try:
        if kind is bool:
            return _parse_bool(raw)
        if kind in (int, float):
            return kind(raw)
        if isinstance(field.default, Path):
            return Path(raw).expanduser()
        return raw
    except ValueError as exc:
        raise ValueError(f"{field.metadata['env']}: {exc}") from None


def documented_settings() -> list[tuple[str, str, str]]:
    """(environment variable, default, help) for every setting, for the README and its test."""
    rows = []
    for field in dataclasses.fields(Settings):
        default = field.default
        if field.name == "data_dir":
            default = "the project folder"
        elif field.name == "cache_dir":
            default = "~/.cache/image-search"
        elif field.name == "keras_home":
            default = "~/.keras"
        elif isinstance(default, bool):
            default = int(default)
        elif default == "":
            default = "(empty)"
        rows.append((field.metadata["env"], str(default), field.metadata["help"]))
    return rows
