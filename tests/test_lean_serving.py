"""Once `imgsearch prepare` has cached the graphs, servers and commands run without loading TensorFlow.

Every process here is real: `python -m imgsearch ...` and `python app.py`. Whether TensorFlow was loaded is read
from the server's memory map (/proc/<pid>/maps), where its native library would show. No network is used:
the ImageNet weights' origin is reached through a proxy address where nothing listens.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from conftest import PROJECT_DIR, LiveServer, make_image

# Slow: real server processes; `make test-fast` leaves these out.
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="reads /proc/<pid>/maps (Linux)")]

TENSORFLOW_NOISE = ("oneDNN custom operations", "absl::InitializeLog", "cpu_feature_guard")
# The variant the settings may make the default (several scales, mirrored too) must serve lean as well.
VARIANT = {"IMAGE_SEARCH_FEATURE_SCALES": "160,224", "IMAGE_SEARCH_FLIP_AVERAGE": "1"}
OFFLINE = {"HTTPS_PROXY": "http://127.0.0.1:9", "HTTP_PROXY": "http://127.0.0.1:9"}


@pytest.fixture(scope="module")
def lean_env(tmp_path_factory) -> dict[str, str]:
    folder = tmp_path_factory.mktemp("lean")
    return {"IMAGE_SEARCH_CACHE_DIR": str(folder / "cache"), "KERAS_HOME": str(folder / "empty-keras-home"),
            **OFFLINE, **VARIANT}


def imgsearch_command(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "imgsearch", *args], cwd=PROJECT_DIR, env={**os.environ, **env},
                          capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def prepared(lean_env) -> subprocess.CompletedProcess:
    completed = imgsearch_command("prepare", "--engine", "efficientnet-lite0", "--engine", "mobilenetv2",
                                  "--weights", "random", env=lean_env)
    assert completed.returncode == 0, completed.stderr
    return completed


def tensorflow_is_loaded(pid: int) -> bool:
    return "libtensorflow" in Path(f"/proc/{pid}/maps").read_text()


def test_prepare_exports_and_checks_each_engine_once_and_quietly(prepared, lean_env):
    assert "efficientnet-lite0: efficientnet-lite0-imagenet-s160+224-flip-cosine runs on onnxruntime" in prepared.stdout
    assert "mobilenetv2: mobilenetv2-random-cosine runs on onnxruntime" in prepared.stdout
    assert "tags: imagenet-tags-lite0-top20-p0.005-tags runs on onnxruntime" in prepared.stdout
    assert len(list((Path(lean_env["IMAGE_SEARCH_CACHE_DIR"]) / "onnx").glob("*.onnx"))) == 3  # and the tagger
    assert not [noise for noise in TENSORFLOW_NOISE if noise in prepared.stderr], prepared.stderr


@pytest.mark.parametrize("engine, expected", [
    (None, ("efficientnet-lite0", "onnxruntime", True)),  # the default: resnet50, whose weights are missing
    ("mobilenetv2", ("mobilenetv2", "onnxruntime", False)),
    ("color", ("color", "numpy", False)),
], ids=["default-start", "mobilenetv2", "color"])
def test_servers_run_without_tensorflow(prepared, lean_env, data_dir, engine, expected):
    env = {**lean_env, "IMAGE_SEARCH_MODEL": engine or "", "IMAGE_SEARCH_WEIGHTS": "random" if engine else ""}
    server = LiveServer(data_dir, env).start()
    try:
        status = requests.get(server.url + "/api/status", timeout=10).json()
        assert (status["model"], status["runtime"], status["fallback"]) == expected
        assert not tensorflow_is_loaded(server.process.pid)
        results = requests.post(server.url + "/api/search", files={"file": ("q.png", make_image("red"))},
                                timeout=60).json()["results"]
        assert len(results) == 6
        assert not tensorflow_is_loaded(server.process.pid)
    finally:
        server.stop()
    if engine is None:
        assert "resnet50" in status["fallback_reason"] and "Falling back" in server.output()


def failure_record(env: dict[str, str]) -> Path:
    return Path(env["IMAGE_SEARCH_CACHE_DIR"]) / "failed-downloads" / "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5.json"


def test_the_cli_tries_the_missing_weights_once_a_day_unless_asked(prepared, lean_env, tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "red.png").write_bytes(make_image("red"))
    shutil.rmtree(failure_record(lean_env).parent, ignore_errors=True)

    first = imgsearch_command("index", str(photos), env=lean_env)
    assert first.returncode == 0, first.stderr
    assert "could not be downloaded" in first.stderr and "Falling back" in first.stderr
    tried = json.loads(failure_record(lean_env).read_text())["failed_at"]

    again = imgsearch_command("index", str(photos), env=lean_env)
    assert again.returncode == 0 and "The download is tried again a day later" in again.stderr
    assert json.loads(failure_record(lean_env).read_text())["failed_at"] == tried

    retried = imgsearch_command("prepare", "--retry-download", env=lean_env)
    assert retried.returncode == 0, retried.stderr
    assert "resnet50: efficientnet-lite0-imagenet-s160+224-flip-cosine runs on onnxruntime, standing in" in retried.stdout
    assert json.loads(failure_record(lean_env).read_text())["failed_at"] > tried


def test_the_app_refuses_bad_engine_options_in_one_line(data_dir):
    completed = subprocess.run([sys.executable, str(PROJECT_DIR / "app.py")], cwd=PROJECT_DIR, timeout=60,
                               env={**os.environ, "IMAGE_SEARCH_DATA_DIR": str(data_dir),
                                    "IMAGE_SEARCH_MODEL": "resnet5"}, capture_output=True, text=True)
    assert completed.returncode == 2
    assert "IMAGE_SEARCH_MODEL: unknown engine 'resnet5'" in completed.stderr.splitlines()[-1]
    assert "Traceback" not in completed.stderr


def test_tensorflow_start_up_messages_show_at_debug_level():
    script = ("import logging; logging.basicConfig(level=logging.DEBUG); "
              "from imgsearch.engines.runtime import import_tensorflow; import_tensorflow()")
    completed = subprocess.run([sys.executable, "-c", script], cwd=PROJECT_DIR, capture_output=True, text=True,
                               timeout=120, env={k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"})
    assert completed.returncode == 0, completed.stderr
    assert "oneDNN custom operations" in completed.stderr
