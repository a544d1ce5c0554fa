"""Hostile requests that aim at the server's resources (files, CPU, memory, threads), against real `python app.py`.

For each: the request is answered or refused within a bound (the client timeouts), the server's memory stays
within the budget SECURITY.md documents (VmHWM of the server process, its peak reset before the request), and
ordinary requests keep being answered meanwhile. Every crafted file is made here, in the test.
"""
from __future__ import annotations

import contextlib
import http.server
import os
from pathlib import Path

import pytest
import requests

from conftest import LiveServer, loopback_server
from test_hostile import COLOR, assert_json_error, new_library

MiB = 1024 * 1024


def reset_peak(server: LiveServer) -> None:
    """Start measuring the server's peak memory (VmHWM) from now."""
    Path(f"/proc/{server.process.pid}/clear_refs").write_text("5")


def peak_mb(server: LiveServer) -> float:
    return server.memory()["peak_rss_mb"]


def still_serving(server: LiveServer) -> None:
    response = requests.get(server.url + "/api/images", timeout=10)
    assert response.status_code == 200 and "red_circle.png" in response.json()["images"]


@contextlib.contextmanager
def running(data_dir: Path, env: dict[str, str]):
    server = LiveServer(data_dir, {**COLOR, **env}).start()
    try:
        yield server
    finally:
        server.stop()
    assert "Traceback" not in server.output(), server.output()


# ----- the `engine` field names only what the server offers -----------------------------------------------------

class OutboundRecorder(http.server.BaseHTTPRequestHandler):
    """Stands in for a proxy: any download the server tried would arrive here."""

    seen: list[str] = []

    def do_GET(self):
        type(self).seen.append(self.path)
        self.send_error(502)

    do_CONNECT = do_GET

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def engine_server(tmp_path_factory):
    root = tmp_path_factory.mktemp("engines")
    with loopback_server(OutboundRecorder) as proxy:
        env = {"HTTP_PROXY": proxy, "HTTPS_PROXY": proxy, "KERAS_HOME": str(root / "empty-keras-home")}
        with running(new_library(root), env) as server:
            yield server, root


def test_the_engine_field_loads_and_reads_nothing(engine_server):
    server, root = engine_server
    # FIFOs named like model files: opening one for reading would block the request, so a server that
    # tried to load them would not answer in time, and would still hold them open afterwards.
    fifos = [root / "model.keras", root / "weights.h5"]
    for fifo in fifos:
        os.mkfifo(fifo)
    names = ["custom:/etc/shadow", "custom:/etc/passwd", "custom:~/.bashrc", "custom:/no/such/model.keras",
             *(f"custom:{fifo}" for fifo in fifos), "resnet50", "vgg16", "efficientnet-lite0", "nope", "../color"]
    reset_peak(server)
    messages = set()
    for name in names:
        for send in ({"json": {"filename": "red_circle.png", "engine": name}},
                     {"data": {"filename": "red_circle.png", "engine": name}}):
            messages.add(assert_json_error(requests.post(server.url + "/api/search", timeout=30, **send), 400))
    assert len(messages) == 1, messages  # one answer: nothing tells an existing path from a missing one
    assert "color" in messages.pop()
    for fifo in fifos:
        with pytest.raises(OSError):  # ENXIO: no process has the FIFO open for reading
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
    assert OutboundRecorder.seen == []
    assert peak_mb(server) < server.memory()["rss_mb"] + 50  # a model load would add hundreds of MB
    still_serving(server)


@pytest.mark.parametrize("engine", [5, ["color"], {"name": "color"}, True])
def test_an_engine_that_is_not_a_string_is_a_400(engine_server, engine):
    server, _ = engine_server
    response = requests.post(server.url + "/api/search", json={"filename": "red_circle.png", "engine": engine},
                             timeout=30)
    assert "engine must be a string" in assert_json_error(response, 400)


def test_the_active_engine_may_be_named(engine_server):
    server, _ = engine_server
    response = requests.post(server.url + "/api/search", json={"filename": "red_circle.png", "engine": "color"},
                             timeout=30)
    assert response.status_code == 200 and response.json()["model"] == "color"
