"""Search as a user feels it: `POST /api/search` with a 1024 px JPEG against real server processes.

Latency: one client, sequential queries after warm-up, p50 and p99. Ours is `python app.py` (waitress);
the baseline is the seed-style app (bench/seed_baseline.py: load_img, predict, sklearn cosine over the
raw matrix, Flask's development server). Throughput: 8 concurrent clients on loopback against waitress
(`python app.py`) and against Flask's development server (`python app.py --dev`), every answer checked.
"""
from __future__ import annotations

import threading
import time
from pathlib import Path

import requests

from .common import app_server, latency_summary, prefill_library, query_jpeg, result_row, seed_server

TARGET_P50_MS = {"resnet50": 100.0, "efficientnet-lite0": 40.0}
CLIENTS = 8
K = 6


def _search(session: requests.Session, url: str, jpeg: bytes) -> bool:
    response = session.post(url + "/api/search", files={"file": ("query.jpg", jpeg, "image/jpeg")}, timeout=120)
    return response.status_code == 200 and len(response.json()["results"]) == K


def latency(url: str, jpeg: bytes, warm_up: int, queries: int) -> dict:
    with requests.Session() as session:
        for _ in range(warm_up):
            _search(session, url, jpeg)
        seconds, errors = [], 0
        for _ in range(queries):
            start = time.perf_counter()
            errors += not _search(session, url, jpeg)
            seconds.append(time.perf_counter() - start)
    return {**latency_summary(seconds), "errors": errors}


def throughput(url: str, jpeg: bytes, total_requests: int, clients: int = CLIENTS, time_limit: float = 120.0) -> dict:
    """Requests/s with `clients` threads sharing `total_requests`; stops early at `time_limit`."""
    remaining = [total_requests]
    lock = threading.Lock()
    counts = {"ok": 0, "errors": 0}
    deadline = time.perf_counter() + time_limit

    def client() -> None:
        with requests.Session() as session:
            while time.perf_counter() < deadline:
                with lock:
                    if remaining[0] == 0:
                        return
                    remaining[0] -= 1
                try:
                    ok = _search(session, url, jpeg)
                except requests.RequestException:
                    ok = False
                with lock:
                    counts["ok" if ok else "errors"] += 1

    with requests.Session() as session:
        _search(session, url, jpeg)
    threads = [threading.Thread(target=client) for _ in range(clients)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    seconds = time.perf_counter() - start
    done = counts["ok"] + counts["errors"]
    return {"requests_per_s": done / seconds, "requests": done, "errors": counts["errors"], "clients": clients}


def measure_model(model: str, n: int, workdir: Path, queries: int, throughput_requests: int) -> tuple[list[dict], dict]:
    data_dir = workdir / f"http-{model}-{n}"
    prefill_library(data_dir, model, n)
    jpeg = query_jpeg()
    with app_server(data_dir, model, workdir / f"http-{model}-waitress.log") as server:
        ours = latency(server.url, jpeg, warm_up=5, queries=queries)
        waitress = throughput(server.url, jpeg, throughput_requests)
    with seed_server(data_dir, model, workdir / f"http-{model}-seed.log") as server:
        seed = latency(server.url, jpeg, warm_up=3, queries=max(5, queries // 2))
    with app_server(data_dir, model, workdir / f"http-{model}-dev.log", dev=True) as server:
        dev = throughput(server.url, jpeg, throughput_requests)
    target = TARGET_P50_MS.get(model)
    rows = [
        result_row("http", f"{model} POST /api/search p50, N={n:,}", "ms", ours["p50_ms"], seed["p50_ms"],
                   higher_is_better=False, target=f"p50 <= {target:.0f} ms" if target else "",
                   met=(ours["p50_ms"] <= target) if target else None, errors=ours["errors"] + seed["errors"]),
        result_row("http", f"{model} POST /api/search p99, N={n:,}", "ms", ours["p99_ms"], seed["p99_ms"],
                   higher_is_better=False),
        result_row("http", f"{model} searches/s, {CLIENTS} clients, waitress vs --dev", "req/s",
                   waitress["requests_per_s"], dev["requests_per_s"], higher_is_better=True,
                   target="zero errors", met=waitress["errors"] == 0 and dev["errors"] == 0,
                   errors_waitress=waitress["errors"], errors_dev=dev["errors"],
                   note="baseline column: the same app under Flask's development server"),
    ]
    return rows, {"n": n, "ours": ours, "seed": seed, "throughput_waitress": waitress, "throughput_dev": dev}


def run(models: list[str], n: int, workdir: Path, queries: int, throughput_requests: int) -> tuple[list[dict], dict]:
    rows, details = [], {}
    for model in models:
        model_rows, detail = measure_model(model, n, workdir, queries, throughput_requests)
        rows += model_rows
        details[model] = detail
    return rows, details
