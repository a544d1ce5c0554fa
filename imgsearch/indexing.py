"""Bring a FeatureSet up to date with a list of files: skip the unchanged, extract the rest, drop the gone.

This is the loop behind `python -m imgsearch index` and generate_original_features.py. It streams:
names are read lazily and only two batches of decoded images exist at a time, so memory stays flat
for a folder of any size. Progress is checkpointed with the set's all-or-nothing save every few
batches and again when the loop stops for any reason, so an interrupted run resumes where it left off:
a file whose (size, mtime_ns) stamp matches its stored row is never decoded again.

Sharding splits one job over several processes or machines: shard i of n takes the names whose
CRC-32 is i modulo n, writes its own file, and `merge_shards` joins the complete set of shard files.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import re
import zipfile
import zlib
from pathlib import Path
from contextlib import AbstractContextManager, nullcontext
from typing import Callable, Iterable, Iterator

import numpy as np

from .engines.base import Engine
from .extraction import extract_files
from .imaging import ALLOWED_EXTENSIONS
from .index.base import VectorIndex
from .store import FeatureSet

log = logging.getLogger(__name__)

Stamp = tuple[int, int]
# Called as the loop advances: (files examined since the last call, files skipped with their reasons).
IndexProgress = Callable[[int, list[tuple[str, str]]], None]

_SHARD_FILE = re.compile(r"^(?P<stem>.+)\.shard-(?P<index>\d+)-of-(?P<count>\d+)\.npz$")


class ShardError(ValueError):
    """Shard files that cannot be merged: mixed models, missing shards, or unreadable files."""


@dataclasses.dataclass(frozen=True)
class Shard:
    index: int
    count: int

    @classmethod
    def parse(cls, text: str) -> "Shard":
        """'i/n' with 0 <= i < n, as given on the command line."""
        match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
        if not match:
            raise ValueError(f"expected i/n such as 0/4, got {text!r}")
        index, count = int(match[1]), int(match[2])
        if not 0 <= index < count:
            raise ValueError(f"shard index must be 0..{count - 1} for {count} shards, got {index}")
        return cls(index, count)

    def holds(self, name: str) -> bool:
        # CRC-32 of the name, not hash(): it is the same in every process and on every machine.
        return zlib.crc32(name.encode("utf-8")) % self.count == self.index

    def path_for(self, store_path: Path) -> Path:
        """Where this shard keeps its part of the set stored at `store_path`."""
        return store_path.with_name(f"{store_path.stem}.shard-{self.index}-of-{self.count}{store_path.suffix}")

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


@dataclasses.dataclass
class IndexReport:
    unchanged: int = 0
    computed: int = 0
    dropped: int = 0
    failures: list[tuple[str, str]] = dataclasses.field(default_factory=list)

    @property
    def examined(self) -> int:
        return self.unchanged + self.computed + len(self.failures)


def file_stamp(path: Path) -> Stamp:
    """(size, mtime in ns), the same stamp the app's library uses."""
    info = os.stat(path)
    return info.st_size, info.st_mtime_ns


def walk_images(root: Path) -> Iterator[str]:
    """Relative POSIX paths of the image files under `root`, lazily, each folder in sorted order.

    Hidden files and folders (the default `.imgsearch` store among them) are skipped, and symlinked
    folders are not followed, so a link loop cannot make the walk endless.
    """
    def walk(directory: str, prefix: str) -> Iterator[str]:
        try:
            with os.scandir(directory) as scan:
                entries = sorted(scan, key=lambda entry: entry.name)
        except OSError as exc:
            log.warning("Skipping folder %s: %s", directory, exc)
            return
        for entry in entries:
            if entry.name.startswith("."):
                continue
            if entry.is_dir(follow_symlinks=False):
                yield from walk(entry.path, f"{prefix}{entry.name}/")
            elif entry.name.rsplit(".", 1)[-1].lower() in ALLOWED_EXTENSIONS and entry.is_file():
                yield prefix + entry.name

    yield from walk(os.fspath(root), "")


