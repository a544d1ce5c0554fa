"""All-or-nothing file writes: a temporary file in the same folder, fsync, then os.replace."""
from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import BinaryIO, Callable, Iterator

# mkstemp makes owner-only files; saved state should be as readable as any file the user writes.
FILE_MODE = 0o644


@contextlib.contextmanager
def atomic_file(path: Path) -> Iterator[BinaryIO]:
    """Yield a binary file that replaces `path` only if the block finishes without an exception."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.fchmod(fd, FILE_MODE)
    try:
        with os.fdopen(fd, "wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp_name, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp_name)
        raise
    fsync_dir(path.parent)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    with atomic_file(path) as handle:
        handle.write(data)


def atomic_write_with(path: Path, writer: Callable[[BinaryIO], None]) -> None:
    with atomic_file(path) as handle:
        writer(handle)


def remove_temp_files(directory: Path) -> int:
    """Delete the temporary files of atomic writes that a killed process never finished.

    The files they were meant to replace are intact. Only safe while nothing else writes in `directory`.
    """
    removed = 0
    for temp in Path(directory).glob(".*.tmp"):
        temp.unlink(missing_ok=True)
        removed += 1
    return removed


def fsync_dir(directory: Path) -> None:
    """Make a rename inside `directory` durable."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
