"""Which `Host` names the server answers to without a token, from the addresses it really binds.

A web page can point a name it owns at this machine (DNS rebinding) and then use the app as if it were
that site; its requests still name that site in the `Host` header. Without a token the app therefore
answers only to the addresses it is bound to, the loopback names and the names configured in
IMAGE_SEARCH_ALLOWED_HOSTS. `HOST` is resolved the way the listening socket resolves it, so
`127.000.000.001` means 127.0.0.1, and `0.0.0.0` means every address of the machine: then any
address (an IP literal, which no rebinding page can use) is accepted, but still no other name.
"""
from __future__ import annotations

import dataclasses
import ipaddress
import socket
from urllib.parse import urlsplit

from ..config import Settings

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def bind_addresses(host: str, port: int | None = None) -> list[tuple]:
    """getaddrinfo entries (family, type, proto, _, address) for listening on `host`, as the server binds them."""
    entries = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    return list(dict.fromkeys(entries))


@dataclasses.dataclass(frozen=True)
class HostAllowlist:
    names: frozenset[str]            # lower-case host names, as a browser would send them
    addresses: frozenset[IPAddress]  # the bound addresses
    every_address: bool              # bound to 0.0.0.0 or ::

    @classmethod
    def for_settings(cls, settings: Settings) -> "HostAllowlist":
        addresses = frozenset(ipaddress.ip_address(entry[4][0].split("%")[0]) for entry in bind_addresses(settings.host))
        configured = (name.strip().lower() for name in settings.allowed_hosts.split(","))
        names = {*LOOPBACK_NAMES, *filter(None, configured)}
        if not _is_address(settings.host):
            names.add(settings.host.lower())  # a name like myhost.local, resolved above
        return cls(frozenset(names), addresses, any(address.is_unspecified for address in addresses))

    @property
    def loopback_only(self) -> bool:
        return all(address.is_loopback for address in self.addresses)

    def allows(self, host_header: str) -> bool:
        try:
            hostname = urlsplit(f"//{host_header}").hostname
        except ValueError:
            return False
        if hostname is None:
            return False
        if hostname in self.names:
            return True
        try:
            address = ipaddress.ip_address(hostname)
        except ValueError:
            return False
        return self.every_address or address in self.addresses

    def describe(self) -> str:
        shown = sorted(self.names | {str(address) for address in self.addresses if not address.is_unspecified})
        return ", ".join(shown) + (" and any IP address of this machine" if self.every_address else "")


def _is_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True
