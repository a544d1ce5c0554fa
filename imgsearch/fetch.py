"""Fetch an image from a user-given URL without letting the server act as a proxy into internal networks.

Every hop (the URL and each redirect) is checked the same way: http or https only, no user info, the host is
resolved exactly once, every address it resolves to must be public, and the connection then goes to one of those
checked addresses (pinned), so a second DNS answer can never redirect it. The URL's host name is still what goes
into the `Host` header, the TLS SNI and the certificate check.
"""
from __future__ import annotations

import contextlib
import dataclasses
import ipaddress
import logging
import re
import socket
import time
from typing import Callable, Iterator
from urllib.parse import urljoin, urlsplit

import idna
import requests
import urllib3
from requests.adapters import HTTPAdapter

from .errors import RequestError, shorten


log = logging.getLogger(__name__)

Resolver = Callable[[str, int], list[str]]
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

USER_AGENT = "imgsearch/1.0 (image similarity search; fetches one image a user asked for)"
DEFAULT_PORTS = {"http": 80, "https": 443}
MAX_URL_LENGTH = 4096
CHUNK_SIZE = 64 * 1024
# S3 and some CDNs label images with a generic binary type; the decoder decides what the bytes really are.
GENERIC_BINARY_TYPES = ("application/octet-stream", "binary/octet-stream")
_HOST_NAME = re.compile(r"[a-z0-9_.-]+")
# Special-purpose blocks (IANA registries) that are not globally reachable. Python patch releases disagree on
# some of them in `is_global` (3.11.7 calls 192.0.0.8 and 3fff::1 global), so they are listed explicitly.
# IPv6 forms that carry an IPv4 address are refused whole (IPv4-compatible, IPv4-mapped, NAT64, Teredo), since
# the host or gateway that unwraps them may reach internal IPv4 networks; only 6to4 is checked inside.
_SPECIAL_PURPOSE_NETWORKS = tuple(ipaddress.ip_network(block) for block in (
    "0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16", "172.16.0.0/12",
    "192.0.0.0/24", "192.0.2.0/24", "192.88.99.0/24", "192.168.0.0/16", "198.18.0.0/15", "198.51.100.0/24",
    "203.0.113.0/24", "224.0.0.0/4", "240.0.0.0/4",
    "::/96", "::ffff:0:0/96", "64:ff9b::/96", "64:ff9b:1::/48", "100::/64", "2001::/23", "2001:db8::/32",
    "3fff::/20", "5f00::/16", "fc00::/7", "fe80::/10", "fec0::/10", "ff00::/8",
))


class FetchError(RequestError):
    """A URL that could not or must not be fetched."""


@dataclasses.dataclass(frozen=True)
class Target:
    """A checked URL: `addresses` are the only IPs a connection for it may go to."""

    url: str
    host: str
    host_header: str
    addresses: tuple[str, ...]


def system_resolver(host: str, port: int) -> list[str]:
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(info[4][0] for info in infos))


