"""URL fetching must never reach internal addresses, and must bound time, size and redirects.

Every server here is an http.server in a thread on 127.0.0.1. Addresses that must be refused are never connected
to: the `only_loopback_connections` guard fails any test whose code tries to connect outside 127.0.0.0/8.
"""
from __future__ import annotations

import io
import ipaddress
import shutil
import socket
import ssl
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest
import requests
import urllib3
from hypothesis import given, settings, strategies as st
from PIL import Image

from imgsearch import fetch
from imgsearch.fetch import FetchError, fetch_image_bytes, validate_url

pytestmark = pytest.mark.timeout(60)

MiB = 1024 * 1024
FLOOD_BYTES = 100 * MiB
SERVER_WAIT_LIMIT = 30  # seconds a stalling handler waits before giving up on its own


def _png_bytes() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 30, 30)).save(buffer, "PNG")
    return buffer.getvalue()


PNG = _png_bytes()


def no_dns(host: str, port: int) -> list[str]:
    raise AssertionError(f"{host} should never have been looked up")


def resolver_for(table: dict[str, list[str]], calls: list[str] | None = None):
    def resolve(host: str, port: int) -> list[str]:
        if calls is not None:
            calls.append(host)
        return table[host]
    return resolve


@pytest.fixture(autouse=True)
def only_loopback_connections(monkeypatch):
    """Fail the test if anything tries to connect outside 127.0.0.0/8 (and never let that traffic out)."""
    real_create_connection = urllib3.util.connection.create_connection
    violations = []

    def guarded(address, *args, **kwargs):
        if not address[0].startswith("127."):
            violations.append(address)
            raise AssertionError(f"tried to connect to {address}")
        return real_create_connection(address, *args, **kwargs)

    monkeypatch.setattr(urllib3.util.connection, "create_connection", guarded)
    yield
    assert violations == []


class Handler(BaseHTTPRequestHandler):
    server: "LocalServer"

    def log_message(self, format, *args):
        pass

    def _headers(self, status=200, content_type="image/png", length: int | None = None, extra=()):
        self.send_response(status)
        if content_type:
            self.send_header("Content-Type", content_type)
        if length is not None:
            self.send_header("Content-Length", str(length))
        for name, value in extra:
            self.send_header(name, value)
        self.end_headers()

    def _image(self, content_type="image/png"):
        self._headers(content_type=content_type, length=len(PNG))
        self.wfile.write(PNG)

    def _flood(self, declared_length: int | None):
        self._headers(length=declared_length)
        chunk = b"\0" * (64 * 1024)
        try:
            while self.server.flood_sent < FLOOD_BYTES:
                self.wfile.write(chunk)
                self.server.flood_sent += len(chunk)
        except OSError:
            pass  # the client hung up, which is what the test wants
        finally:
            self.server.flood_done.set()

    def do_GET(self):
        parts = urlsplit(self.path)
        self.server.seen.append((parts.path, dict(self.headers)))
        route = parts.path
        if route == "/image.png":
            self._image()
        elif route == "/octet":
            self._image("application/octet-stream")
        elif route == "/untyped":
            self._image(content_type="")
        elif route == "/page.html":
            body = b"<html><body>not an image</body></html>"
            self._headers(content_type="text/html; charset=utf-8", length=len(body))
            self.wfile.write(body)
        elif route == "/missing":
            self.send_error(404)
        elif route.startswith("/hops/"):
            left = int(route.rsplit("/", 1)[1])
            if left == 0:
                self._image()
            else:
                self._headers(302, content_type="", length=0, extra=[("Location", f"/hops/{left - 1}")])
        elif route == "/redirect":
            location = parse_qs(parts.query)["to"][0]
            self._headers(302, content_type="", length=0, extra=[("Location", location)])
        elif route == "/stall-headers":
            self.server.stop.wait(SERVER_WAIT_LIMIT)
        elif route == "/stall-body":
            self._headers(length=1000)
            self.wfile.write(PNG[:10])
            self.wfile.flush()
            self.server.stop.wait(SERVER_WAIT_LIMIT)
        elif route == "/trickle":
            self._headers()
            try:
                while not self.server.stop.wait(0.05):
                    self.wfile.write(b"\0")
                    self.wfile.flush()
            except OSError:
                pass
        elif route == "/flood":
            self._flood(declared_length=None)
        elif route == "/flood-with-small-length":
            self._flood(declared_length=1024)
        elif route == "/declared-huge":
            self._headers(length=FLOOD_BYTES)
        else:
            self.send_error(500)


class LocalServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), Handler)
        self.seen: list[tuple[str, dict]] = []
        self.stop = threading.Event()
        self.flood_done = threading.Event()
        self.flood_sent = 0

    @property
    def port(self) -> int:
        return self.server_address[1]

    def url(self, path: str, host: str = "127.0.0.1", scheme: str = "http") -> str:
        return f"{scheme}://{host}:{self.port}{path}"


def _serve(server: LocalServer):
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.stop.set()
        server.shutdown()
        server.server_close()
        thread.join(10)


@pytest.fixture
def server():
    yield from _serve(LocalServer())


def local_fetch(url: str, **kwargs) -> bytes:
    kwargs.setdefault("allow_private", True)
    kwargs.setdefault("resolver", no_dns)
    kwargs.setdefault("timeout", 5.0)
    return fetch_image_bytes(url, **kwargs)


def fetch_error(url: str, **kwargs) -> FetchError:
    with pytest.raises(FetchError) as caught:
        local_fetch(url, **kwargs)
    return caught.value


# --- refused before any connection ---------------------------------------------------------------------------

BLOCKED_URLS = [
    "http://127.0.0.1/",
    "https://127.0.0.1:8443/image.png",
    "http://localhost/",
    "http://[::1]/",
    "http://0.0.0.0/",
    "http://0/",
    "http://2130706433/",
    "http://0177.0.0.1/",
    "http://0x7f000001/",
    "http://0x7f.0.0.1/",
    "http://127.1/",
    "http://127.0.0.1./",
    "http://[::ffff:127.0.0.1]/",
    "http://[::ffff:a00:1]/",
    "http://[::127.0.0.1]/",
    "http://[2002:7f00:1::]/",
    "http://[64:ff9b::a9fe:a9fe]/",
    "http://169.254.169.254/latest/meta-data/",
    "http://10.0.0.1/",
    "http://172.16.0.1/",
    "http://192.168.1.1/",
    "http://100.64.0.1/",
    "http://224.0.0.1/",
    "http://255.255.255.255/",
    "http://[fc00::1]/",
    "http://[fe80::1]/",
    "http://[ff02::1]/",
    "http://127\u30020\u30020\u30021/",  # ideographic full stops, which IDNA maps to dots
    "http://\u24db\u24de\u24d2\u24d0\u24db\u24d7\u24de\u24e2\u24e3/",  # circled letters: "localhost"
]
SYSTEM_RESOLVED = {"http://localhost/", "http://\u24db\u24de\u24d2\u24d0\u24db\u24d7\u24de\u24e2\u24e3/"}


@pytest.mark.parametrize("url", BLOCKED_URLS)
def test_private_and_local_addresses_are_refused(url):
    # Only the two spellings of `localhost` are names; the system resolver answers those from /etc/hosts.
    resolver = None if url in SYSTEM_RESOLVED else no_dns
    error = fetch_error(url, allow_private=False, resolver=resolver)
    assert error.status == 403
    assert "private or local address" in error.message


def test_refusal_names_the_host_the_address_it_means_and_the_setting_that_allows_it():
    error = fetch_error("http://0x7f000001/", allow_private=False)
    assert error.message == ("Refusing to fetch 0x7f000001: it resolves to a private or local address (127.0.0.1). "
                             "On a trusted network, IMAGE_SEARCH_ALLOW_PRIVATE_URLS=1 allows it.")


def test_public_looking_name_resolving_to_loopback_is_refused():
    resolver = resolver_for({"images.example.com": ["127.0.0.1"]})
    error = fetch_error("https://images.example.com/cat.jpg", allow_private=False, resolver=resolver)
    assert error.status == 403
    assert "images.example.com" in error.message and "127.0.0.1" in error.message


def test_name_resolving_to_public_and_private_addresses_is_refused():
    resolver = resolver_for({"mixed.example.com": ["93.184.216.34", "10.1.2.3"]})
    error = fetch_error("http://mixed.example.com/cat.jpg", allow_private=False, resolver=resolver)
    assert error.status == 403
    assert "10.1.2.3" in error.message


