"""All-or-nothing file writes: a temporary file in the same folder, fsync, then os.replace."""
from __future__ import annotations

import contextlib
import os
import tempfile
import time
from pathlib import Path
from typing import BinaryIO, Callable, Iterable, Iterator

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


def remove_temp_files(directory: Path, older_than: float = 0.0) -> int:
    """Delete the temporary files of atomic writes that a killed process never finished.

    The files they were meant to replace are intact. Only files last written `older_than` seconds ago or more
    are touched, so that another process's write in progress is left alone.
    """
    return remove_stale(Path(directory).glob(".*.tmp"), older_than)


def remove_stale(paths: Iterable[Path], older_than: float) -> int:
    """Delete the files among `paths` last modified at least `older_than` seconds ago; returns how many."""
    removed = 0
    cutoff = time.time() - older_than
    for path in paths:
        try:
            if path.stat().st_mtime <= cutoff:
                path.unlink()
                removed += 1
        except FileNotFoundError:
            pass
    return removed


def fsync_dir(directory: Path) -> None:
    """Make a rename inside `directory` durable."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