def is_public_address(ip: IPAddress) -> bool:
    """True only for globally routable unicast addresses; a 6to4 address must also wrap a public IPv4 one."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.sixtofour is not None and not is_public_address(ip.sixtofour):
        return False
    if any(ip in network for network in _SPECIAL_PURPOSE_NETWORKS):
        return False
    # `is_global` alone lets multicast and reserved blocks through, hence the other flags.
    return ip.is_global and not (ip.is_private or ip.is_loopback or ip.is_link_local or ip.is_multicast
                                 or ip.is_reserved or ip.is_unspecified)


def _ipv4_number(part: str) -> int:
    if part[:2].lower() == "0x":
        return int(part[2:] or "0", 16)
    if len(part) > 1 and part.startswith("0"):
        return int(part[1:], 8)
    return int(part, 10)


def parse_numeric_ipv4(host: str) -> ipaddress.IPv4Address | None:
    """Read `host` the way browsers and inet_aton do (`2130706433`, `0x7f.1`, `0177.0.0.1`, `127.1`).

    Returns None when `host` is a name; raises ValueError when it looks numeric but is no valid address.
    """
    parts = host.split(".")
    if len(parts) > 1 and parts[-1] == "":
        parts.pop()
    if not re.fullmatch(r"[0-9]+|0[xX][0-9a-fA-F]*", parts[-1]):
        return None
    if len(parts) > 4:
        raise ValueError("too many parts")
    numbers = [_ipv4_number(part) for part in parts]
    if any(number > 255 for number in numbers[:-1]) or numbers[-1] >= 256 ** (5 - len(numbers)):
        raise ValueError("part out of range")
    value = numbers[-1]
    for index, number in enumerate(numbers[:-1]):
        value += number << (8 * (3 - index))
    return ipaddress.IPv4Address(value)


def _parse_host(netloc_host: str, hostname: str) -> tuple[str, IPAddress | None]:
    """The ASCII host to put in requests, and its address when the URL names one directly."""
    if netloc_host.startswith("["):
        try:
            ip = ipaddress.IPv6Address(hostname)
        except ValueError:
            raise FetchError(f"{shorten(hostname)!r} is not a valid IPv6 address.", 400) from None
        return hostname, ip
    if not hostname.isascii():
        try:
            hostname = idna.encode(hostname, uts46=True).decode("ascii")
        except idna.IDNAError:
            raise FetchError(f"{shorten(hostname)!r} is not a valid host name.", 400) from None
    if not _HOST_NAME.fullmatch(hostname):
        raise FetchError(f"{shorten(hostname)!r} is not a valid host name.", 400)
    try:
        ip = parse_numeric_ipv4(hostname)
    except ValueError:
        raise FetchError(f"{shorten(hostname)!r} is not a valid IP address.", 400) from None
    return hostname, ip


def validate_url(url: str, *, allow_private: bool = False, resolver: Resolver | None = None) -> Target:
    """Check `url` and resolve its host once; raise FetchError (400 malformed, 403 private, 502 unresolvable)."""
    url = url.strip()
    if len(url) > MAX_URL_LENGTH:
        raise FetchError("The URL is too long.", 400)
    if any(ord(char) <= 32 or ord(char) == 127 for char in url):
        raise FetchError("The URL contains spaces or control characters.", 400)
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise FetchError("The URL is malformed (host or port).", 400) from None
    scheme = parts.scheme.lower()
    if scheme not in DEFAULT_PORTS:
        raise FetchError(f"Only http and https URLs can be fetched (not {scheme or 'a URL without scheme'}).", 400)
    if "@" in parts.netloc:
        raise FetchError("URLs with a user name or password are not accepted.", 400)
    if not parts.hostname:
        raise FetchError("The URL has no host.", 400)
    if port == 0:
        raise FetchError("The URL has an invalid port.", 400)
    port = port or DEFAULT_PORTS[scheme]
    host, literal_ip = _parse_host(parts.netloc, parts.hostname)

    if literal_ip is not None:
        addresses = [literal_ip]
        host = f"[{literal_ip}]" if literal_ip.version == 6 else str(literal_ip)
    else:
        try:
            answers = (resolver or system_resolver)(host, port)
            addresses = [ipaddress.ip_address(answer) for answer in answers]
        except (OSError, UnicodeError, ValueError) as exc:
            log.info("could not resolve %s: %s", host, exc)
            raise FetchError(f"Could not resolve {host}.", 502) from None
        if not addresses:
            raise FetchError(f"Could not resolve {host}.", 502)
    if not allow_private:
        for ip in addresses:
            if not is_public_address(ip):
                raise FetchError(
                    f"Refusing to fetch {parts.hostname}: it resolves to a private or local address ({ip}). "
                    "On a trusted network, IMAGE_SEARCH_ALLOW_PRIVATE_URLS=1 allows it.", 403)

    authority = host if port == DEFAULT_PORTS[scheme] else f"{host}:{port}"
    path = parts.path or "/"
    query = f"?{parts.query}" if parts.query else ""
    return Target(url=f"{scheme}://{authority}{path}{query}", host=host, host_header=authority,
                  addresses=tuple(str(ip) for ip in addresses))


class PinnedAddressAdapter(HTTPAdapter):
    """Connects to one given IP whatever host the URL names; the URL's host stays the TLS server name."""

    def __init__(self, address: str):
        self.address = address
        super().__init__(max_retries=0)

    def build_connection_pool_key_attributes(self, request, verify, cert=None):
        host_params, pool_kwargs = super().build_connection_pool_key_attributes(request, verify, cert)
        if host_params["scheme"] == "https":
            # SNI and certificate hostname checks use server_hostname rather than the host we connect to.
            pool_kwargs["server_hostname"] = host_params["host"]
        host_params["host"] = self.address
        return host_params, pool_kwargs


def _timed_out(target: Target, timeout: float) -> FetchError:
    return FetchError(f"Fetching {target.host} timed out after {timeout:g} s.", 502)


