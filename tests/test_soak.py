"""A short run of bench/soak.py: 16 clients, mixed operations, one real server; no errors, memory levels off.

`IMAGE_SEARCH_SOAK_SECONDS` sets how long (default 30); `python -m bench.soak` runs the full ten minutes.
"""
from __future__ import annotations

import os

import pytest

from bench.soak import make_library, run_soak
from conftest import LiveServer

# Slow: real server processes (or the browser, or the benchmark run); `make test-fast` leaves these out.
pytestmark = pytest.mark.slow

SECONDS = float(os.environ.get("IMAGE_SEARCH_SOAK_SECONDS", "30"))
WARMUP = SECONDS / 3


@pytest.mark.timeout(SECONDS + 300)
def test_soak_has_no_errors_and_no_memory_growth(tmp_path):
    data_dir = tmp_path / "data"
    originals = make_library(data_dir, originals=12)
    server = LiveServer(data_dir, {"IMAGE_SEARCH_MODEL": "color"}).start()
    try:
        report = run_soak(server.url, server.process.pid, originals, SECONDS, clients=16, warmup=WARMUP)
    finally:
        server.stop()
    print(report.summary())
    assert report.errors == 0, report.error_samples
    assert report.requests > 16 and report.operations.keys() >= {"search_file", "search_name", "upload"}
    assert "Traceback" not in server.output()
    # After warm-up the caches, arenas and thread pools are full; a leak per request would keep RSS climbing
    # with thousands of requests. The margin allows for allocator noise, not for growth with the request count.
    assert report.rss_mib["end"] <= report.rss_mib["warm"] * 1.25 + 32, report.rss_mib
