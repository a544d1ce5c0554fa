"""Shared pieces of the benchmarks: generated photos and vectors, timing, memory, result rows, servers."""
from __future__ import annotations

import datetime
import hashlib
import io
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np
import requests
from PIL import Image, ImageDraw, ImageFilter

if TYPE_CHECKING:
    from imgsearch.catalogue import ImageRecord

PROJECT_DIR = Path(__file__).resolve().parent.parent
JPEG_QUALITY = 90
# Long side x short side of the generated photos, from a small web image to a 12-megapixel camera.
PHOTO_SIZES = ((640, 480), (1024, 768), (1600, 1200), (2048, 1536), (3000, 2000), (4000, 3000))


# ----- generated inputs ------------------------------------------------------------------------

def photo_like(rng: np.random.Generator, width: int, height: int) -> Image.Image:
    """A deterministic picture with what makes JPEGs of photos costly: smooth light, edges and grain."""
    corners = rng.integers(0, 256, (2, 2, 3)).astype(np.float32)
    ys = np.linspace(0.0, 1.0, height, dtype=np.float32)[:, None, None]
    xs = np.linspace(0.0, 1.0, width, dtype=np.float32)[None, :, None]
    top = corners[0, 0] * (1 - xs) + corners[0, 1] * xs
    bottom = corners[1, 0] * (1 - xs) + corners[1, 1] * xs
    image = Image.fromarray((top * (1 - ys) + bottom * ys).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(6, 14))):
        x0, x1 = sorted(rng.integers(0, width, 2))
        y0, y1 = sorted(rng.integers(0, height, 2))
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        if rng.random() < 0.5:
            draw.ellipse((x0, y0, x1 + 8, y1 + 8), fill=colour)
        else:
            points = [tuple(int(v) for v in p) for p in rng.integers(0, (width, height), (5, 2))]
            draw.polygon(points, fill=colour)
    image = image.filter(ImageFilter.GaussianBlur(radius=max(1.0, width / 800)))
    grain = rng.normal(0.0, 6.0, (height, width, 1)).astype(np.float32)
    return Image.fromarray(np.clip(np.asarray(image, np.float32) + grain, 0, 255).astype(np.uint8))


def jpeg_bytes(image: Image.Image, quality: int = JPEG_QUALITY) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


def write_photos(directory: Path, count: int, seed: int = 0) -> list[Path]:
    """`count` JPEGs cycling through PHOTO_SIZES, every other one portrait; the same files for the same seed."""
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(count):
        long_side, short_side = PHOTO_SIZES[i % len(PHOTO_SIZES)]
        width, height = (long_side, short_side) if i % 2 == 0 else (short_side, long_side)
        path = directory / f"photo_{i:04d}_{width}x{height}.jpg"
        path.write_bytes(jpeg_bytes(photo_like(rng, width, height)))
        paths.append(path)
    return paths


def query_jpeg(seed: int = 12345, width: int = 1024, height: int = 768) -> bytes:
    return jpeg_bytes(photo_like(np.random.default_rng(seed), width, height))


def synthetic_vectors(n: int, dim: int, seed: int = 0, chunk: int = 65_536) -> np.ndarray:
    """(n, dim) float32, non-negative like pooled ReLU features, not normalised; built in chunks to spare memory."""
    rng = np.random.default_rng(seed)
    matrix = np.empty((n, dim), np.float32)
    for start in range(0, n, chunk):
        block = matrix[start:start + chunk]
        rng.random(block.shape, dtype=np.float32, out=block)
        block *= block  # skewed towards zero, as sparse activations are
    return matrix


def normalise_rows_in_place(matrix: np.ndarray, chunk: int = 65_536) -> np.ndarray:
    for start in range(0, len(matrix), chunk):
        block = matrix[start:start + chunk]
        block /= np.maximum(np.linalg.norm(block, axis=1, keepdims=True), 1e-12)
    return matrix


# ----- timing ----------------------------------------------------------------------------------

def repeat_timed(function: Callable[[], object], times: int) -> list[float]:
    """Seconds per call, `times` calls."""
    samples = []
    for _ in range(times):
        start = time.perf_counter()
        function()
        samples.append(time.perf_counter() - start)
    return samples


def latency_summary(seconds: list[float]) -> dict:
    """p50/p99/mean in milliseconds."""
    ms = np.asarray(seconds) * 1000.0
    return {"p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99)),
            "mean_ms": float(ms.mean()), "samples": len(ms)}


def median(values) -> float:
    return float(statistics.median(values))


