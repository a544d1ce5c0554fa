"""Hostile input against real server processes (`python app.py`), over real HTTP.

Every refused request must get a JSON error with a fitting status, leave the library folders exactly as they
were, and leave the server serving. Nothing may ever read, write or delete outside the library: the project's
own files are hashed before and after the module, and canary files sit next to and above the data folder.
The address checks of URL search are unit-tested in test_fetch.py (including redirects to loopback and names
that resolve to loopback, with an injected resolver); here it is the HTTP layer around them.
"""
from __future__ import annotations

import functools
import hashlib
import http.client
import http.server
import io
import json
import os
import socket
import struct
import subprocess
import sys
import threading
import zlib
from pathlib import Path
from urllib.parse import quote, unquote

import pytest
import requests
from PIL import Image

from conftest import DEFAULT_ORIGINALS, PROJECT_DIR, LiveServer, loopback_server, make_image, make_library

# Slow: real server processes (or the browser, or the benchmark run); `make test-fast` leaves these out.
pytestmark = pytest.mark.slow

MiB = 1024 * 1024
COLOR = {"IMAGE_SEARCH_MODEL": "color"}
CANARY = make_image("yellow", seed=666)  # a real PNG, so serving it would succeed if a path could reach it
TOKEN = "t0k3n-for-tests"


# ----- fixtures: servers, canaries, snapshots --------------------------------------------------------------------

