"""One background feature job at a time; a few listeners at once follow its progress.

The job runs on a server thread, so it goes on when a browser disconnects, and a second request
attaches to the running job instead of starting another. Each listener holds a server thread for as
long as it follows a running job, so their number is capped.
"""
from __future__ import annotations

import logging
import threading
from typing import Callable, Iterator

from .errors import RequestError

log = logging.getLogger(__name__)

# A job's work function reports progress through this callback: (current, total, skipped_name, reason).
Progress = Callable[[int, int, "str | None", "str | None"], None]


class Job:
    def __init__(self, work: Callable[[Progress], dict], generation: int = 0):
        self._work = work
        self.generation = generation  # jobs are numbered in the order they start
        self._changed = threading.Condition()
        self._version = 0
        self.current = 0
        self.total = 0
        self.skipped: list[dict] = []
        self.result: dict | None = None
        self.error: str | None = None
        self.thread = threading.Thread(target=self._run, name="feature-job", daemon=True)

    @property
    def running(self) -> bool:
        return self.result is None and self.error is None

    def _report(self, current: int, total: int, skipped: str | None = None, reason: str | None = None) -> None:
        with self._changed:
            self.current, self.total = current, total
            if skipped:
                self.skipped.append({"filename": skipped, "error": reason or "unreadable"})
            self._version += 1
            self._changed.notify_all()

    def _run(self) -> None:
        result, error = None, None
        try:
            result = self._work(self._report)
        except Exception as exc:
            log.exception("Feature job failed")
            error = f"Feature generation failed: {exc}"
        with self._changed:
            self.result, self.error = result, error
            self._version += 1
            self._changed.notify_all()

    def state(self) -> dict:
        with self._changed:
            return self._state_locked()

    def _state_locked(self) -> dict:
        if self.error:
            return {"error": self.error, "skipped": list(self.skipped)}
        if self.result is not None:
            return {"complete": True, **self.result, "skipped": list(self.skipped)}
        percent = int(100 * self.current / self.total) if self.total else 0
        return {"progress": percent, "current": self.current, "total": self.total, "skipped": list(self.skipped)}

    def events(self, keepalive: float = 15.0) -> Iterator[dict | None]:
        """Yield the state now and after every change until the job ends; None means 'still alive'."""
        seen = -1
        while True:
            with self._changed:
                if self._version == seen:
                    self._changed.wait(keepalive)
                if self._version == seen:
                    state = None
                else:
                    seen = self._version
                    state = self._state_locked()
            yield state
            if state is not None and ("complete" in state or "error" in state):
                return


class TooManyListeners(RequestError):
    status = 429


class JobRunner:
    def __init__(self, max_listeners: int = 2):
        self._lock = threading.Lock()
        self.last: Job | None = None
        self.generation = 0  # the number of the last job started
        self.max_listeners = max_listeners
        self._listener_slots = threading.BoundedSemaphore(max_listeners)

    def listen(self, job: Job) -> tuple[Iterator[dict | None], Callable[[], None]]:
        """`job`'s events and the function to call once they are no longer read (it frees the slot).

        A job that has ended answers at once and takes no slot. Raises TooManyListeners when every slot
        is taken.
        """
        if not job.running:
            return job.events(), lambda: None
        if not self._listener_slots.acquire(blocking=False):
            raise TooManyListeners(f"{self.max_listeners} progress streams are already open; the job goes on. "
                                   "Follow it with GET /api/status, or try again when a stream closes.")
        released = threading.Event()

        def release() -> None:
            if not released.is_set():
                released.set()
                self._listener_slots.release()

        return job.events(), release

    def start(self, work: Callable[[Progress], dict]) -> Job:
        """Start `work` unless a job is already running; either way return the running job."""
        with self._lock:
            if self.last is not None and self.last.running:
                return self.last
            self.generation += 1
            job = Job(work, self.generation)
            self.last = job
            job.thread.start()
            return job

    @property
    def running(self) -> Job | None:
        job = self.last
        return job if job is not None and job.running else None
