"""Hostile requests that aim at the server's resources (files, CPU, memory, threads), against real `python app.py`.

For each: the request is answered or refused within a bound (the client timeouts), the server's memory stays
within the budget SECURITY.md documents (VmHWM of the server process, its peak reset before the request), and
ordinary requests keep being answered meanwhile. Every crafted file is made here, in the test.
"""
from __future__ import annotations

import concurrent.futures
import contextlib
import functools
import http.server
import io
import os
import time
from pathlib import Path

import pytest
import requests
from PIL import Image

from conftest import LiveServer, loopback_server, make_image
from test_hostile import COLOR, assert_json_error, new_library

# Slow: real server processes (or the browser, or the benchmark run); `make test-fast` leaves these out.
pytestmark = pytest.mark.slow

MiB = 1024 * 1024


def reset_peak(server: LiveServer) -> None:
    """Start measuring the server's peak memory (VmHWM) from now."""
    Path(f"/proc/{server.process.pid}/clear_refs").write_text("5")


def peak_mb(server: LiveServer) -> float:
    return server.memory()["peak_rss_mb"]


def server_rss(server: LiveServer) -> float:
    return server.memory()["rss_mb"]


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
    assert peak_mb(server) < server_rss(server) + 50  # a model load would add hundreds of MB
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


# ----- costly images: scan counts, decode memory, decodes at once -----------------------------------------------

@pytest.fixture(scope="module")
def server(tmp_path_factory):
    # Private URLs allowed, so URL search can fetch the crafted files from a loopback server.
    data_dir = new_library(tmp_path_factory.mktemp("resources"))
    with running(data_dir, {"IMAGE_SEARCH_ALLOW_PRIVATE_URLS": "1"}) as live:
        live.data_dir = data_dir
        yield live


def scan_starts(data: bytes) -> tuple[list[int], int]:
    """Offsets of the SOS markers of a JPEG written by Pillow, and the offset of its EOI."""
    starts, position = [], 2
    while data[position] == 0xFF and data[position + 1] != 0xD9:
        code = data[position + 1]
        if code == 0xDA:
            starts.append(position)
            position = data.index(b"\xff", position + 2)
            while data[position + 1] in (0x00, *range(0xD0, 0xD8)):  # stuffed bytes and restart markers
                position = data.index(b"\xff", position + 2)
        else:
            position += 2 + int.from_bytes(data[position + 2:position + 4], "big")
    return starts, position


@functools.cache
def progressive_jpeg(side: int, scans: int) -> bytes:
    """A flat grey progressive JPEG whose last scan (a refinement pass over every block) is repeated."""
    buffer = io.BytesIO()
    Image.new("L", (side, side), 128).save(buffer, "JPEG", progressive=True)
    data = buffer.getvalue()
    starts, end = scan_starts(data)
    return data[:end] + data[starts[-1]:end] * (scans - len(starts)) + b"\xff\xd9"


class FileHandler(http.server.BaseHTTPRequestHandler):
    files: dict[str, bytes] = {}

    def do_GET(self):
        body = self.files.get(self.path, b"")
        self.send_response(200 if body else 404)
        self.send_header("Content-Type", "image/jpeg")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def files_url():
    with loopback_server(FileHandler) as url:
        yield url


def test_a_jpeg_with_thousands_of_scans_is_refused_before_decoding(server, files_url):
    """8000×8000, at the pixel cap, one scan repeated 3,000 times: minutes of CPU per decode if it were decoded."""
    data = progressive_jpeg(8000, 3000)
    assert len(data) < 1 * MiB
    FileHandler.files["/scans.jpg"] = data
    reset_peak(server)
    upload = requests.post(server.url + "/api/upload-image", files={"file": ("scans.jpg", data)}, timeout=30)
    query = requests.post(server.url + "/api/search", files={"file": ("scans.jpg", data)}, timeout=30)
    by_url = requests.post(server.url + "/api/search", json={"url": files_url + "/scans.jpg"}, timeout=30)
    for response, status in [(upload, 400), (query, 400), (by_url, 422)]:
        assert "scans" in assert_json_error(response, status)
    assert peak_mb(server) < server_rss(server) + 50
    still_serving(server)