@pytest.mark.parametrize("url", [
    "file:///etc/passwd",
    "ftp://example.com/cat.png",
    "gopher://example.com:70/_GET",
    "data:image/png;base64,iVBORw0KGgo=",
    "javascript:alert(1)",
    "example.com/cat.png",
    "http://evil@127.0.0.1/",
    "http://user:secret@images.example.com/cat.png",
    "http:///cat.png",
    "http://[::1/",
    "http://example.com:0/",
    "http://example.com:99999/",
    "http://exa mple.com/",
    "http://example.com/a\nb",
    "http://256.0.0.1/",
    "http://1.2.3.4.5/",
    "http://0x100000000/",
    "http://08.0.0.1/",
    "http://exa%6dple.com/",
    "http://127.0.0.1\\.example.com/",
])
def test_malformed_urls_and_other_schemes_are_refused_even_when_private_is_allowed(url):
    error = fetch_error(url, allow_private=True)
    assert error.status == 400


def test_public_addresses_are_accepted_and_pinned():
    resolver = resolver_for({"images.example.com": ["93.184.216.34", "2606:2800:220:1::248"]})
    target = validate_url("https://images.example.com/a/cat.jpg?size=2", resolver=resolver)
    assert target.addresses == ("93.184.216.34", "2606:2800:220:1::248")
    assert target.url == "https://images.example.com/a/cat.jpg?size=2"
    assert target.host_header == "images.example.com"
    for url, address in [("http://8.8.8.8/", "8.8.8.8"), ("http://134744072/", "8.8.8.8"),
                         ("http://[2002:808:808::1]/", "2002:808:808::1")]:
        assert validate_url(url, resolver=no_dns).addresses == (address,)


# --- behaviour against local servers ---------------------------------------------------------------------------

@pytest.mark.parametrize("path", ["/image.png", "/octet", "/untyped"])
def test_image_bodies_are_returned(server, path):
    assert local_fetch(server.url(path)) == PNG


def test_connection_goes_to_the_checked_address_with_the_original_host_header(server):
    # `images.test` exists only in this resolver: the fetch can only succeed by connecting to the address it
    # returned, never by looking the name up again.
    calls = []
    resolver = resolver_for({"images.test": ["127.0.0.1"]}, calls)
    assert local_fetch(server.url("/image.png", host="images.test"), resolver=resolver) == PNG
    assert calls == ["images.test"]
    path, headers = server.seen[-1]
    assert headers["Host"] == f"images.test:{server.port}"
    assert headers["User-Agent"].startswith("imgsearch/")


def test_addresses_are_tried_in_resolver_order(server):
    # The server listens on 127.0.0.1 only, so 127.0.0.2 refuses the connection and the next address is tried.
    resolver = resolver_for({"images.test": ["127.0.0.2", "127.0.0.1"]})
    assert local_fetch(server.url("/image.png", host="images.test"), resolver=resolver) == PNG


def test_unreachable_server_is_a_bad_gateway():
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    closed_port = closed.getsockname()[1]
    closed.close()
    error = fetch_error(f"http://127.0.0.1:{closed_port}/image.png")
    assert error.status == 502
    assert "Could not connect" in error.message


def test_redirects_are_followed_up_to_the_limit(server):
    assert local_fetch(server.url("/hops/3"), max_redirects=3) == PNG
    error = fetch_error(server.url("/hops/4"), max_redirects=3)
    assert error.status == 502
    assert "redirects" in error.message
    assert [path for path, _ in server.seen] == ["/hops/3", "/hops/2", "/hops/1", "/hops/0",
                                                "/hops/4", "/hops/3", "/hops/2", "/hops/1"]


@pytest.mark.parametrize("path", ["/stall-headers", "/stall-body", "/trickle"])
def test_slow_servers_time_out(server, path):
    # The trickle sends a byte every 50 ms, so no single read ever times out: only the overall budget stops it.
    error = fetch_error(server.url(path), timeout=1.0)
    assert error.status == 502
    assert "timed out" in error.message


def test_endless_body_is_cut_at_the_byte_cap(server):
    error = fetch_error(server.url("/flood"), max_bytes=MiB)
    assert error.status == 413
    assert server.flood_done.wait(SERVER_WAIT_LIMIT)
    assert server.flood_sent < FLOOD_BYTES


def test_declared_length_over_the_cap_is_refused_before_reading(server):
    error = fetch_error(server.url("/declared-huge"), max_bytes=MiB)
    assert error.status == 413


