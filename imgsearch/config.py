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
        "Folder holding `images/`, `uploads/`, `thumbnails/`, `features/` and the SQLite catalogue.",
    )
    database: str = _field(
        "", "IMAGE_SEARCH_DATABASE",
        "The library catalogue: empty means the SQLite file `catalogue.db` in the data folder; "
        "`postgresql://user:password@host:5432/dbname` shares one library between several app processes.",
    )
    watch_folder: bool = _field(
        True, "IMAGE_SEARCH_WATCH",
        "`1` notices images copied into or removed from `images/` by hand as they happen; `0` relies on the rescan.",
    )
    tag_images: bool = _field(
        True, "IMAGE_SEARCH_TAGS",
        "`1` tags every image with its likeliest ImageNet classes when it is indexed, for searching by words and "
        "filtering by tag (about 12 ms per image more); `0` turns words and tags off.",
    )
    rescan_seconds: float = _field(
        300.0, "IMAGE_SEARCH_RESCAN_SECONDS",
        "Seconds between rescans of `images/` for changes the watcher cannot see (network file systems); `0` is off.",
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
    search_engines: str = _field(
        "", "IMAGE_SEARCH_SEARCH_ENGINES",
        "Comma-separated other engines a search may name in its `engine` field, e.g. `color`; loaded at startup, and each answers only once its features cover the library. Empty: only the active engine. `custom:` paths are not accepted.",
    )
    allow_private_urls: bool = _field(
        False, "IMAGE_SEARCH_ALLOW_PRIVATE_URLS",
        "`1` lets URL search fetch loopback and private addresses. Keep `0` unless on a trusted network.",
    )
    allowed_hosts: str = _field(
        "", "IMAGE_SEARCH_ALLOWED_HOSTS",
        "Without a token, the server answers only requests addressed to its bound addresses, `localhost`, `127.0.0.1`, `[::1]` and these comma-separated host names (a guard against DNS rebinding).",
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
    max_decode_mb: int = _field(
        512, "IMAGE_SEARCH_MAX_DECODE_MB",
        "Most memory one image decode may take, in MiB, estimated per format from the header before decoding; costlier images are refused.",
    )
    max_decodes: int = _field(
        2, "IMAGE_SEARCH_MAX_DECODES",
        "Most images decoded at once in the whole process (requests, thumbnails and feature jobs); the others wait their turn.",
    )
    max_streams: int = _field(
        2, "IMAGE_SEARCH_MAX_STREAMS",
        "Most feature-progress streams open at once; more get 429. Each holds a server thread while its job runs, so keep it well below `--threads` (8).",
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
        if self.max_streams < 1:
            raise ValueError("IMAGE_SEARCH_MAX_STREAMS must be at least 1")
        if self.max_decodes < 1:
            raise ValueError("IMAGE_SEARCH_MAX_DECODES must be at least 1")
        if self.max_k < 1 or self.default_k < 1:
            raise ValueError("IMAGE_SEARCH_DEFAULT_K and IMAGE_SEARCH_MAX_K must be at least 1")
        if self.query_expansion < 0:
            raise ValueError("IMAGE_SEARCH_QUERY_EXPANSION must be 0 (off) or a number of hits")
        if any(name.startswith("custom:") for name in self.search_engine_names):
            # A model file can run code when loaded; only IMAGE_SEARCH_MODEL may name one.
            raise ValueError("IMAGE_SEARCH_SEARCH_ENGINES cannot list custom: models")

        from .engines import check_settings  # the engines know their options; they import this module

        check_settings(self)

    @property
    def search_engine_names(self) -> tuple[str, ...]:
        return tuple(name.strip() for name in self.search_engines.split(",") if name.strip())

    @property
    def max_upload_bytes(self) -> int:
        return self.max_upload_mb * 1024 * 1024

    @property
    def max_decode_bytes(self) -> int:
        return self.max_decode_mb * 1024 * 1024

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
