"""Soak test: many clients run a mixed workload against one real server for a long time.

    python -m bench.soak [--seconds 600] [--clients 16] [--model efficientnet-lite0] [--json soak.json]

It starts `python app.py` on a free loopback port with a generated library in a temporary folder, then each
client loops over searches (by file and by library name), uploads and deletes of its own images, gallery
listings, thumbnails, full images, status polls and the occasional feature-generation run. It reports the
request count, every error (any status other than 2xx, or a broken connection; there must be none), latency
percentiles, and the server's resident memory when idle, after warm-up and at the end: memory must level off
once caches and thread pools are warm, not keep growing with the number of requests.
"""
from __future__ import annotations

import argparse
import collections
import dataclasses
import io
import json
import random
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import requests
from PIL import Image, ImageDraw

from bench.common import PROJECT_DIR, ServerProcess, proc_status_mb

COLOURS = [(220, 30, 30), (30, 180, 40), (30, 60, 220), (240, 220, 20), (140, 40, 160), (128, 128, 128)]
MAX_OWN_UPLOADS = 4  # each client deletes its oldest upload beyond this, so the library stays bounded
WEIGHTS = {"search_file": 5, "search_name": 4, "upload": 2, "list": 2, "status": 1, "thumbnail": 3, "image": 1,
           "generate": 0.3}


def synthetic_image(rng: random.Random, size=(160, 120), fmt: str = "JPEG") -> bytes:
    """A coloured shape on a noisy background, different for every seed."""
    noise = np.random.default_rng(rng.randrange(2**32)).integers(200, 250, (size[1], size[0], 3), dtype=np.uint8)
    image = Image.fromarray(noise)
    w, h = size
    box = (w * rng.uniform(0.05, 0.3), h * rng.uniform(0.05, 0.3), w * rng.uniform(0.7, 0.95), h * rng.uniform(0.7, 0.95))
    getattr(ImageDraw.Draw(image), rng.choice(["ellipse", "rectangle"]))(box, fill=rng.choice(COLOURS))
    buffer = io.BytesIO()
    image.save(buffer, fmt)
    return buffer.getvalue()