def project_digest() -> dict[str, str]:
    files = [PROJECT_DIR / "app.py", *(PROJECT_DIR / "imgsearch").rglob("*.py")]
    for folder in ("templates", "static"):
        files += [p for p in (PROJECT_DIR / folder).rglob("*") if p.is_file()]
    return {str(p.relative_to(PROJECT_DIR)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


@pytest.fixture(scope="module", autouse=True)
def project_untouched():
    before = project_digest()
    yield
    assert project_digest() == before


def new_library(root: Path) -> Path:
    originals = {name: make_image(colour, shape=shape, seed=i)
                 for i, (name, (colour, shape)) in enumerate(DEFAULT_ORIGINALS.items())}
    data_dir = make_library(root / "data", originals)
    (data_dir / "canary.png").write_bytes(CANARY)
    (root / "canary.png").write_bytes(CANARY)
    return data_dir


def start(data_dir: Path, env: dict[str, str]):
    server = LiveServer(data_dir, {**COLOR, **env}).start()
    yield server
    server.stop()
    assert "Traceback" not in server.output(), server.output()


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    return new_library(tmp_path_factory.mktemp("hostile"))


@pytest.fixture(scope="module")
def server(data_dir):
    yield from start(data_dir, {})


def disk_state(data_dir: Path) -> dict[str, str]:
    """Every file of the data folder and its parent that a request could create, change or delete.

    The app's own state (the catalogue database, index checkpoints) is left out: it changes with every write.
    """
    files = [p for p in data_dir.parent.rglob("*") if p.is_file() and p.name != "server.log"
             and not p.name.startswith("catalogue.db") and "features" not in p.relative_to(data_dir.parent).parts]
    return {str(p.relative_to(data_dir.parent)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


@pytest.fixture
def unchanged(server, data_dir):
    """The request under test must leave every file as it was, and the server still serving."""
    before = disk_state(data_dir)
    yield
    assert disk_state(data_dir) == before
    assert requests.get(server.url + "/api/status", timeout=10).status_code == 200


def assert_json_error(response, status: int) -> str:
    assert response.status_code == status, response.text[:300]
    assert response.headers["Content-Type"].startswith("application/json")
    message = response.json()["error"]
    assert isinstance(message, str) and message and "Traceback" not in response.text
    return message


def raw_request(server: LiveServer, method: str, path: str, body: bytes = b"", headers: dict | None = None):
    """Send `path` byte for byte: requests and urllib3 would normalise `..` segments before sending."""
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        connection.request(method, path, body=body or None, headers=headers or {})
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        connection.close()


def multipart_upload(server: LiveServer, filename: bytes, data: bytes):
    """An upload whose filename goes out exactly as given (NUL bytes, backslashes, anything)."""
    body = (b"--b0undary\r\nContent-Disposition: form-data; name=\"file\"; filename=\"" + filename + b"\"\r\n"
            b"Content-Type: application/octet-stream\r\n\r\n" + data + b"\r\n--b0undary--\r\n")
    return raw_request(server, "POST", "/api/upload-image", body,
                       {"Content-Type": "multipart/form-data; boundary=b0undary"})


def upload(server: LiveServer, name: str, data: bytes, **kwargs):
    return requests.post(server.url + "/api/upload-image", files={"file": (name, data)}, timeout=60, **kwargs)


# ----- uploads that must be refused ------------------------------------------------------------------------------

def encoded(image: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt)
    return buffer.getvalue()


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


@functools.cache
def png_bomb() -> bytes:
    """A 30000×30000 1-bit PNG, written row by row so that making it needs no 900-megapixel image."""
    width = height = 30000
    compressor = zlib.compressobj(9)
    row = b"\0" * (1 + width // 8)  # filter byte, then 8 pixels per byte
    pixels = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    data = b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", pixels) + _png_chunk(b"IEND", b"")
    assert len(data) < 2 * MiB  # small on disk, 900 megapixels decoded
    return data


FITS = b"".join(card.ljust(80) for card in
                (b"SIMPLE  =                    T", b"BITPIX  =                    8", b"NAXIS   =                    0",
                 b"END")).ljust(2880)
SVG = b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"><script>alert(1)</script></svg>'

REFUSED_UPLOADS = {
    "text-named-png": (lambda: b"just some text, not an image", "notes.png", 400),
    "html-named-png": (lambda: b"<html><script>alert(1)</script></html>", "page.png", 400),
    "zero-bytes": (lambda: b"", "empty.jpg", 400),
    "truncated-jpeg": (lambda: make_image("red", size=(320, 240), fmt="JPEG")[:3000], "cut.jpg", 400),
    "png-decompression-bomb": (png_bomb, "bomb.png", 400),
    "svg": (lambda: SVG, "drawing.svg", 415),
    "svg-named-png": (lambda: SVG, "drawing.png", 415),
    "tiff": (lambda: encoded(Image.new("RGB", (32, 32)), "TIFF"), "scan.tif", 415),
    "fits": (lambda: FITS, "sky.fits", 415),
    "pdf": (lambda: encoded(Image.new("RGB", (32, 32)), "PDF"), "doc.pdf", 415),
    "over-16-MiB": (lambda: make_image("red", fmt="JPEG") + b"\0" * (16 * MiB), "big.jpg", 413),
}


@pytest.mark.parametrize("case", list(REFUSED_UPLOADS))
def test_refused_uploads(server, unchanged, case):
    make, name, status = REFUSED_UPLOADS[case]
    assert_json_error(upload(server, name, make()), status)


@pytest.mark.parametrize("case", ["svg", "pdf", "png-decompression-bomb", "over-16-MiB"])
def test_refused_query_images(server, unchanged, case):
    make, name, status = REFUSED_UPLOADS[case]
    response = requests.post(server.url + "/api/search", files={"file": (name, make())}, timeout=60)
    assert_json_error(response, status)


@pytest.mark.parametrize("kwargs", [
    {"files": {"comment": (None, "no file here")}},
    {"files": {"file": ("", b"")}},
    {"json": {"file": "x"}},
    {"data": b"", "headers": {"Content-Type": "multipart/form-data; boundary=nothing"}},
], ids=["only-a-text-field", "empty-file-field", "json-body", "empty-multipart"])
def test_upload_without_a_file_part(server, unchanged, kwargs):
    assert_json_error(requests.post(server.url + "/api/upload-image", timeout=30, **kwargs), 400)


def test_too_many_files_in_one_request(server, unchanged):
    files = [("file", (f"f{i}.png", make_image(seed=i, size=(16, 16)))) for i in range(17)]
    assert_json_error(requests.post(server.url + "/api/upload-image", files=files, timeout=60), 413)


def test_animated_gif_with_thousands_of_frames_uses_its_first_frame(server, data_dir):
    """Accepted: Pillow decodes only the first frame and never walks the others, so frame count costs nothing."""
    frames = [Image.new("P", (16, 16), i % 2) for i in range(4000)]
    for frame in frames:
        frame.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    buffer = io.BytesIO()
    frames[0].save(buffer, "GIF", save_all=True, append_images=frames[1:], duration=20)
    data = buffer.getvalue()
    assert Image.open(io.BytesIO(data)).n_frames == 4000

    response = upload(server, "flicker.gif", data)
    assert response.status_code == 200, response.text
    name = response.json()["filename"]
    assert name.endswith(".gif") and (data_dir / "images" / name).read_bytes() == data
    thumb = requests.get(f"{server.url}/images/thumb/{name}", timeout=30)
    assert thumb.status_code == 200 and Image.open(io.BytesIO(thumb.content)).getpixel((8, 8)) > (200, 0, 0)
    assert requests.post(server.url + "/api/search", json={"filename": name}, timeout=30).status_code == 200


# ----- filenames: whatever the client calls its file, the name stored is a safe, fresh one -----------------------

HOSTILE_NAMES = [
    b"../../app.py", b"../../../../../../etc/passwd", b"/etc/passwd", b"/tmp/absolute.png",
    b"C:\\Windows\\win.ini", b"..\\..\\app.py", b"evil\x00.png", b"evil.png\x00.sh", b".htaccess", b"...", b"",
    "фото из отпуска.png".encode(), "写真.jpg".encode(), "\u202egnp.exe".encode(), b"a" * 300 + b".png",
    b"<img src=x onerror=alert(1)>.png", b"red_circle.png", b"original_filenames.txt", b"canary.png",
]


@pytest.mark.parametrize("client_name", HOSTILE_NAMES, ids=lambda n: repr(n)[2:40])
def test_hostile_filenames_are_stored_under_a_safe_fresh_name(server, data_dir, client_name):
    before = disk_state(data_dir)
    data = make_image("purple", seed=len(client_name) + sum(client_name))
    status, _, body = multipart_upload(server, client_name, data)
    assert status == 200, body
    name = json.loads(body)["filename"]

    assert name == Path(name).name and "\\" not in name and "\x00" not in name and not name.startswith(".")
    assert name not in (".", "..") and len(name.encode()) <= 255
    assert name.endswith(".png") and not set(name) & set("<>\"' =()")
    assert name not in DEFAULT_ORIGINALS
    after = disk_state(data_dir)
    added = {path for path in after if after[path] != before.get(path)}
    assert added == {f"data/images/{name}"}, "the upload changed something besides its own new file"
    assert (data_dir / "images" / name).read_bytes() == data
    assert requests.get(f"{server.url}/images/{quote(name)}", timeout=30).content == data
    assert name in requests.get(server.url + "/api/images", timeout=30).json()["images"]


@pytest.mark.parametrize("client_name,stored", [(b"---rf.png", "image_---rf.png"), (b"-n.png", "image_-n.png"),
                                                (b"CON.png", "image_CON.png"), (b"nul.tar.png", "image_nul.tar.png"),
                                                (b"lpt1.png", "image_lpt1.png"), (b"console.png", "console.png")])
def test_names_that_tools_or_windows_misread_get_a_prefix(server, data_dir, client_name, stored):
    status, _, body = multipart_upload(server, client_name, make_image("green", seed=len(client_name)))
    assert status == 200 and json.loads(body)["filename"].startswith(stored.rsplit(".", 1)[0])
    requests.delete(f"{server.url}/api/delete-image/{json.loads(body)['filename']}", timeout=30)


def test_echoed_names_are_cut_short(server, unchanged):
    name = "x" * (MiB - 100)  # as large as a JSON body may be
    response = requests.post(server.url + "/api/search", json={"filename": name}, timeout=30)
    assert len(assert_json_error(response, 404)) < 200


# ----- paths: nothing outside images/ is ever served, thumbnailed or deleted ------------------------------------

TARGETS = ["../canary.png", "../../canary.png", "../original_filenames.txt", "../images/../canary.png",
           "../../../../../../etc/passwd", "/etc/passwd", str(PROJECT_DIR / "app.py"), "../../../../app.py"]


def spellings(target: str) -> list[str]:
    """The target as typed, percent-encoded, double-encoded, with backslashes and overlong UTF-8 dots."""
    return sorted({
        target,
        target.replace("/", "%2F"),
        quote(target, safe=""),
        quote(quote(target, safe=""), safe=""),
        target.replace("/", "\\"),
        target.replace("/", "%5C"),
        target.replace(".", "%2e"),
        target.replace("../", "%c0%ae%c0%ae%c0%af"),
        target.replace("../", "..%00/"),
    })


PATH_CASES = sorted({(prefix, spelling) for prefix in ("/images/", "/images/thumb/", "/api/delete-image/")
                     for target in TARGETS for spelling in spellings(target)})


@pytest.mark.parametrize("prefix,spelling", PATH_CASES)
def test_paths_never_leave_the_library(server, data_dir, unchanged, prefix, spelling):
    method = "DELETE" if prefix.startswith("/api/") else "GET"
    status, headers, body = raw_request(server, method, prefix + spelling)
    assert status in (400, 404), (status, body[:200])
    assert headers.get("Content-Type", "").startswith("application/json")
    assert CANARY not in body and b"root:" not in body and b"def main" not in body


@pytest.mark.parametrize("target", TARGETS)
def test_json_names_never_leave_the_library(server, unchanged, target):
    for name in {target, unquote(target), target.replace("/", "\\")}:
        assert_json_error(requests.post(server.url + "/api/search", json={"filename": name}, timeout=30), 404)
        response = requests.post(server.url + "/api/delete-images", json={"filenames": [name]}, timeout=30)
        assert_json_error(response, 404)


@pytest.mark.parametrize("name", ["a" * 300 + ".png", "写" * 100 + ".png", "x" * 5000], ids=["300", "300-bytes", "5000"])
def test_names_longer_than_the_file_system_allows_are_not_found(server, unchanged, name):
    for method, prefix in [("GET", "/images/"), ("GET", "/images/thumb/"), ("DELETE", "/api/delete-image/")]:
        status, headers, body = raw_request(server, method, prefix + quote(name))
        assert status == 404 and json.loads(body)["error"], (prefix, status)
    assert_json_error(requests.post(server.url + "/api/search", json={"filename": name}, timeout=30), 404)
    assert_json_error(requests.post(server.url + "/api/delete-images", json={"filenames": [name]}, timeout=30), 404)


# ----- URL search: private and local targets, other schemes ------------------------------------------------------

BLOCKED_URLS = [
    ("http://127.0.0.1/x.png", 403), ("http://127.0.0.1:5000/api/status", 403), ("http://localhost/x.png", 403),
    ("http://[::1]/x.png", 403), ("http://0.0.0.0/x.png", 403), ("http://2130706433/x.png", 403),
    ("http://0177.0.0.1/x.png", 403), ("http://0x7f.0.0.1/x.png", 403), ("http://127.1/x.png", 403),
    ("http://[::ffff:127.0.0.1]/x.png", 403), ("http://169.254.169.254/latest/meta-data/", 403),
    ("http://10.0.0.1/x.png", 403), ("http://172.16.0.1/x.png", 403), ("http://192.168.1.1/x.png", 403),
    ("http://[fd00::1]/x.png", 403), ("file:///etc/passwd", 400), ("ftp://example.com/x.png", 400),
    ("gopher://127.0.0.1:70/_x", 400), ("http://user:pw@example.com/x.png", 400), ("http:///x.png", 400),
    ("javascript:alert(1)", 400), ("http://exa mple.com/x.png", 400),
]


@pytest.mark.timeout(30)
@pytest.mark.parametrize("url,status", BLOCKED_URLS, ids=[u for u, _ in BLOCKED_URLS])
def test_url_search_refuses_private_targets_and_other_schemes(server, unchanged, url, status):
    for payload in ({"url": url}, {"url": url, "add_to_library": True}):
        assert_json_error(requests.post(server.url + "/api/search", json=payload, timeout=20), status)


class HostileHandler(http.server.BaseHTTPRequestHandler):
    """Upstream servers that misbehave: stall, flood, redirect forever, or serve the wrong thing."""

    protocol_version = "HTTP/1.0"  # a body without Content-Length then ends when the connection closes
    release = threading.Event()
    flood_sent = 0

    def do_GET(self):
        path = self.path
        try:
            if path == "/image.png" or path.startswith("/x/"):
                self._send(200, "image/png", make_image("blue", seed=5))
            elif path == "/page.html":
                self._send(200, "text/html", b"<html><body>hello</body></html>")
            elif path == "/not-really.png":
                self._send(200, "image/png", b"GIF89a but not really")
            elif path.startswith("/hops/"):
                left = int(path.rsplit("/", 1)[1])  # redirects still to come
                self.send_response(302)
                self.send_header("Location", "/image.png" if left == 1 else f"/hops/{left - 1}")
                self.end_headers()
            elif path == "/stall":
                self.send_response(200)
                self.send_header("Content-Type", "image/png")
                self.send_header("Content-Length", "100000")
                self.end_headers()
                self.wfile.write(make_image()[:100])
                self.wfile.flush()
                self.release.wait(60)
            elif path == "/trickle":
                self.send_response(200)
                self.send_header("Content-Type", "image/png")
                self.end_headers()
                while not self.release.wait(0.2):
                    self.wfile.write(b"\0")
                    self.wfile.flush()
            elif path == "/flood":
                self.send_response(200)
                self.send_header("Content-Type", "image/jpeg")
                self.end_headers()
                chunk = b"\0" * MiB
                for _ in range(100):
                    self.wfile.write(chunk)
                    type(self).flood_sent += len(chunk)
            elif path == "/declared-huge":
                self.send_response(200)
                self.send_header("Content-Type", "image/png")
                self.send_header("Content-Length", str(1024 * MiB))
                self.end_headers()
            else:
                self._send(404, "text/plain", b"no")
        except (BrokenPipeError, ConnectionResetError):
            pass

    def _send(self, status, kind, body):
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def upstream():
    with loopback_server(HostileHandler) as url:
        yield url
        HostileHandler.release.set()  # lets stalled handlers finish before the server shuts down


@pytest.fixture(scope="module")
def private_data_dir(tmp_path_factory) -> Path:
    return new_library(tmp_path_factory.mktemp("private"))


@pytest.fixture(scope="module")
def private_server(private_data_dir):
    yield from start(private_data_dir, {"IMAGE_SEARCH_ALLOW_PRIVATE_URLS": "1", "IMAGE_SEARCH_URL_TIMEOUT": "2"})


UPSTREAM_CASES = [("/image.png", 200), ("/hops/3", 200), ("/hops/4", 502), ("/hops/50", 502), ("/stall", 502),
                  ("/trickle", 502), ("/declared-huge", 413), ("/page.html", 415),
                  ("/not-really.png", 422), ("/missing", 502)]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("path,status", UPSTREAM_CASES, ids=[p for p, _ in UPSTREAM_CASES])
def test_url_search_against_misbehaving_servers(private_server, private_data_dir, upstream, path, status):
    before = disk_state(private_data_dir)
    response = requests.post(private_server.url + "/api/search", json={"url": upstream + path}, timeout=30)
    if status == 200:
        assert response.status_code == 200 and response.json()["results"]
    else:
        message = assert_json_error(response, status)
        if path in ("/stall", "/trickle"):
            assert "timed out" in message
        if path.startswith("/hops/"):
            assert "redirects" in message
    assert disk_state(private_data_dir) == before
    assert requests.get(private_server.url + "/api/status", timeout=10).status_code == 200


def test_endless_body_is_not_read_to_the_end(private_server, upstream):
    HostileHandler.flood_sent = 0
    response = requests.post(private_server.url + "/api/search", json={"url": upstream + "/flood"}, timeout=30)
    assert_json_error(response, 413)
    # Had the app read the whole body before answering, all of it would have been sent by now.
    assert HostileHandler.flood_sent < 100 * MiB


@pytest.mark.parametrize("path", ["/x/..%2F..%2Fapp.py", "/x/%2e%2e%2f%2e%2e%2fcanary.png", "/x/a%00b.png",
                                  "/x/<svg onload=alert(1)>.png"])
def test_url_added_to_library_gets_a_safe_name(private_server, private_data_dir, upstream, path):
    response = requests.post(private_server.url + "/api/search",
                             json={"url": upstream + quote(path, safe="/%"), "add_to_library": True}, timeout=30)
    assert response.status_code == 200, response.text
    name = response.json()["query"]["filename"]
    assert name == Path(name).name and not name.startswith(".") and name.endswith(".png")
    assert not set(name) & set("<>\"' =()%\x00\\") and (private_data_dir / "images" / name).is_file()


# ----- access control: token, cross-site posts, Host names, bind address -----------------------------------------

CROSS_SITE = [{"Origin": "https://evil.example"}, {"Origin": "null"}, {"Sec-Fetch-Site": "cross-site"},
              {"Origin": "http://127.0.0.1.evil.example"}]


@pytest.mark.parametrize("headers", CROSS_SITE, ids=lambda h: "-".join(h.values()))
def test_cross_site_requests_cannot_change_anything(server, unchanged, headers):
    name = "red_circle.png"
    checks = [
        requests.post(server.url + "/api/upload-image", files={"file": ("x.png", make_image())}, headers=headers,
                      timeout=30),
        requests.delete(f"{server.url}/api/delete-image/{name}", headers=headers, timeout=30),
        requests.post(server.url + "/api/delete-images", data={"filenames": name}, headers=headers, timeout=30),
        requests.post(server.url + "/api/generate-features", headers=headers, timeout=30),
        requests.post(server.url + "/api/search", json={"filename": name}, headers=headers, timeout=30),
    ]
    for response in checks:
        assert_json_error(response, 403)


def test_same_origin_requests_are_served(server):
    for headers in ({"Origin": server.url}, {"Sec-Fetch-Site": "same-origin"}):
        response = requests.post(server.url + "/api/search", json={"filename": "red_circle.png"}, headers=headers,
                                 timeout=30)
        assert response.status_code == 200


@pytest.mark.parametrize("host", ["evil.example", "rebind.attacker.test:{port}", "127.0.0.1.nip.io:{port}",
                                  "192.168.1.20:{port}"])
def test_without_a_token_only_loopback_host_names_are_served(server, unchanged, host):
    """A DNS-rebinding page reaches 127.0.0.1 under its own name, Origin and all: the Host header gives it away."""
    headers = {"Host": host.format(port=server.port), "Origin": f"http://{host.format(port=server.port)}"}
    for method, path in [("GET", "/api/images"), ("GET", "/"), ("GET", "/images/red_circle.png"),
                         ("DELETE", "/api/delete-image/red_circle.png")]:
        status, response_headers, body = raw_request(server, method, path, headers=headers)
        assert status == 403 and json.loads(body)["error"]


@pytest.mark.parametrize("host", ["127.0.0.1:{port}", "localhost:{port}", "LOCALHOST:{port}", "[::1]:{port}"])
def test_loopback_host_names_are_served(server, host):
    status, _, body = raw_request(server, "GET", "/api/status", headers={"Host": host.format(port=server.port)})
    assert status == 200, body


@pytest.mark.parametrize("path", ["/", "/api/status", "/images/red_circle.png", "/api/nothing-here"])
def test_no_site_can_frame_the_app_and_only_its_own_scripts_run(server, path):
    response = requests.get(server.url + path, timeout=10)
    assert response.headers["X-Frame-Options"] == "DENY"
    policy = dict(directive.strip().split(" ", 1) for directive in response.headers["Content-Security-Policy"].split(";"))
    assert policy["frame-ancestors"] == "'none'"
    assert policy["script-src"] == policy["style-src"] == policy["default-src"] == "'self'"


def test_default_bind_is_loopback_without_warning(server):
    assert f"Serving on http://127.0.0.1:{server.port}" in server.output()
    assert "without IMAGE_SEARCH_TOKEN" not in server.output()


@pytest.fixture(scope="module")
def token_server(tmp_path_factory):
    yield from start(new_library(tmp_path_factory.mktemp("token")), {"IMAGE_SEARCH_TOKEN": TOKEN})


def test_token_guards_every_change(token_server):
    base = token_server.url
    wrong = [{}, {"Authorization": "Bearer nope"}, {"Authorization": TOKEN}, {"Authorization": f"bearer {TOKEN}"},
             {"Authorization": f"Basic {TOKEN}"}]
    for headers in wrong:
        assert_json_error(upload(token_server, "a.png", make_image(), headers=headers), 401)
        assert_json_error(requests.delete(base + "/api/delete-image/red_circle.png", headers=headers, timeout=30),
                          401)
        assert_json_error(requests.post(base + "/api/delete-images", json={"filenames": ["x.png"]}, headers=headers,
                                        timeout=30), 401)
        assert_json_error(requests.post(base + "/api/generate-features", headers=headers, timeout=30), 401)
        assert_json_error(requests.post(base + "/api/search", json={"url": "http://192.0.2.1/x.png",
                                                                    "add_to_library": True},
                                        headers=headers, timeout=30), 401)
        assert_json_error(requests.post(base + "/api/search", files={"file": ("q.png", make_image())},
                                        data={"add_to_library": "1"}, headers=headers, timeout=30), 401)
    # Reading and plain searching stay open.
    assert requests.get(base + "/api/status", timeout=30).json()["auth_required"] is True
    assert requests.post(base + "/api/search", json={"filename": "red_circle.png"}, timeout=30).status_code == 200

    good = {"Authorization": f"Bearer {TOKEN}"}
    added = upload(token_server, "mine.png", make_image("green"), headers=good)
    assert added.status_code == 200
    name = added.json()["filename"]
    assert requests.post(base + "/api/generate-features", headers=good, timeout=60).status_code == 200
    assert requests.delete(f"{base}/api/delete-image/{name}", headers=good, timeout=30).json() == {"success": True}
    cross = {**good, "Origin": "https://evil.example"}
    assert_json_error(upload(token_server, "b.png", make_image(), headers=cross), 403)


def test_with_a_token_other_host_names_are_served(token_server):
    """Behind a reverse proxy the Host is the public name; the token, not the name, guards changes then."""
    status, _, _ = raw_request(token_server, "GET", "/api/status", headers={"Host": "images.example.org"})
    assert status == 200


def test_binding_beyond_loopback_without_a_token_warns_and_still_checks_host_names(tmp_path):
    # Binds every interface for a moment; the test only ever talks to it over 127.0.0.1.
    server = LiveServer(new_library(tmp_path), {**COLOR, "HOST": "0.0.0.0"}).start()
    try:
        assert requests.get(server.url + "/api/status", timeout=10).status_code == 200
        assert "Binding to 0.0.0.0 without IMAGE_SEARCH_TOKEN" in server.output()
        assert "Requests are served only under" in server.output()
        for host in ("evil.example", "rebind.attacker.test:{port}", "127.0.0.1.nip.io"):
            status, _, _ = raw_request(server, "DELETE", "/api/delete-image/red_circle.png",
                                       headers={"Host": host.format(port=server.port)})
            assert status == 403
        # Bound to every address: a LAN client names the machine by its address, which no rebinding page can use.
        for host in ("127.0.0.1:{port}", "192.168.1.20:{port}", "[fe80::1]:{port}", "localhost"):
            status, _, _ = raw_request(server, "GET", "/api/status", headers={"Host": host.format(port=server.port)})
            assert status == 200, host
    finally:
        server.stop()


def test_host_is_read_the_way_the_socket_reads_it(tmp_path):
    """HOST=127.000.000.001 binds 127.0.0.1: still loopback, no warning, and foreign names are refused."""
    env = {**COLOR, "HOST": "127.000.000.001", "IMAGE_SEARCH_ALLOWED_HOSTS": "Photos.LAN"}
    server = LiveServer(new_library(tmp_path), env).start()
    try:
        assert "without IMAGE_SEARCH_TOKEN" not in server.output()
        for host, expected in [("evil.example", 403), ("192.168.1.20:{port}", 403), ("127.0.0.1:{port}", 200),
                               ("photos.lan:{port}", 200), ("localhost:{port}", 200)]:
            status, _, _ = raw_request(server, "GET", "/api/images", headers={"Host": host.format(port=server.port)})
            assert status == expected, host
    finally:
        server.stop()


def test_a_busy_port_is_one_line_and_a_non_zero_exit(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run([sys.executable, str(PROJECT_DIR / "app.py"), "--port", str(port)], timeout=60,
                                capture_output=True, text=True, cwd=PROJECT_DIR,
                                env={**os.environ, **COLOR, "IMAGE_SEARCH_DATA_DIR": str(new_library(tmp_path))})
    assert result.returncode != 0
    lines = (result.stdout + result.stderr).strip().splitlines()
    assert len(lines) == 1 and str(port) in lines[0] and "--port" in lines[0], lines