def test_body_longer_than_its_declared_length_is_read_only_up_to_that_length(server):
    # HTTP framing ends the body at Content-Length; the excess is never read, so it cannot blow the cap.
    assert local_fetch(server.url("/flood-with-small-length"), max_bytes=MiB) == b"\0" * 1024
    assert server.flood_done.wait(SERVER_WAIT_LIMIT)
    assert server.flood_sent < FLOOD_BYTES


def test_declared_non_image_is_refused(server):
    error = fetch_error(server.url("/page.html"))
    assert error.status == 415
    assert "text/html" in error.message


def test_upstream_error_status_is_a_bad_gateway(server):
    error = fetch_error(server.url("/missing"))
    assert error.status == 502
    assert "404" in error.message


def test_redirect_into_the_private_network_is_refused(server, monkeypatch):
    # The test server is on loopback, so to stand for a public server its own address, and only that, is
    # treated as public. Every redirect target still goes through the real check, and is refused before any
    # connection (the loopback-only guard would fail the test otherwise).
    really_public = fetch.is_public_address
    monkeypatch.setattr(fetch, "is_public_address",
                        lambda ip: ip == ipaddress.ip_address("127.0.0.1") or really_public(ip))
    resolver = resolver_for({"internal.test": ["10.1.2.3"]})
    assert local_fetch(server.url("/image.png"), allow_private=False) == PNG
    for location, status in [
        ("http://169.254.169.254/latest/meta-data/", 403),
        (f"http://127.0.0.2:{server.port}/image.png", 403),
        (f"http://0x7f000002:{server.port}/image.png", 403),
        (f"http://[::1]:{server.port}/image.png", 403),
        ("//internal.test/image.png", 403),
        ("file:///etc/passwd", 400),
    ]:
        url = server.url("/redirect?" + urlencode({"to": location}))
        error = fetch_error(url, allow_private=False, resolver=resolver)
        assert error.status == status, location


# --- https: the pinned connection still verifies the certificate against the URL's host name ----------------------

def _openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory):
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is needed to make a test certificate")
    folder = tmp_path_factory.mktemp("tls")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    _openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
             "-subj", "/CN=imgsearch test CA", cwd=folder)
    _openssl("req", *ec, "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=images.test", cwd=folder)
    (folder / "server.ext").write_text("subjectAltName=DNS:images.test\nbasicConstraints=CA:FALSE\n"
                                       "extendedKeyUsage=serverAuth\n")
    _openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
             "-out", "server.pem", "-days", "2", "-extfile", "server.ext", cwd=folder)
    return folder


@pytest.fixture
def tls_server(tls_files, monkeypatch):
    # requests reads its default CA bundle path at send time; point it at the test CA only.
    monkeypatch.setattr(requests.adapters, "DEFAULT_CA_BUNDLE_PATH", str(tls_files / "ca.pem"))
    server = LocalServer()
    server.server_names = []
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tls_files / "server.pem", tls_files / "server.key")
    context.sni_callback = lambda sock, name, ctx: server.server_names.append(name)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    yield from _serve(server)


def test_https_sends_the_host_name_for_sni_and_verifies_it(tls_server):
    resolver = resolver_for({"images.test": ["127.0.0.1"], "other.test": ["127.0.0.1"]})
    url = tls_server.url("/image.png", host="images.test", scheme="https")
    assert local_fetch(url, resolver=resolver) == PNG
    assert tls_server.server_names == ["images.test"]

    wrong_name = tls_server.url("/image.png", host="other.test", scheme="https")
    error = fetch_error(wrong_name, resolver=resolver)
    assert error.status == 502
    assert "TLS" in error.message


# --- properties ----------------------------------------------------------------------------------------------

# Special-purpose blocks (RFC 6890 and successors) that must never be fetched, written out independently of the
# code under test.
NEVER_PUBLIC = [ipaddress.ip_network(block) for block in (
    "0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16", "172.16.0.0/12",
    "192.0.0.0/24", "192.0.2.0/24", "192.168.0.0/16", "198.18.0.0/15", "198.51.100.0/24", "203.0.113.0/24",
    "224.0.0.0/4", "240.0.0.0/4",
    "::/96", "::ffff:0:0/96", "64:ff9b:1::/48", "100::/64", "2001:db8::/32", "fc00::/7", "fe80::/10",
    "fec0::/10", "ff00::/8",
)]
PRIVATE_IPV4_BLOCKS = [block for block in NEVER_PUBLIC if block.version == 4]