def make_library(data_dir: Path, originals: int = 30, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    images = data_dir / "images"
    images.mkdir(parents=True, exist_ok=True)
    names = [f"original_{i:03d}.jpg" for i in range(originals)]
    for name in names:
        (images / name).write_bytes(synthetic_image(rng, size=(320, 240)))
    (data_dir / "original_filenames.txt").write_text("".join(f"{name}\n" for name in names))
    return names


def rss_mib(pid: int) -> float:
    return proc_status_mb(pid)["rss_mb"]


def start_server(data_dir: Path, model: str, timeout: float = 300) -> ServerProcess:
    """`python app.py` on the library, returned once its startup indexing is done."""
    server = ServerProcess([sys.executable, str(PROJECT_DIR / "app.py")],
                           {"IMAGE_SEARCH_DATA_DIR": str(data_dir), "IMAGE_SEARCH_MODEL": model},
                           data_dir / "server.log", "/api/status").start(timeout)
    deadline = time.monotonic() + timeout
    while requests.get(server.url + "/api/status", timeout=5).json()["startup"]["state"] != "ready":
        if time.monotonic() > deadline:
            server.stop()
            raise RuntimeError("the server did not finish indexing its library")
        time.sleep(0.3)
    return server


@dataclasses.dataclass
class SoakReport:
    seconds: float
    clients: int
    requests: int
    errors: int
    error_samples: list[str]
    operations: dict[str, int]
    latency_ms: dict[str, float]
    rss_mib: dict[str, float]
    rss_timeline: list[tuple[int, float]]  # (second, MiB) about every tenth of the run

    def summary(self) -> str:
        lat, rss = self.latency_ms, self.rss_mib
        return (f"{self.requests} requests from {self.clients} clients in {self.seconds:.0f} s "
                f"({self.requests / self.seconds:.1f}/s), {self.errors} errors\n"
                f"latency ms: p50 {lat['p50']:.1f}, p99 {lat['p99']:.1f}, max {lat['max']:.1f}\n"
                f"server RSS MiB: idle {rss['idle']:.0f}, after warm-up {rss['warm']:.0f}, "
                f"peak {rss['peak']:.0f}, end {rss['end']:.0f}\n"
                f"RSS timeline (s: MiB): {', '.join(f'{t}: {m:.0f}' for t, m in self.rss_timeline)}")


class Recorder:
    def __init__(self):
        self.lock = threading.Lock()
        self.latencies: list[float] = []
        self.operations: collections.Counter = collections.Counter()
        self.errors: list[str] = []

    def record(self, operation: str, seconds: float, error: str | None) -> None:
        with self.lock:
            self.latencies.append(seconds)
            self.operations[operation] += 1
            if error:
                self.errors.append(f"{operation}: {error}")


class SoakClient(threading.Thread):
    def __init__(self, number: int, base: str, originals: list[str], recorder: Recorder, stop: threading.Event):
        super().__init__(name=f"soak-client-{number}", daemon=True)
        self.number, self.base, self.originals = number, base, originals
        self.recorder, self.stop = recorder, stop
        self.rng = random.Random(number)
        self.http = requests.Session()
        self.own: list[str] = []  # this client's uploads: only it deletes them, so its requests never race

    def run(self) -> None:
        names, weights = zip(*WEIGHTS.items())
        while not self.stop.is_set():
            operation = self.rng.choices(names, weights)[0]
            started = time.perf_counter()
            try:
                error = getattr(self, operation)()
            except requests.RequestException as exc:
                error = f"{type(exc).__name__}: {exc}"
            self.recorder.record(operation, time.perf_counter() - started, error)

    @staticmethod
    def _check(response: requests.Response) -> str | None:
        return None if response.ok else f"HTTP {response.status_code} {response.text[:200]}"

    def _known_image(self) -> str:
        return self.rng.choice(self.own) if self.own and self.rng.random() < 0.3 else self.rng.choice(self.originals)

    def search_file(self):
        files = {"file": ("query.jpg", synthetic_image(self.rng))}
        return self._check(self.http.post(self.base + "/api/search", files=files, data={"k": "8"}, timeout=120))

    def search_name(self):
        body = {"filename": self._known_image(), "k": 8}
        return self._check(self.http.post(self.base + "/api/search", json=body, timeout=120))

    def upload(self):
        response = self.http.post(self.base + "/api/upload-image", timeout=120,
                                  files={"file": (f"soak{self.number}.jpg", synthetic_image(self.rng))})
        if not response.ok:
            return self._check(response)
        self.own.append(response.json()["filename"])
        if len(self.own) > MAX_OWN_UPLOADS:
            oldest = self.own.pop(0)
            return self._check(self.http.delete(f"{self.base}/api/delete-image/{oldest}", timeout=120))
        return None

    def list(self):
        return self._check(self.http.get(self.base + "/api/images", timeout=120))

    def status(self):
        return self._check(self.http.get(self.base + "/api/status", timeout=120))

    def thumbnail(self):
        return self._check(self.http.get(f"{self.base}/images/thumb/{self._known_image()}", timeout=120))

    def image(self):
        return self._check(self.http.get(f"{self.base}/images/{self._known_image()}", timeout=120))

    def generate(self):
        with self.http.post(self.base + "/api/generate-features", stream=True, timeout=300) as response:
            if response.status_code == 429:  # every progress stream slot is taken; the job goes on
                return None
            if not response.ok:
                return self._check(response)
            events = [json.loads(line[6:]) for line in response.iter_lines() if line.startswith(b"data: ")]
        return None if events and events[-1].get("complete") else f"stream ended with {events[-1:]}"


def run_soak(base: str, pid: int, originals: list[str], seconds: float, clients: int = 16,
             warmup: float | None = None) -> SoakReport:
    """Run the workload against a server already listening at `base` (process `pid`)."""
    warmup = min(60.0, seconds / 10) if warmup is None else warmup
    recorder, stop = Recorder(), threading.Event()
    rss = {"idle": rss_mib(pid)}
    workers = [SoakClient(n, base, originals, recorder, stop) for n in range(clients)]
    started = time.monotonic()
    for worker in workers:
        worker.start()
    peak, timeline = rss["idle"], []
    while (elapsed := time.monotonic() - started) < seconds:
        time.sleep(min(1.0, seconds - elapsed))
        now, elapsed = rss_mib(pid), time.monotonic() - started
        peak = max(peak, now)
        if not timeline or elapsed - timeline[-1][0] >= seconds / 10:
            timeline.append((round(elapsed), now))
        if "warm" not in rss and elapsed >= warmup:
            rss["warm"] = now
    stop.set()
    for worker in workers:
        worker.join(300)
    duration = time.monotonic() - started
    rss.setdefault("warm", peak)
    rss["end"] = rss_mib(pid)
    rss["peak"] = max(peak, rss["end"])
    latencies = np.array(recorder.latencies or [0.0]) * 1000
    return SoakReport(
        seconds=duration, clients=clients, requests=len(recorder.latencies), errors=len(recorder.errors),
        error_samples=recorder.errors[:20], operations=dict(recorder.operations),
        latency_ms={"p50": float(np.percentile(latencies, 50)), "p99": float(np.percentile(latencies, 99)),
                    "max": float(latencies.max())},
        rss_mib=rss, rss_timeline=timeline,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=600, help="how long the clients run (default 600)")
    parser.add_argument("--clients", type=int, default=16, help="concurrent clients (default 16)")
    parser.add_argument("--model", default="efficientnet-lite0", help="IMAGE_SEARCH_MODEL of the server")
    parser.add_argument("--originals", type=int, default=30, help="generated originals in the library")
    parser.add_argument("--json", type=Path, help="also write the report here as JSON")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="soak-") as folder:
        data_dir = Path(folder)
        originals = make_library(data_dir, args.originals)
        server = start_server(data_dir, args.model)
        try:
            report = run_soak(server.url, server.process.pid, originals, args.seconds, args.clients)
        finally:
            server.stop()
        tracebacks = (data_dir / "server.log").read_text(errors="replace").count("Traceback")
    print(report.summary())
    print(f"operations: {report.operations}; tracebacks in the server log: {tracebacks}")
    for sample in report.error_samples:
        print("error:", sample)
    if args.json:
        args.json.write_text(json.dumps({**dataclasses.asdict(report), "model": args.model,
                                         "server_tracebacks": tracebacks}, indent=2))
    return 1 if report.errors or tracebacks else 0


if __name__ == "__main__":
    sys.exit(main())
