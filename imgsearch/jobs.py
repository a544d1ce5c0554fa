"""One background feature job at a time; any number of listeners follow its progress.

The job runs on a server thread, so it goes on when a browser disconnects, and a second request
attaches to the running job instead of starting another.
"""
from __future__ import annotations

import logging
import threading
from typing import Callable, Iterator

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


class JobRunner:
    def __init__(self):
        self._lock = threading.Lock()
        self.last: Job | None = None
        self.generation = 0  # the number of the last job started

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