def peak_gflops(size: int = 3072, repeats: int = 5) -> float:
    """The machine's float32 matrix-multiply rate (best of several), the ceiling for a CNN on this CPU."""
    rng = np.random.default_rng(0)
    a = rng.random((size, size), dtype=np.float32)
    b = rng.random((size, size), dtype=np.float32)
    a @ b
    best = min(repeat_timed(lambda: a @ b, repeats))
    return 2.0 * size ** 3 / best / 1e9


def count_macs(model) -> int:
    """Multiply-accumulates of one image through a Keras model's convolution and dense layers."""
    import keras

    macs = 0
    for layer in model.layers:
        if isinstance(layer, keras.layers.DepthwiseConv2D):
            _, h, w, channels = layer.output.shape
            kh, kw = layer.kernel_size
            macs += h * w * channels * kh * kw
        elif isinstance(layer, keras.layers.Conv2D):
            _, h, w, filters = layer.output.shape
            kh, kw = layer.kernel_size
            macs += h * w * filters * kh * kw * layer.input.shape[-1] // layer.groups
        elif isinstance(layer, keras.layers.Dense):
            macs += layer.input.shape[-1] * layer.units
    return int(macs)


# ----- memory ----------------------------------------------------------------------------------

def proc_status_mb(pid: int | str = "self") -> dict:
    """Resident memory now and its peak (VmRSS, VmHWM) in MiB, from /proc."""
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = int(rest.split()[0]) / 1024.0
    return {"rss_mb": values.get("VmRSS", 0.0), "peak_rss_mb": values.get("VmHWM", 0.0)}


def proc_write_bytes(pid: int | str = "self") -> int:
    """Bytes the process has sent towards the disk so far (counted when it dirties pages), from /proc."""
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        if line.startswith("write_bytes:"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/{pid}/io has no write_bytes")


def available_memory_bytes() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return 0


# ----- results ---------------------------------------------------------------------------------

def result_row(section: str, metric: str, unit: str, ours: float | None, baseline: float | None,
               higher_is_better: bool, target: str = "", met: bool | None = None, **details) -> dict:
    """One line of the table; `speedup` > 1 means ours is better than the seed-style baseline."""
    speedup = None
    if ours and baseline:
        speedup = ours / baseline if higher_is_better else baseline / ours
    return {"section": section, "metric": metric, "unit": unit, "ours": ours, "baseline": baseline,
            "speedup": speedup, "higher_is_better": higher_is_better, "target": target, "target_met": met,
            "details": details}


def machine_info() -> dict:
    from imgsearch.engines.runtime import import_tensorflow

    tf = import_tensorflow()  # its start-up messages kept off the table's terminal, as in the app

    model_name = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                       if line.startswith("model name")), platform.processor())
    return {"cpu": model_name, "cores": os.cpu_count(), "python": platform.python_version(),
            "tensorflow": tf.__version__, "numpy": np.__version__,
            "date": datetime.date.today().isoformat(),
            "load_average_at_start": os.getloadavg()}


