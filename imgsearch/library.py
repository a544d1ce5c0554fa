"""The image files: which exist, which are originals, saving uploads without overwriting, thumbnails."""
from __future__ import annotations

import logging
import os
import re
import socket
import tempfile
from pathlib import Path
from typing import Iterable

from werkzeug.security import safe_join
from werkzeug.utils import secure_filename

from . import imaging
from .persist import FILE_MODE, fsync_dir, remove_stale, remove_temp_files

log = logging.getLogger(__name__)

MAX_NAME_LENGTH = 120
# A staged upload or thumbnail this old was left by a process that died: no write takes this long.
ABANDONED_AFTER = 600
STAGED_BY = re.compile(r"^\.upload-(?P<host>.+)-(?P<pid>\d+)-[^-]+$")
# Device names on Windows whatever the extension (a copy of the library there could not hold them), and
# names starting with "-", which command-line tools read as options (`rm ---rf.png`), get this prefix.
WINDOWS_DEVICE_NAMES = frozenset({"CON", "PRN", "AUX", "NUL", *(f"COM{n}" for n in range(1, 10)),
                                  *(f"LPT{n}" for n in range(1, 10))})
SAFE_PREFIX = "image_"


class NotFound(LookupError):
    pass


class Library:
    """`images/` holds originals and user images; the manifest file names the originals."""

    def __init__(self, images_dir: Path, thumbnails_dir: Path, staging_dir: Path, manifest: Path):
        self.images_dir = Path(images_dir)
        self.thumbnails_dir = Path(thumbnails_dir)
        self.staging_dir = Path(staging_dir)
        self.manifest = Path(manifest)
        for directory in (self.images_dir, self.thumbnails_dir, self.staging_dir):
            directory.mkdir(parents=True, exist_ok=True)
        self.original_names = frozenset(read_manifest(self.manifest))

    def is_original(self, name: str) -> bool:
        return name in self.original_names

    def scan(self) -> tuple[list[str], list[str]]:
        """(originals present on disk, user images), each sorted."""
        with os.scandir(self.images_dir) as entries:
            return self.split(entry.name for entry in entries if _is_image_entry(entry))

    def scan_stamps(self) -> dict[str, tuple[int, int]]:
        """Every image's stamp (see `stamp`) from one pass over the folder (0.6 s for 100k files here, 1.5 s by name)."""
        stamps = {}
        with os.scandir(self.images_dir) as entries:
            for entry in entries:
                if _is_image_entry(entry):
                    try:
                        info = entry.stat()
                    except OSError:  # deleted since the folder was listed, or unreadable
                        continue
                    stamps[entry.name] = (info.st_size, info.st_mtime_ns)
        return stamps

    def split(self, names: Iterable[str]) -> tuple[list[str], list[str]]:
        """Names -> (originals, user images), each sorted."""
        originals, uploads = [], []
        for name in names:
            (originals if name in self.original_names else uploads).append(name)
        return sorted(originals), sorted(uploads)

    def path_of(self, name: str) -> Path:
        """The file for a library name; raises NotFound for anything outside `images/` or missing."""
        if not name or "/" in name or "\\" in name or "\x00" in name or name.startswith("."):
            raise NotFound(name)
        joined = safe_join(str(self.images_dir), name)
        if joined is None:
            raise NotFound(name)
        path = Path(joined)
        try:
            present = path.parent == self.images_dir and path.is_file()
        except OSError:  # for one, a name longer than the file system allows
            present = False
        if not present:
            raise NotFound(name)
        return path

    def exists(self, name: str) -> bool:
        try:
            self.path_of(name)
        except NotFound:
            return False
        return True

    def stamp(self, name: str) -> tuple[int, int]:
        """(size, mtime in ns): a changed file gets its features recomputed."""
        info = self.path_of(name).stat()
        return info.st_size, info.st_mtime_ns

    def stage_upload(self, data: bytes) -> Path:
        """Write upload bytes to the staging folder and sync them; `link_upload` then gives them a name."""
        fd, staged = tempfile.mkstemp(prefix=f".upload-{socket.gethostname()}-{os.getpid()}-", dir=self.staging_dir)
        os.fchmod(fd, FILE_MODE)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
        except BaseException:
            Path(staged).unlink(missing_ok=True)
            raise
        return Path(staged)

    def link_upload(self, staged: Path, client_name: str, extension: str) -> str:
        """Give a staged upload a fresh, safe name in `images/`; never overwrites anything."""
        stem = secure_filename(Path(client_name or "").stem)[:MAX_NAME_LENGTH].strip("._") or "image"
        if stem.startswith("-") or stem.split(".")[0].upper() in WINDOWS_DEVICE_NAMES:
            stem = SAFE_PREFIX + stem
        for attempt in range(10_000):
            name = f"{stem}.{extension}" if attempt == 0 else f"{stem}_{attempt}.{extension}"
            if name in self.original_names:
                continue
            try:
                # link() fails if the name exists, so two uploads can never take the same name.
                os.link(staged, self.images_dir / name)
            except FileExistsError:
                continue
            fsync_dir(self.images_dir)
            return name
        raise RuntimeError(f"No free filename for {stem}")

    def delete(self, name: str) -> None:
        # The image goes first, so a thumbnail being made meanwhile finds it gone and removes itself.
        self.path_of(name).unlink()
        self.thumbnail_cache_path(name).unlink(missing_ok=True)

    def thumbnail_cache_path(self, name: str) -> Path:
        return self.thumbnails_dir / f"{name}.jpg"

    def thumbnail(self, name: str) -> Path:
        """The cached 200×200 JPEG thumbnail, made on first request and remade if the image changed."""
        source = self.path_of(name)
        cached = self.thumbnail_cache_path(name)
        try:
            if cached.stat().st_mtime_ns >= source.stat().st_mtime_ns:
                return cached
        except FileNotFoundError:
            pass
        imaging.write_thumbnail(source, cached)
        if not source.exists():
            cached.unlink(missing_ok=True)
            raise NotFound(name)
        return cached

    def remove_abandoned_files(self) -> int:
        """Staged uploads and half-written thumbnails that a killed process left; call before serving.

        Other servers may share the folder and be writing right now, so a staged upload goes only when the
        process that staged it (named in the file's name) is gone, or, staged on another machine, after
        ABANDONED_AFTER seconds; thumbnails' temporary files after ABANDONED_AFTER seconds too.
        """
        host = socket.gethostname()
        mine, elsewhere = [], []
        for path in self.staging_dir.glob(".upload-*"):
            staged_by = STAGED_BY.match(path.name)
            if staged_by and staged_by["host"] == host:
                if not _process_alive(int(staged_by["pid"])):
                    mine.append(path)
            else:
                elsewhere.append(path)
        return (remove_stale(mine, 0) + remove_stale(elsewhere, ABANDONED_AFTER)
                + remove_temp_files(self.thumbnails_dir, ABANDONED_AFTER))

    def remove_orphan_thumbnails(self) -> int:
        removed = 0
        for thumb in self.thumbnails_dir.glob("*.jpg"):
            if not (self.images_dir / thumb.name[:-4]).is_file():
                thumb.unlink(missing_ok=True)
                removed += 1
        return removed


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, under another user
        return True
    return True


def natural_key(name: str) -> tuple:
    """Sort key that orders numbers by value: "IMG_2.jpg" before "IMG_10.jpg", whatever the case."""
    return tuple(int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name.casefold()))


def read_manifest(path: Path) -> list[str]:
    if not path.exists():
        return []
    lines = path.read_text(encoding="utf-8").splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def _is_image_entry(entry: os.DirEntry) -> bool:
    return (not entry.name.startswith(".") and entry.is_file()
            and entry.name.rsplit(".", 1)[-1].lower() in imaging.ALLOWED_EXTENSIONS)
