"""The performance suite and the candidate comparison still run end to end. Their numbers are never checked
here: only that they complete.

Quick mode takes about two minutes on 2 cores, so this runs the suite's smaller --smoke mode.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from conftest import PROJECT_DIR

# Slow: real server processes (or the browser, or the benchmark run); `make test-fast` leaves these out.
pytestmark = pytest.mark.slow

SECTIONS = {"extraction", "search", "http", "startup_memory", "lean", "catalogue"}
ROW_KEYS = {"section", "metric", "unit", "ours", "baseline", "speedup", "higher_is_better", "target", "target_met"}


def test_smoke_run_writes_every_section(tmp_path, cache_dir):
    output = tmp_path / "results.json"
    env = {**os.environ, "IMAGE_SEARCH_CACHE_DIR": str(cache_dir)}
    completed = subprocess.run([sys.executable, str(PROJECT_DIR / "bench" / "run.py"), "--smoke", "--output", str(output)],
                               cwd=PROJECT_DIR, env=env, capture_output=True, text=True, timeout=480)
    assert completed.returncode == 0, completed.stderr[-3000:]
    results = json.loads(output.read_text())
    assert results["mode"] == "smoke"
    assert set(results["sections"]) == SECTIONS
    assert {"cpu", "cores", "peak_fp32_gflop_s"} <= set(results["machine"])
    assert {row["section"] for row in results["rows"]} == {"extraction", "search", "http", "startup", "memory", "lean",
                                                          "catalogue"}
    for row in results["rows"]:
        assert ROW_KEYS <= set(row)
    assert "seed-style" in completed.stdout


def test_candidate_configurations_are_built_as_the_settings_would_build_them(tmp_path, cache_dir):
    output = tmp_path / "candidates.json"
    env = {**os.environ, "IMAGE_SEARCH_CACHE_DIR": str(cache_dir)}
    completed = subprocess.run(
        [sys.executable, "-m", "bench.candidates", "efficientnet-lite0", "efficientnet-lite0@160,224+flip",
         "--photos", "2", "--rounds", "1", "--output", str(output)],
        cwd=PROJECT_DIR, env=env, capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr[-3000:]
    first, second = json.loads(output.read_text())
    assert first["model_id"] == "efficientnet-lite0-imagenet-cosine" and first["vs_first"] == 1.0
    assert second["model_id"] == "efficientnet-lite0-imagenet-s160+224-flip-cosine"
    assert second["runtime"] == "onnxruntime" and second["end_to_end_img_s"] > 0 and second["cpu_ms_per_image"] > 0
    assert "| efficientnet-lite0@160,224+flip | onnxruntime |" in completed.stdout