def index_files(feature_set: FeatureSet, engine: Engine, names: Iterable[str], resolve: Callable[[str], Path], *,
                batch_size: int = 32, workers: int = 2, max_pixels: int | None = None, checkpoint_every: int = 10,
                progress: IndexProgress | None = None, lock: AbstractContextManager | None = None,
                index: VectorIndex | None = None) -> IndexReport:
    """Make `feature_set` hold one up-to-date vector per readable file in `names`, and nothing else.

    `names` is the complete list for this set and may be lazy; `resolve(name)` gives the file (it may raise
    LookupError or OSError for a missing one). Stored rows whose name is not listed, or whose file can no
    longer be read, are dropped once the whole list has been seen. A file that changes or vanishes while
    it is being decoded is not stored; the next run picks it up. `lock` is held around every change and
    save, and `index` is kept in step with the set, for callers that share the set with a live app.
    """
    lock = lock or nullcontext()
    progress = progress or (lambda examined, failures: None)
    report = IndexReport()
    listed: set[str] = set()
    stamps: dict[str, Stamp] = {}  # stamps of the names handed to extraction and not yet stored
    unsaved_batches = 0

    def stale_names() -> Iterator[str]:
        for name in names:
            try:
                stamp = file_stamp(resolve(name))
            except (LookupError, OSError) as exc:
                report.failures.append((name, _missing_reason(exc)))
                progress(1, report.failures[-1:])
                continue
            if name in listed:
                continue
            listed.add(name)
            with lock:
                unchanged = feature_set.stamp(name) == stamp
            if unchanged:
                report.unchanged += 1
                progress(1, [])
                continue
            stamps[name] = stamp
            yield name

    def save() -> None:
        nonlocal unsaved_batches
        with lock:
            feature_set.save()
        unsaved_batches = 0

    try:
        for batch in extract_files(engine, stale_names(), resolve, batch_size, workers, max_pixels):
            failures = list(batch.failures)
            with lock:
                rows = []
                for row, name in enumerate(batch.names):
                    if _current_stamp(resolve, name) == stamps[name]:
                        rows.append(row)
                    else:
                        failures.append((name, "changed or vanished while it was being read; run again"))
                if rows:
                    kept = [batch.names[row] for row in rows]
                    feature_set.add(kept, batch.vectors[rows], [stamps[name] for name in kept])
                    if index is not None:
                        index.add(kept, batch.vectors[rows])
                    unsaved_batches += 1
            for name, _ in failures:
                listed.discard(name)  # its old vector, if any, no longer describes the file
            for name in batch.names + [name for name, _ in batch.failures]:
                del stamps[name]
            report.computed += len(rows)
            report.failures.extend(failures)
            progress(len(batch.names) + len(batch.failures), failures)
            if unsaved_batches >= checkpoint_every:
                save()
        gone = [name for name in feature_set.names if name not in listed]
        if gone:
            with lock:
                feature_set.remove(gone)
                if index is not None:
                    index.remove(gone)
            report.dropped = len(gone)
            unsaved_batches += 1
    finally:
        # Whole batches only ever reach the set, so what it holds is worth keeping even after an error.
        if unsaved_batches or not feature_set.path.exists():
            save()
    return report


def _current_stamp(resolve: Callable[[str], Path], name: str) -> Stamp | None:
    try:
        return file_stamp(resolve(name))
    except (LookupError, OSError):
        return None


def _missing_reason(exc: Exception) -> str:
    if isinstance(exc, (LookupError, FileNotFoundError)):
        return "file not found"
    return f"could not be read ({exc.strerror or exc})" if isinstance(exc, OSError) else str(exc)


def find_shard_files(directory: Path, stem: str | None = None) -> list[Path]:
    """Shard files in `directory`, optionally only those of the set whose file stem is `stem`."""
    if not directory.is_dir():
        return []
    found = []
    for path in sorted(directory.iterdir()):
        match = _SHARD_FILE.match(path.name)
        if match and (stem is None or match["stem"] == stem):
            found.append(path)
    return found


def merge_shards(shard_paths: Iterable[Path], model_id: str | None = None) -> FeatureSet:
    """Join a complete set of shard files of one set (0..n-1 of one n, one model) into that set's file.

    `x.shard-i-of-n.npz` merges into `x.npz` in the same folder, replacing it all-or-nothing. Shards made
    by different models (or by another model than `model_id`) are refused, and so is a set with a missing
    shard, because a merged store must never silently lack part of the files.
    """
    shard_paths = list(shard_paths)
    if not shard_paths:
        raise ShardError("there are no shard files to merge; run `index --shard i/n` first")
    headers = {path: _read_header(path) for path in shard_paths}
    model_ids = sorted({found_id for found_id, _ in headers.values()} | ({model_id} if model_id else set()))
    if len(model_ids) > 1:
        listing = ", ".join(f"{path.name} ({found_id})" for path, (found_id, _) in headers.items())
        raise ShardError(f"the shard files come from different models ({', '.join(model_ids)}): {listing}; "
                         "delete the ones you do not want and merge again")
    targets = {path.parent / f"{_SHARD_FILE.match(path.name)['stem']}.npz" for path in shard_paths}
    if len(targets) > 1:
        raise ShardError(f"the shard files belong to different stores: {', '.join(sorted(map(str, targets)))}")
    by_count: dict[int, dict[int, Path]] = {}
    for path in shard_paths:
        match = _SHARD_FILE.match(path.name)
        by_count.setdefault(int(match["count"]), {})[int(match["index"])] = path
    if len(by_count) > 1:
        raise ShardError(f"there are shard files of runs split {' and '.join(map(str, sorted(by_count)))} ways; "
                         "delete those of the older run and merge again")
    count, shards = next(iter(by_count.items()))
    missing = [str(i) for i in range(count) if i not in shards]
    if missing:
        raise ShardError(f"shard(s) {', '.join(missing)} of {count} are missing; run them, then merge")
    merged_id, dim = headers[shards[0]]
    merged = FeatureSet(targets.pop(), merged_id, dim)
    for i in range(count):
        part = FeatureSet(shards[i], merged_id, dim)
        if not part.load():
            raise ShardError(f"{shards[i].name} cannot be merged: {part.load_problem}")
        snapshot = part.snapshot()
        merged.add(snapshot.names, snapshot.matrix, [part.stamp(name) for name in snapshot.names])
    merged.save()
    return merged


def _read_header(path: Path) -> tuple[str, int]:
    """(model_id, dimension) recorded in a saved feature file."""
    try:
        with np.load(path, allow_pickle=False) as saved:
            return str(saved["model_id"]), int(saved["features"].shape[1])
    except (OSError, KeyError, ValueError, IndexError, zipfile.BadZipFile) as exc:
        raise ShardError(f"{path.name} is not a readable feature file ({exc})") from None
