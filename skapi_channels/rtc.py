"""Call signalling (docs/protocol.md section 12): where to relay ``rtc`` frames.

An ``rtc`` frame goes to one connection, possibly in another server process, so
the consumer sends it to that connection's layer channel. The channel is looked up
in the presence table once per peer and kept here while fresh; the callee learns
the caller's channel from the relayed event, so its answers need no lookup. A
connection that closes tells the peers it signalled with (``skapi.rtc_gone``), and
they forget it, so a frame to a closed connection is refused as "not open"
instead of vanishing. No SQL runs per relayed frame.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

# How long a route is trusted without looking at the presence table again: the
# bound on relaying into the void when a peer's process dies without telling.
ROUTE_SECONDS = 10.0


@dataclass(frozen=True, slots=True)
class Route:
    channel: str
    user_id: str
    expires: float


class Routes:
    """The signalling peers of one connection: cid -> where it is."""

    def __init__(self) -> None:
        self._routes: dict[str, Route] = {}

    def get(self, cid: str) -> Route | None:
        route = self._routes.get(cid)
        if route is not None and route.expires < time.monotonic():
            del self._routes[cid]
            return None
        return route

    def learn(self, cid: str, channel: str, user_id: str) -> Route:
        route = Route(channel, user_id, time.monotonic() + ROUTE_SECONDS)
        self._routes[cid] = route
        return route

    def forget(self, cid: str) -> None:
        self._routes.pop(cid, None)

    def channels(self) -> set[str]:
        """Every peer's channel, fresh or not (each is told when this one closes)."""
        return {route.channel for route in self._routes.values()}