def test_costly_decodes_wait_for_one_of_a_few_slots(server):
    """Uploads decode at full size; five at once would take five times the memory and every core."""
    data = progressive_jpeg(8000, 12)  # 64 megapixels, 12 scans: within every limit, about 300 MB to decode
    reset_peak(server)
    with concurrent.futures.ThreadPoolExecutor(5) as pool:
        uploads = [pool.submit(requests.post, server.url + "/api/upload-image",
                               files={"file": (f"big{i}.jpg", data)}, timeout=120) for i in range(5)]
        while not all(upload.done() for upload in uploads):
            still_serving(server)
        assert [upload.result().status_code for upload in uploads] == [200] * 5
    # The documented budget: IMAGE_SEARCH_MAX_DECODES (2) decodes of at most IMAGE_SEARCH_MAX_DECODE_MB each.
    assert peak_mb(server) - server_rss(server) < 2 * 512


# ----- progress streams ------------------------------------------------------------------------------------------

def open_stream(server: LiveServer, method: str = "GET") -> requests.Response:
    return requests.request(method, server.url + "/api/generate-features", stream=True, timeout=30)


def test_progress_streams_are_capped_and_the_api_keeps_answering(server):
    """Every open stream holds a server thread while the job runs; eleven of them used to starve the API."""
    images = server.data_dir / "images"
    for i in range(10):  # each takes about a second to decode, so the job runs for several seconds
        (images / f"slow{i}.jpg").write_bytes(progressive_jpeg(8000, 12))
    streams = [open_stream(server, "POST"), open_stream(server)]
    try:
        assert [stream.status_code for stream in streams] == [200, 200]
        refused = [open_stream(server) for _ in range(9)]
        for response in refused:
            assert "progress streams" in assert_json_error(response, 429)
        status = requests.get(server.url + "/api/status", timeout=10).json()
        assert status["job"]["running"], "the job ended before the streams were counted"
        for _ in range(3):
            still_serving(server)
            response = requests.post(server.url + "/api/search", json={"filename": "red_circle.png"}, timeout=10)
            assert response.status_code == 200
    finally:
        for stream in streams:
            stream.close()
    # A closed stream frees its slot at the server's next write to it (a progress event or a keep-alive).
    deadline = time.monotonic() + 60
    while (again := open_stream(server)).status_code == 429 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert again.status_code == 200
    assert '"complete": true' in again.text


# ----- animated WebP: a huge canvas, tiny frames -----------------------------------------------------------------

def _chunk(kind: bytes, payload: bytes) -> bytes:
    return kind + len(payload).to_bytes(4, "little") + payload + b"\0" * (len(payload) & 1)


def animated_webp(canvas: tuple[int, int], frames: int = 2) -> bytes:
    """An animated WebP whose frames are 1×1 pixel on a canvas of the given size."""
    buffer = io.BytesIO()
    Image.new("RGBA", (1, 1), (200, 20, 20, 255)).save(buffer, "WEBP", lossless=True)
    pixel = buffer.getvalue()[12:]  # the VP8L chunk of a 1×1 WebP
    width, height = (side - 1 for side in canvas)
    header = _chunk(b"VP8X", bytes([0x12, 0, 0, 0]) + width.to_bytes(3, "little") + height.to_bytes(3, "little"))
    frame = _chunk(b"ANMF", bytes(12) + (100).to_bytes(3, "little") + b"\0" + pixel)  # at 0,0; 1×1; 100 ms
    body = b"WEBP" + header + _chunk(b"ANIM", bytes(6)) + frame * frames
    return b"RIFF" + len(body).to_bytes(4, "little") + body


@pytest.mark.parametrize("side", [8000, 4000])
def test_an_animated_webp_with_a_huge_canvas_and_tiny_frames_is_refused(server, side):
    data = animated_webp((side, side))
    assert len(data) < 200 and Image.open(io.BytesIO(data)).n_frames == 2
    reset_peak(server)
    with concurrent.futures.ThreadPoolExecutor(4) as pool:  # four at once used to take 5.6 GB
        answers = list(pool.map(lambda i: requests.post(server.url + "/api/search", timeout=30,
                                                        files={"file": (f"anim{i}.webp", data)}), range(4)))
    for response in answers:
        assert_json_error(response, 400)
    assert peak_mb(server) < server_rss(server) + 50
    still_serving(server)


