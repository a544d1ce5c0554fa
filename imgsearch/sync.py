"""The one loop that brings the catalogue and an engine's vectors up to date with a folder of image files.

The app's feature job (startup, "Generate Features", the folder watcher), the command line's `index`
and `originals`, and `evaluate` all run `sync`:
1. `reconcile`: every file present gets a row (new ones, and changed ones with their new stamp), and the
   rows of files that are gone are removed. Only this and uploads/deletes change rows.
2. The space's pending images (no vector for the file's current stamp, and not known unreadable) are
   decoded in threads and run through the model in batches.
3. Each batch is one transaction: a vector is stored only if the file still has the stamp it was read
   with, and a failure is recorded only for a file that still exists with the stamp that was read, so a
   file deleted or replaced meanwhile is never listed as unreadable.

Every batch is committed on its own, so an interrupted run keeps what it finished and the next run
carries on from there.
"""
from __future__ import annotations

import dataclasses
import functools
import logging
import os
import re
import zlib
from pathlib import Path
from typing import Callable, Iterable, Iterator, Protocol, Sequence

from PIL import Image

from .catalogue import Catalogue, ImageRecord, Stamp
from .extraction import extract_files
from .imaging import ALLOWED_EXTENSIONS
from .space import FeatureSpace

log = logging.getLogger(__name__)

# Called as the loop advances: (images done so far, images to do, a skipped image's name and reason).
SyncProgress = Callable[[int, int, "str | None", "str | None"], None]


class FileSource(Protocol):
    """A folder of images as the sync loop sees it."""

    def scan_stamps(self) -> dict[str, Stamp]:
        """Every image file present, by name, with its (size, mtime_ns)."""

    def path_of(self, name: str) -> Path: ...

    def is_original(self, name: str) -> bool: ...


@dataclasses.dataclass
class SyncReport:
    unchanged: int = 0
    computed: int = 0
    added: int = 0       # rows of new files
    dropped: int = 0     # rows of files that are gone
    failures: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    model_seconds: float = 0.0  # time the model took, decoding excluded

    @property
    def examined(self) -> int:
        return self.unchanged + self.computed + len(self.failures)


def file_stamp(path: Path) -> Stamp:
    """(size, mtime in ns): a file whose stamp changes gets its features recomputed."""
    info = os.stat(path)
    return info.st_size, info.st_mtime_ns


def current_stamp(source: FileSource, name: str) -> Stamp | None:
    try:
        return file_stamp(source.path_of(name))
    except (LookupError, OSError):
        return None


def reconcile(catalogue: Catalogue, source: FileSource, only: Callable[[str], bool] | None = None) -> SyncReport:
    """Make the catalogue's rows match the files; `only` limits it to some names (a shard)."""
    files = source.scan_stamps()
    known = {record.name: record for record in catalogue.records() if only is None or only(record.name)}
    if only is not None:
        files = {name: stamp for name, stamp in files.items() if only(name)}
    candidates = [name for name, stamp in files.items() if _needs_row(known.get(name), stamp, source, name)]
    vanished = [name for name in known if name not in files]
    report = SyncReport()
    if not candidates and not vanished:
        return report
    with catalogue.write() as write:
        # Files come and go while we look: decide on what the database and the folder say now.
        rows = write.current(candidates + vanished)
        fresh = []
        for name in candidates:
            stamp = current_stamp(source, name)
            if stamp is not None and _needs_row(rows.get(name), stamp, source, name):
                fresh.append(_row_for(rows.get(name), name, stamp, source.is_original(name)))
        gone = [name for name in vanished if name in rows and current_stamp(source, name) is None]
        write.put_records(fresh)
        write.remove(gone)
    report.added, report.dropped = len(fresh), len(gone)
    if fresh or gone:
        log.info("Catalogue follows the folder: %d new or changed files, %d gone", len(fresh), len(gone))
    return report


def _needs_row(record: ImageRecord | None, stamp: Stamp, source: FileSource, name: str) -> bool:
    return record is None or record.stamp != stamp or record.is_original != source.is_original(name)


def _row_for(record: ImageRecord | None, name: str, stamp: Stamp, is_original: bool) -> ImageRecord:
    if record is not None and record.stamp == stamp:  # only the original flag changed: the file is as it was
        return dataclasses.replace(record, is_original=is_original)
    return ImageRecord(name, is_original, stamp[0], stamp[1])


