"""Background threads that keep a process current: the folder watcher and the catalogue follower.

- `FolderWatcher`: files copied into or removed from `images/` by hand are noticed through watchdog
  (inotify and friends), and by a rescan every few minutes, because change notification does not
  work on every network file system. Either runs the sync job.
- `CatalogueFollower`: polls the catalogue's change feed about once a second, so what another process
  adds or deletes shows here too.
"""
from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Callable

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer

from .catalogue import Catalogue

log = logging.getLogger(__name__)

SETTLE_SECONDS = 0.5   # events come in bursts (a copy of 100 files): wait for a quiet moment
FOLLOW_SECONDS = 1.0


class _Changed(FileSystemEventHandler):
    """Collects the names of the files that changed, and wakes the watcher."""

    def __init__(self, event: threading.Event):
        self.event = event
        self.names: set[str] = set()
        self.lock = threading.Lock()

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.event_type in ("created", "deleted", "moved", "closed", "modified") and not event.is_directory:
            name = Path(event.dest_path or event.src_path).name if event.event_type == "moved" else \
                Path(event.src_path).name
            if not name.startswith("."):  # the app's own temporary files
                with self.lock:
                    self.names.add(name)
                self.event.set()

    def take(self) -> set[str]:
        with self.lock:
            names, self.names = self.names, set()
        return names


class FolderWatcher:
    """Calls `sync()` after files in `folder` change (when `notify`), and every `rescan_seconds` (0: never).

    `recorded(names)` says whether the catalogue already holds those files as they are now: then the change
    was the app's own (an upload, a delete) and the sync, which lists and stats the whole folder, is skipped.
    """

    def __init__(self, folder: Path, sync: Callable[[], None], rescan_seconds: float, notify: bool = True,
                 recorded: Callable[[set[str]], bool] = lambda names: False):
        self.folder = Path(folder)
        self.sync = sync
        self.rescan_seconds = rescan_seconds
        self.notify = notify
        self.recorded = recorded
        self._changed = threading.Event()
        self._handler = _Changed(self._changed)
        self._stopped = threading.Event()
        self._observer: Observer | None = None
        self._thread = threading.Thread(target=self._run, name="folder-watcher", daemon=True)

    def start(self) -> "FolderWatcher":
        if self.notify:
            try:
                observer = Observer()
                observer.schedule(self._handler, str(self.folder), recursive=False)
                observer.daemon = True
                observer.start()
                self._observer = observer
            except OSError as exc:  # for one, the inotify instance limit
                log.warning("Cannot watch %s for changes (%s); relying on the periodic rescan", self.folder, exc)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopped.set()
        self._changed.set()
        if self._observer is not None:
            self._observer.stop()
            self._observer.join(timeout=5)
        self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stopped.is_set():
            notified = self._changed.wait(self.rescan_seconds or None)  # False: time for the periodic rescan
            if self._stopped.is_set():
                return
            while self._changed.wait(SETTLE_SECONDS) and not self._stopped.is_set():
                self._changed.clear()  # still changing: wait until it settles
            names = self._handler.take()
            try:
                if notified and names and self.recorded(names):
                    continue
                self.sync()
            except Exception:
                log.exception("Syncing the library with %s failed", self.folder)


class CatalogueFollower:
    """Applies other processes' catalogue changes to this one's memory, about once a second."""

    def __init__(self, catalogue: Catalogue, interval: float = FOLLOW_SECONDS):
        self.catalogue = catalogue
        self.interval = interval
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="catalogue-follower", daemon=True)
        self._failing = False

    def start(self) -> "CatalogueFollower":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopped.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stopped.wait(self.interval):
            try:
                self.catalogue.poll()
                if self._failing:
                    log.info("The catalogue answers again")
                self._failing = False
            except Exception as exc:  # the database may be restarting: keep serving what we have
                if not self._failing:
                    log.warning("Cannot read the catalogue's changes: %s", exc)
                self._failing = True