def test_an_ordinary_animated_webp_is_accepted(server):
    frames = [Image.new("RGB", (64, 48), colour) for colour in ((200, 30, 30), (30, 200, 30), (30, 30, 200))]
    buffer = io.BytesIO()
    frames[0].save(buffer, "WEBP", save_all=True, append_images=frames[1:], duration=50)
    response = requests.post(server.url + "/api/upload-image", files={"file": ("ok.webp", buffer.getvalue())},
                             timeout=30)
    assert response.status_code == 200, response.text


# ----- duplicates: a threshold that links every pair -------------------------------------------------------------

@pytest.fixture(scope="module")
def alike_server(tmp_path_factory):
    """400 images that are all alike: at a low threshold every one of the 79,800 pairs is a duplicate."""
    data_dir = new_library(tmp_path_factory.mktemp("alike"))
    for i in range(400):
        (data_dir / "images" / f"alike{i:03d}.png").write_bytes(make_image("gray", size=(48, 40), seed=i))
    with running(data_dir, {}) as live:
        yield live


def test_duplicates_refuse_low_thresholds_and_page_the_pairs(alike_server):
    base = alike_server.url + "/api/duplicates"
    for threshold in ("0", "0.3", "0.49"):
        assert "between 0.5 and 1" in assert_json_error(requests.get(f"{base}?threshold={threshold}", timeout=30), 400)
    reset_peak(alike_server)
    response = requests.get(f"{base}?threshold=0.5&per_page=200", timeout=60)
    assert response.status_code == 200
    assert len(response.content) < 200_000  # the whole list of pairs would be about 6 MB
    group = max(response.json()["groups"], key=lambda g: g["pair_count"])
    assert group["pair_count"] >= 400 * 399 // 2 and len(group["pairs"]) == 20
    pages = [requests.get(f"{base}/{group['group']}/pairs?threshold=0.5&per_page=1000&page={page}", timeout=60)
             .json()["pairs"] for page in (1, 2)]
    assert len(pages[0]) == len(pages[1]) == 1000 and pages[0][:20] == group["pairs"]
    assert pages[0][-1]["similarity"] >= pages[1][0]["similarity"]
    assert not {(p["a"], p["b"]) for p in pages[0]} & {(p["a"], p["b"]) for p in pages[1]}
    assert_json_error(requests.get(f"{base}/{group['group']}/pairs?threshold=0.5&per_page=5000", timeout=30), 400)
    assert peak_mb(alike_server) < server_rss(alike_server) + 100
    still_serving(alike_server)


def test_another_local_origin_cannot_make_the_api_work(alike_server):
    """An <img> on another port of this machine is a same-site request; on another site a cross-site one."""
    for site in ("same-site", "cross-site"):
        for path in ("/api/duplicates?threshold=0.51", "/api/generate-features", "/api/images"):
            response = requests.get(alike_server.url + path, headers={"Sec-Fetch-Site": site}, timeout=30)
            assert_json_error(response, 403)
    for site in ("same-origin", "none"):
        response = requests.get(alike_server.url + "/api/images", headers={"Sec-Fetch-Site": site}, timeout=30)
        assert response.status_code == 200


# ----- request bodies and fields that used to end in a 500 -------------------------------------------------------

@pytest.fixture(scope="module")
def token_server(tmp_path_factory):
    with running(new_library(tmp_path_factory.mktemp("token")), {"IMAGE_SEARCH_TOKEN": "s3cret"}) as live:
        yield live