def sync(catalogue: Catalogue, spaces: FeatureSpace | Sequence[FeatureSpace], source: FileSource, *,
         batch_size: int = 32, workers: int = 2, max_pixels: int | None = None,
         progress: SyncProgress | None = None, only: Callable[[str], bool] | None = None,
         retry_unreadable: bool = False,
         transform: Callable[[Image.Image], Image.Image] | None = None) -> SyncReport:
    """Reconcile the rows with the folder, then compute every pending vector of each space.

    An image pending in several spaces (an engine's features and the tags, say) is read and decoded once.
    Files already known to be unreadable are tried again only with `retry_unreadable` (or once changed).
    """
    spaces = [spaces] if isinstance(spaces, FeatureSpace) else list(spaces)
    report = reconcile(catalogue, source, only)
    progress = progress or (lambda done, total, name, reason: None)
    # Each space's list is read once: an upload or delete meanwhile must not make the two views disagree.
    pending_lists = [space.pending(retry_unreadable) for space in spaces]
    needed = [{name for name in names if only is None or only(name)} for names in pending_lists]
    rank = {name: i for i, name in enumerate(name for names in pending_lists for name in names)}
    pending = sorted(set().union(*needed), key=rank.__getitem__)  # the spaces' own order: originals first
    total = len(pending)
    report.unchanged = sum(1 for record in catalogue.records() if (only is None or only(record.name))
                           and record.name not in rank and record.error is None)
    done = 0
    progress(done, total, None, None)
    batches = extract_files([space.engine for space in spaces], pending, source.path_of, batch_size, workers,
                            max_pixels, transform, wanted=lambda name: [i for i, names in enumerate(needed)
                                                                       if name in names])
    for batch in batches:
        with catalogue.write() as write:
            names = batch.names + [name for name, _ in batch.failures]
            rows = write.current(names)
            now = {name: current_stamp(source, name) for name in names}
            current = {row for row, (name, read) in enumerate(zip(batch.names, batch.reads))
                       if name in rows and read.stamp == rows[name].stamp == now[name]}
            for space, (computed_rows, vectors) in zip(spaces, batch.outputs):
                keep = [i for i, row in enumerate(computed_rows) if row in current]
                space.put(write, [batch.names[computed_rows[i]] for i in keep], vectors[keep],
                          [batch.reads[computed_rows[i]].stamp for i in keep])
            details = [rows[batch.names[row]].with_details(batch.reads[row].details) for row in sorted(current)]
            unreadable = [dataclasses.replace(rows[name], error=reason) for name, reason in batch.failures
                          if name in rows and now[name] == rows[name].stamp]
            write.put_records(details + unreadable)
            for space in spaces:
                space.drop(write, [record.name for record in unreadable if record.name in space.store])
            write.remove([name for name in names if name in rows and now[name] is None])  # deleted meanwhile
        report.computed += len(current)
        report.model_seconds += batch.model_seconds
        done += len(batch.names)
        progress(done, total, None, None)
        recorded = {record.name for record in unreadable}
        for name, reason in batch.failures:
            done += 1
            if name in recorded:
                report.failures.append((name, reason))
            progress(done, total, *((name, reason) if name in recorded else (None, None)))
    return report


# ----- a folder of images as the command line indexes it ----------------------------------------


class FolderSource:
    """Every image under `root`, recursively, named by relative POSIX path; hidden files and folders skipped.

    With `names`, exactly those files under `root` (a labelled dataset's list, say).
    """

    def __init__(self, root: Path, names: Iterable[str] | None = None):
        self.root = Path(root)
        self.names = None if names is None else list(names)

    def scan_stamps(self) -> dict[str, Stamp]:
        # A walk's directory entries stat without a path lookup: 100k files cost a second less.
        found = (((name, entry.stat) for name, entry in walk_images(self.root)) if self.names is None
                 else ((name, functools.partial(os.stat, self.root / name)) for name in self.names))
        stamps = {}
        for name, stat in found:
            try:
                info = stat()
            except OSError:
                continue
            stamps[name] = info.st_size, info.st_mtime_ns
        return stamps

    def path_of(self, name: str) -> Path:
        return self.root / name

    def is_original(self, name: str) -> bool:
        return False


def walk_images(root: Path) -> Iterator[tuple[str, os.DirEntry]]:
    """(relative POSIX path, directory entry) of the image files under `root`, lazily, each folder in sorted order.

    Hidden files and folders (the default `.imgsearch` store among them) are skipped, and symlinked
    folders are not followed, so a link loop cannot make the walk endless.
    """
    def walk(directory: str, prefix: str) -> Iterator[tuple[str, os.DirEntry]]:
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
                yield prefix + entry.name, entry

    yield from walk(os.fspath(root), "")


@dataclasses.dataclass(frozen=True)
class Shard:
    """Shard i of n: the names whose CRC-32 is i modulo n, so several processes can split one folder."""

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

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"