def _wrapped_ipv4(ip) -> list[ipaddress.IPv4Address]:
    if ip.version == 4:
        return []
    value = int(ip)
    wrapped = []
    if value >> 32 in (0, 0xFFFF, 0x64FF9B << 64):  # IPv4-compatible, IPv4-mapped, NAT64
        wrapped.append(ipaddress.IPv4Address(value & 0xFFFFFFFF))
    if value >> 112 == 0x2002:  # 6to4
        wrapped.append(ipaddress.IPv4Address((value >> 80) & 0xFFFFFFFF))
    if value >> 96 == 0x20010000:  # Teredo: the client address is stored inverted
        wrapped.append(ipaddress.IPv4Address(~value & 0xFFFFFFFF))
    return wrapped


def _known_internal(ip) -> bool:
    return any(ip in block for block in NEVER_PUBLIC) or any(_known_internal(inner) for inner in _wrapped_ipv4(ip))


ipv4s = st.ip_addresses(v=4)
any_address = st.one_of(
    st.ip_addresses(),
    ipv4s.map(lambda v4: ipaddress.IPv6Address(f"::ffff:{v4}")),
    ipv4s.map(lambda v4: ipaddress.IPv6Address(f"64:ff9b::{v4}")),
    ipv4s.map(lambda v4: ipaddress.IPv6Address(f"::{v4}")),
    ipv4s.map(lambda v4: ipaddress.IPv6Address((0x2002 << 112) | (int(v4) << 80))),
    ipv4s.map(lambda v4: ipaddress.IPv6Address((0x20010000 << 96) | (~int(v4) & 0xFFFFFFFF))),
)


@settings(deadline=None)
@given(st.lists(any_address, min_size=1, max_size=4))
def test_accepted_names_pin_only_public_addresses(addresses):
    resolver = resolver_for({"images.example.com": [str(ip) for ip in addresses]})
    try:
        target = validate_url("http://images.example.com/cat.jpg", resolver=resolver)
    except FetchError as error:
        assert error.status == 403
        assert any(f"({ip})" in error.message for ip in addresses)
        return
    pinned = [ipaddress.ip_address(address) for address in target.addresses]
    assert pinned == addresses
    assert all(ip.is_global and not _known_internal(ip) for ip in pinned)


def _render_ipv4(value: int, data) -> str:
    """`value` written as 1 to 4 dot-separated numbers, each in decimal, octal or hex, as inet_aton reads them."""
    count = data.draw(st.integers(1, 4), label="parts")
    last_bits = 8 * (5 - count)
    numbers = [(value >> (8 * (3 - index))) & 0xFF for index in range(count - 1)]
    numbers.append(value & ((1 << last_bits) - 1) if last_bits < 32 else value)
    rendered = []
    for number in numbers:
        style = data.draw(st.sampled_from(["dec", "oct", "hex", "HEX"]), label="style")
        zeros = "0" * data.draw(st.integers(0, 2), label="padding")
        if style == "dec":
            rendered.append(str(number))
        elif style == "oct":
            rendered.append(f"0{zeros}{number:o}")
        else:
            digits = f"{number:x}" if style == "hex" else f"{number:X}"
            rendered.append(f"0{'x' if style == 'hex' else 'X'}{zeros}{digits}")
    return ".".join(rendered)


@settings(deadline=None)
@given(st.integers(0, 2**32 - 1), st.data())
def test_numeric_hosts_mean_what_inet_aton_means(value, data):
    host = _render_ipv4(value, data)
    assert socket.inet_aton(host) == ipaddress.IPv4Address(value).packed
    target = validate_url(f"http://{host}/", allow_private=True, resolver=no_dns)
    assert target.addresses == (str(ipaddress.IPv4Address(value)),)


@settings(deadline=None)
@given(st.sampled_from(PRIVATE_IPV4_BLOCKS), st.integers(0, 2**32 - 1), st.data())
def test_numeric_hosts_in_private_ranges_are_always_refused(block, offset, data):
    address = block[offset % block.num_addresses]
    host = _render_ipv4(int(address), data)
    with pytest.raises(FetchError) as caught:
        validate_url(f"http://{host}:8080/x.png", resolver=no_dns)
    assert caught.value.status == 403
    assert f"({address})" in caught.value.message
