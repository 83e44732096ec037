"""The address a handshake comes from, behind trusted proxies or not.

The peer of the socket is the client unless it is one of ``TRUSTED_PROXIES``; then
the client is the rightmost address of ``X-Forwarded-For`` that is not a trusted
proxy: each trusted proxy appends the address it got the request from, so every hop
right of that one was added by a proxy we trust, and everything left of it may be
made up by the client. Run daphne without ``--proxy-headers`` (which takes the
leftmost, client-chosen address) and list the proxies here instead.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Iterable
from typing import Any

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@functools.lru_cache(maxsize=16)
def networks(trusted: tuple[str, ...]) -> tuple[Network, ...]:
    """``TRUSTED_PROXIES`` entries (addresses or CIDR ranges) as networks."""
    return tuple(ipaddress.ip_network(entry, strict=False) for entry in trusted)


def is_trusted(address: str, trusted: tuple[Network, ...]) -> bool:
    try:
        ip = ipaddress.ip_address(address.strip("[]"))
    except ValueError:
        return False
    return any(ip in network for network in trusted)


def forwarded_hops(headers: Iterable[tuple[bytes, bytes]]) -> list[str]:
    """Every ``X-Forwarded-For`` address, left to right, across repeated headers."""
    hops: list[str] = []
    for name, value in headers:
        if name.lower() == b"x-forwarded-for":
            hops += [hop.strip() for hop in value.decode("latin-1").split(",") if hop.strip()]
    return hops


def client_address(scope: dict[str, Any], trusted_proxies: Iterable[str]) -> str:
    """The client's address for per-address limits (see the module's docstring)."""
    client = scope.get("client") or ("unknown", 0)
    peer = str(client[0])
    trusted = networks(tuple(trusted_proxies))
    if not trusted or not is_trusted(peer, trusted):
        return peer
    hops = forwarded_hops(scope.get("headers", ()))
    for hop in reversed(hops):
        if not is_trusted(hop, trusted):
            return hop
    return hops[0] if hops else peer