def _remaining(deadline: float, target: Target, timeout: float) -> float:
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise _timed_out(target, timeout)
    return remaining


@contextlib.contextmanager
def _open(target: Target, deadline: float, timeout: float) -> Iterator[requests.Response]:
    """Send a GET for `target` to its first checked address that accepts a connection; yield the streamed response."""
    request = requests.Request("GET", target.url, headers={
        "Host": target.host_header,
        "User-Agent": USER_AGENT,
        "Accept": "image/*,*/*;q=0.5",
        # A compressed body could expand past what the byte cap is meant to bound; images are compressed anyway.
        "Accept-Encoding": "identity",
    }).prepare()
    failure: Exception | None = None
    for address in target.addresses:
        remaining = _remaining(deadline, target, timeout)
        adapter = PinnedAddressAdapter(address)
        try:
            try:
                # proxies={} because a proxy would do its own DNS lookup and undo the pinning.
                response = adapter.send(request, stream=True, timeout=(remaining, remaining), verify=True,
                                        proxies={})
            except requests.Timeout:
                raise _timed_out(target, timeout) from None
            except requests.ConnectionError as exc:
                log.info("connecting to %s at %s failed: %s", target.host, address, exc)
                failure = exc
                continue
            except requests.RequestException as exc:
                log.info("request to %s at %s failed: %s", target.host, address, exc)
                raise FetchError(f"Could not fetch {target.host}.", 502) from None
            with response:
                yield response
            return
        finally:
            adapter.close()
    if isinstance(failure, requests.exceptions.SSLError):
        raise FetchError(f"The TLS connection to {target.host} failed (certificate or handshake).", 502)
    raise FetchError(f"Could not connect to {target.host}.", 502)


def _read_image_body(response: requests.Response, target: Target, max_bytes: int, deadline: float,
                     timeout: float) -> bytes:
    if not 200 <= response.status_code < 300:
        raise FetchError(f"{target.host} answered with HTTP status {response.status_code}.", 502)
    media_type = response.headers.get("Content-Type", "").split(";")[0].strip().lower()
    if media_type and not media_type.startswith("image/") and media_type not in GENERIC_BINARY_TYPES:
        raise FetchError(f"The URL points to {media_type}, not an image.", 415)
    declared = response.headers.get("Content-Length", "").strip()
    limit_text = f"The image is larger than the {max_bytes / 2**20:g} MiB limit."
    if declared.isdigit() and int(declared) > max_bytes:
        raise FetchError(limit_text, 413)

    body = bytearray()
    try:
        # read1 returns whatever has arrived, so the deadline is checked even while a server trickles bytes.
        while chunk := response.raw.read1(CHUNK_SIZE, decode_content=True):
            body += chunk
            if len(body) > max_bytes:
                raise FetchError(limit_text, 413)
            _remaining(deadline, target, timeout)
    except urllib3.exceptions.TimeoutError:
        raise _timed_out(target, timeout) from None
    except (urllib3.exceptions.HTTPError, OSError) as exc:
        log.info("reading from %s failed: %s", target.host, exc)
        raise FetchError(f"The connection to {target.host} broke while reading the image.", 502) from None
    return bytes(body)


def fetch_image_bytes(url: str, *, allow_private: bool = False, timeout: float = 10.0,
                      max_bytes: int = 16 * 1024 * 1024, max_redirects: int = 3,
                      resolver: Resolver | None = None) -> bytes:
    """Download the body behind `url` (at most `max_bytes`), following at most `max_redirects` redirects.

    `timeout` is the budget for the whole fetch, redirects included; each connect and read waits at most what is
    left of it, so the call returns within twice `timeout` even against a server that trickles bytes. (DNS lookups
    by the system resolver are not bounded by it.) `allow_private` skips only the address check.
    Raises FetchError: 400 malformed URL, 403 private address, 413 too large, 415 not an image,
    502 upstream error, unreachable host, timeout or too many redirects.
    """
    deadline = time.monotonic() + timeout
    for _hop in range(max_redirects + 1):
        target = validate_url(url, allow_private=allow_private, resolver=resolver)
        with _open(target, deadline, timeout) as response:
            if not response.is_redirect:
                return _read_image_body(response, target, max_bytes, deadline, timeout)
            url = urljoin(target.url, response.headers["Location"])
    raise FetchError(f"Too many redirects (more than {max_redirects}).", 502)
