"""ImageNet weights of the keras.applications networks: found in the Keras cache, or downloaded once.

Finding out needs no TensorFlow: the file is looked up where Keras keeps it (`$KERAS_HOME/models/`,
by default `~/.keras/models/`), and when it is not there, a HEAD request asks whether its origin answers at
all before Keras (and with it TensorFlow) is loaded to download it. A failed download is remembered in the
cache folder for a day, so offline starts and command-line calls fall back at once instead of trying
again each time; `forget_failed_downloads` (what `imgsearch prepare --retry-download` runs) or deleting
the record asks for a new try sooner.
"""
from __future__ import annotations

import dataclasses
import datetime
import json
import logging
import shutil
import time
from pathlib import Path
from urllib.parse import urlsplit

import requests

from ..persist import atomic_write_bytes
from .base import WeightsUnavailable

log = logging.getLogger(__name__)

FAILURES_FOLDER = "failed-downloads"
REMEMBER_FAILURE_S = 24 * 3600
PROBE_TIMEOUT_S = 5.0


@dataclasses.dataclass(frozen=True)
class WeightsFile:
    """One file of ImageNet weights as keras.applications names and fetches it."""

    name: str           # the file name in the Keras cache's models/ folder
    url: str            # where Keras downloads it from
    md5: str | None     # the checksum Keras verifies after downloading, when it has one


def cached_weights_path(weights: WeightsFile, keras_home: Path) -> Path:
    return Path(keras_home).expanduser() / "models" / weights.name


def imagenet_weights(network: str, weights: WeightsFile, keras_home: Path, cache_dir: Path | None) -> Path:
    """The local file of `network`'s ImageNet weights, downloading it if it may be had.

    Raises WeightsUnavailable, without importing TensorFlow, when the file is missing and a download failed
    within the last day, or the origin does not answer now. Without `cache_dir` failures are not remembered.
    """
    path = cached_weights_path(weights, keras_home)
    if path.is_file():
        return path
    where = f"The ImageNet weights for {network} ({weights.name}) are not in {path.parent}"
    failure = _recent_failure(cache_dir, weights) if cache_dir else None
    if failure:
        failed_at = datetime.datetime.fromtimestamp(failure["failed_at"]).strftime("%Y-%m-%d %H:%M")
        raise WeightsUnavailable(
            f"{where}, and downloading them failed at {failed_at} ({failure['reason']}). The download is "
            f"tried again a day later, or now with `python -m imgsearch prepare --engine {network} --retry-download`.")
    reason = _unreachable(weights.url)
    if reason is None:
        from .runtime import import_tensorflow

        import_tensorflow()
        import keras

        log.info("Downloading the ImageNet weights for %s from %s", network, weights.url)
        try:
            downloaded = keras.utils.get_file(weights.name, weights.url, cache_subdir="models",
                                              file_hash=weights.md5, cache_dir=str(Path(keras_home).expanduser()))
        except Exception as exc:  # Keras wraps network, disk and checksum failures alike
            reason = f"{type(exc).__name__}: {exc}"
        else:
            return Path(downloaded)
    if cache_dir:
        _remember_failure(cache_dir, weights, reason)
    raise WeightsUnavailable(f"{where} and could not be downloaded ({reason}).")


def forget_failed_downloads(cache_dir: Path) -> None:
    """Let the next start try every failed download again."""
    shutil.rmtree(Path(cache_dir) / FAILURES_FOLDER, ignore_errors=True)


def _unreachable(url: str) -> str | None:
    """Why `url` cannot be downloaded now, or None when its server answers."""
    try:
        response = requests.head(url, timeout=PROBE_TIMEOUT_S, allow_redirects=True)
    except requests.RequestException as exc:
        # requests' messages run to several lines of nested causes; the kind of failure and the host say enough.
        return f"{type(exc).__name__} reaching {urlsplit(url).hostname}"
    if response.status_code >= 400:
        return f"HTTP {response.status_code} from {url}"
    return None


def _record_path(cache_dir: Path, weights: WeightsFile) -> Path:
    return Path(cache_dir) / FAILURES_FOLDER / f"{weights.name}.json"


def _recent_failure(cache_dir: Path, weights: WeightsFile) -> dict | None:
    try:
        record = json.loads(_record_path(cache_dir, weights).read_text(encoding="utf-8"))
        if time.time() - float(record["failed_at"]) < REMEMBER_FAILURE_S:
            return record
    except (OSError, ValueError, KeyError, TypeError):  # no record, or one we cannot read: try again
        pass
    return None


def _remember_failure(cache_dir: Path, weights: WeightsFile, reason: str) -> None:
    record = {"url": weights.url, "reason": reason, "failed_at": time.time()}
    try:
        atomic_write_bytes(_record_path(cache_dir, weights), json.dumps(record, indent=2).encode("utf-8"))
    except OSError as exc:
        log.warning("Could not remember the failed download in %s: %s", cache_dir, exc)