def test_a_large_json_body_is_refused_before_it_is_parsed(token_server):
    """Parsing a JSON body takes several times its size; the token check parses it too, so no token is needed."""
    body = b'{"url": "http://192.0.2.1/x.png", "add_to_library": true, "pad": "' + b"a" * (64 * MiB) + b'"}'
    reset_peak(token_server)
    response = requests.post(token_server.url + "/api/search", data=body, timeout=60,
                             headers={"Content-Type": "application/json"})
    assert_json_error(response, 413)
    assert peak_mb(token_server) < server_rss(token_server) + 50
    form = requests.post(token_server.url + "/api/search", data={"pad": "a" * (2 * MiB)}, timeout=60)
    assert_json_error(form, 413)  # a form body gets the same cap
    still_serving(token_server)


@pytest.mark.parametrize("body", [b'{"filename": "red_circle.png", "k": 1e309}',
                                  b'{"filename": "red_circle.png", "k": Infinity}',
                                  b'{"filename": "red_circle.png", "k": NaN}',
                                  b'{"filename": "red_circle.png", "k": 2.5}',
                                  b'{"filename": "red_circle.png", "k": true}',
                                  b'{"filename": "red_circle.png", "min_similarity": Infinity}',
                                  b'{"filename": "red_circle.png", "k": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
                                  b"[" * 100_000 + b"]" * 100_000],
                         ids=["1e309", "Infinity", "NaN", "2.5", "true", "min-similarity-Infinity", "deep-k", "deep"])
def test_odd_json_is_a_400(server, body):
    response = requests.post(server.url + "/api/search", data=body, headers={"Content-Type": "application/json"},
                             timeout=30)
    assert_json_error(response, 400)


@pytest.mark.parametrize("k", [0, -1, "0"])
def test_k_below_one_is_a_400_naming_the_range(server, k):
    response = requests.post(server.url + "/api/search", json={"filename": "red_circle.png", "k": k}, timeout=30)
    assert assert_json_error(response, 400) == "k must be between 1 and 100."


def test_a_file_and_a_url_together_are_a_400(server, files_url):
    FileHandler.files["/blue.png"] = make_image("blue", seed=3)
    response = requests.post(server.url + "/api/search", data={"url": files_url + "/blue.png"},
                             files={"file": ("q.png", make_image("red", seed=4))}, timeout=30)
    assert "file and url" in assert_json_error(response, 400)
    response = requests.post(server.url + "/api/search", json={"url": files_url + "/blue.png",
                                                               "filename": "red_circle.png"}, timeout=30)
    assert "url and filename" in assert_json_error(response, 400)


def test_the_refusal_of_a_private_url_names_the_setting(engine_server):
    server, _ = engine_server  # a server with the default IMAGE_SEARCH_ALLOW_PRIVATE_URLS=0
    response = requests.post(server.url + "/api/search", json={"url": "http://127.0.0.1/x.png"}, timeout=30)
    assert "IMAGE_SEARCH_ALLOW_PRIVATE_URLS=1" in assert_json_error(response, 403)


def mpo(colours) -> bytes:
    buffer = io.BytesIO()
    frames = [Image.new("RGB", (64, 48), colour) for colour in colours]
    frames[0].save(buffer, "MPO", save_all=True, append_images=frames[1:])
    return buffer.getvalue()


def test_a_multi_picture_jpeg_is_a_jpeg(server):
    data = mpo([(200, 30, 30), (30, 30, 200)])
    assert Image.open(io.BytesIO(data)).format == "MPO"
    response = requests.post(server.url + "/api/upload-image", files={"file": ("camera.mpo", data)}, timeout=30)
    assert response.status_code == 200 and response.json()["filename"] == "camera.jpg"
    response = requests.post(server.url + "/api/search", files={"file": ("q.jpg", data)}, timeout=30)
    assert response.status_code == 200


def test_an_upload_of_two_files_reports_each_and_keeps_the_good_one(server):
    files = [("file", ("good.png", make_image("green", seed=9))), ("file", ("bad.png", b"not an image"))]
    response = requests.post(server.url + "/api/upload-image", files=files, timeout=30)
    assert response.status_code == 200, response.text
    body = response.json()
    assert [item["original_name"] for item in body["uploaded"]] == ["good.png"]
    assert [(item["original_name"], item["status"]) for item in body["failed"]] == [("bad.png", 400)]
    assert body["uploaded"][0]["filename"] in requests.get(server.url + "/api/images", timeout=10).json()["images"]