# ----- servers ---------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ServerProcess:
    """A server command run as its own process on a free loopback port, polled until it answers."""

    def __init__(self, command: list[str], env: dict[str, str], log_path: Path, ready_path: str,
                 ready: Callable[[requests.Response], bool] = lambda response: response.status_code == 200,
                 cwd: Path = PROJECT_DIR):
        self.port = free_port()
        self.cwd = cwd
        self.url = f"http://127.0.0.1:{self.port}"
        self.command = [*command, "--port", str(self.port)]
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", **env}
        self.log_path = log_path
        self.ready_path = ready_path
        self.ready = ready
        self.process: subprocess.Popen | None = None
        self.seconds_to_first_answer: float | None = None

    def start(self, timeout: float = 300.0) -> "ServerProcess":
        """Start and wait for the first ready answer; records the seconds from process start to it."""
        self._log = open(self.log_path, "ab")
        started = time.perf_counter()
        self.process = subprocess.Popen(self.command, cwd=self.cwd, env=self.env,
                                        stdout=self._log, stderr=subprocess.STDOUT)
        deadline = started + timeout
        while time.perf_counter() < deadline:
            if self.process.poll() is not None:
                self.stop()  # closes the log
                raise RuntimeError(f"server exited with {self.process.returncode}:\n{self.output()[-3000:]}")
            try:
                if self.ready(requests.get(self.url + self.ready_path, timeout=5)):
                    self.seconds_to_first_answer = time.perf_counter() - started
                    return self
            except (requests.RequestException, ValueError):  # not listening yet, or not JSON yet
                pass
            time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"server did not answer within {timeout:.0f} s:\n{self.output()[-3000:]}")

    def memory(self) -> dict:
        return proc_status_mb(self.process.pid)

    def write_bytes(self) -> int:
        return proc_write_bytes(self.process.pid)

    def output(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if getattr(self, "_log", None):
            self._log.close()

    def __enter__(self) -> "ServerProcess":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def postgres_binaries() -> Path | None:
    """The folder of Debian's PostgreSQL server programs (initdb, pg_ctl), or None when not installed."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"), key=lambda p: int(p.parent.parent.name))
    return found[-1].parent if found else None


class PostgresServer:
    """A throwaway PostgreSQL server on a free loopback port, its data in a temporary folder.

    The server refuses to run as root, so under root it runs as `nobody`. It trusts local connections and
    does not sync its files: it is for tests and benchmarks, where the app's processes are what get killed.
    """

    def __init__(self, binaries: Path, user: str = "nobody"):
        self.binaries = binaries
        self.port = free_port()
        self.root = Path(tempfile.mkdtemp(prefix="imgsearch-postgres-"))
        self.data = self.root / "data"
        self.run_as = ["runuser", "-u", user, "--"] if os.geteuid() == 0 else []
        if self.run_as:
            shutil.chown(self.root, user)
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}"

    def _run(self, program: str, *args: str) -> None:
        subprocess.run([*self.run_as, str(self.binaries / program), *args], check=True, capture_output=True,
                       cwd=self.root, timeout=120)

    def start(self) -> "PostgresServer":
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "-A", "trust", "--no-sync")
        options = (f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off "
                   "-c synchronous_commit=off -c full_page_writes=off -c max_connections=200")
        self._run("pg_ctl", "-D", str(self.data), "-o", options, "-l", str(self.root / "server.log"), "-w", "start")
        return self

    def create_database(self) -> str:
        """A new empty database; returns its URL."""
        import psycopg

        name = f"imgsearch_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.url + "/postgres", autocommit=True) as connection:
            connection.execute(f'CREATE DATABASE "{name}"')
        return f"{self.url}/{name}"

    def stop(self) -> None:
        try:
            self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "stop")
        except subprocess.CalledProcessError:
            pass
        shutil.rmtree(self.root, ignore_errors=True)


def app_env(model: str, extra_env: dict[str, str] | None = None) -> dict[str, str]:
    """The settings the benchmarks serve `model` with: Keras networks on random weights."""
    env = {"IMAGE_SEARCH_MODEL": model, "IMAGE_SEARCH_LOG_LEVEL": "WARNING", **(extra_env or {})}
    if model in ("resnet50", "vgg16", "mobilenetv2"):
        env["IMAGE_SEARCH_WEIGHTS"] = "random"
    return env


def app_server(data_dir: Path, model: str, log_path: Path, dev: bool = False, threads: int | None = None,
               extra_env: dict[str, str] | None = None) -> ServerProcess:
    """`python app.py` (waitress) or `python app.py --dev` on the given data folder."""
    command = [sys.executable, str(PROJECT_DIR / "app.py")]
    if dev:
        command.append("--dev")
    if threads:
        command += ["--threads", str(threads)]
    env = {"IMAGE_SEARCH_DATA_DIR": str(data_dir), **app_env(model, extra_env)}
    return ServerProcess(command, env, log_path, "/api/check-features")


def prepare_graphs(env: dict[str, str]) -> float:
    """Seconds `python -m imgsearch prepare` takes to export (or find) the graph the settings in `env` use."""
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "imgsearch", "prepare"], cwd=PROJECT_DIR, env={**os.environ, **env},
                   check=True, capture_output=True)
    return time.perf_counter() - start


def seed_server(data_dir: Path, model: str, log_path: Path) -> ServerProcess:
    """The seed-style app (bench/seed_baseline.py) on the same kind of data folder."""
    command = [sys.executable, "-m", "bench.seed_baseline", "--data-dir", str(data_dir), "--model", model]
    return ServerProcess(command, {}, log_path, "/api/check-features")


# ----- prefilled libraries -----------------------------------------------------------------------

def model_id_and_dim(model: str) -> tuple[str, int]:
    """The feature-space id and dimension the app will use for `model`, without loading it."""
    from imgsearch.config import Settings

    if model.startswith("efficientnet-lite"):
        from imgsearch.engines import build_engine

        engine = build_engine(model, Settings.from_env())  # with the scales the settings give it
    else:
        from imgsearch.engines.keras_cnn import KerasApplicationEngine

        engine = KerasApplicationEngine(model, "random")
    return engine.model_id, engine.dim


def placeholder_images(images_dir: Path, count: int) -> tuple[list[str], list[ImageRecord]]:
    """`count` tiny JPEGs, each with different bytes (a numbered comment), and the catalogue rows that describe
    them as if each had been read once: stamp, SHA-256, type and date. Returns (names, rows)."""
    from imgsearch.catalogue import ImageRecord

    images_dir.mkdir(parents=True, exist_ok=True)
    placeholder = jpeg_bytes(Image.new("RGB", (16, 16), (120, 130, 140)), quality=75)
    names, records = [], []
    for i in range(count):
        name = f"user_{i:07d}.jpg"
        comment = name.encode()
        # A JPEG comment segment (FF FE, length) right after the start-of-image marker.
        data = placeholder[:2] + b"\xff\xfe" + (len(comment) + 2).to_bytes(2, "big") + comment + placeholder[2:]
        path = images_dir / name
        path.write_bytes(data)
        info = path.stat()
        taken_at = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(info.st_mtime))
        names.append(name)
        records.append(ImageRecord(name, False, info.st_size, info.st_mtime_ns, hashlib.sha256(data).hexdigest(),
                                   None, taken_at, "jpg"))
    return names, records


def link_images(source: Path, target: Path) -> None:
    """Hard-link every file of `source` into `target`: the same files (and stamps) in another data folder."""
    target.mkdir(parents=True, exist_ok=True)
    for entry in os.scandir(source):
        os.link(entry.path, target / entry.name)


def poll_until(check: Callable[[], object], what: str, patience: float):
    """Call `check()` every 0.1 s until it returns something truthy, and return that; after `patience`
    seconds raise TimeoutError naming `what`. It bounds a wait; it times nothing."""
    deadline = time.monotonic() + patience
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise TimeoutError(f"not within {patience:.0f} s: {what}")
        time.sleep(0.1)


def fill_catalogue(url: str, records: list[ImageRecord], spaces: dict[str, np.ndarray], chunk: int = 8192) -> None:
    """Write image rows and their vectors in each feature space (model id -> one row per record) into the
    catalogue at `url`, a few thousand images per transaction."""
    from imgsearch.catalogue import Catalogue

    catalogue = Catalogue(url).open()
    try:
        for start in range(0, len(records), chunk):
            rows = records[start:start + chunk]
            with catalogue.write() as write:
                write.put_records(rows)
                for model_id, vectors in spaces.items():
                    write.put_vectors(model_id, [r.name for r in rows], vectors[start:start + chunk],
                                      [r.stamp for r in rows])
    finally:
        catalogue.close()


def synthetic_tags(count: int, seed: int = 0) -> tuple[str, np.ndarray]:
    """The tagger's feature-space id and `count` tag vectors packed as it packs them, from random class
    probabilities: a library whose tagging is done, as it is once the app has indexed it."""
    from imgsearch.config import Settings
    from imgsearch.engines.tagger import ImageNetTagger
    from imgsearch.tagging import top_tags

    tagger = ImageNetTagger(Settings.from_env().cache_dir)
    logits = np.random.default_rng(seed).normal(0, 3, (count, 1000)).astype(np.float32)
    probabilities = np.exp(logits - logits.max(axis=1, keepdims=True))
    classes, kept = top_tags(probabilities / probabilities.sum(axis=1, keepdims=True))
    return tagger.model_id, np.concatenate([classes.astype(np.float32), kept], axis=1)


def prefill_library(data_dir: Path, model: str, count: int, seed: int = 0) -> dict:
    """A data folder whose catalogue already holds `count` user images with vectors, for the app and for
    the seed-style app.

    Each vector gets a tiny real JPEG file so the app's startup check finds every image present and
    unchanged. The app's catalogue (`catalogue.db`) gets the normalised vectors, and tags unless the
    settings turn tagging off; the seed-style app gets the same vectors raw, as `features.npy` and
    `filenames.npy`.
    """
    from imgsearch.catalogue import database_url
    from imgsearch.config import Settings

    model_id, dim = model_id_and_dim(model)
    names, records = placeholder_images(data_dir / "images", count)
    vectors = synthetic_vectors(count, dim, seed)
    np.save(data_dir / "features.npy", vectors)
    np.save(data_dir / "filenames.npy", np.array(names))
    spaces = {model_id: normalise_rows_in_place(vectors)}
    if Settings.from_env().tag_images:
        tags_id, tags = synthetic_tags(count, seed)
        spaces[tags_id] = tags
    fill_catalogue(database_url("", data_dir), records, spaces)
    return {"model_id": model_id, "dim": dim, "count": count, "matrix_bytes": count * dim * 4}
