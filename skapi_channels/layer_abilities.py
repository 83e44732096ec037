"""What skapi_channels' channel layers can do beyond the Channels layer interface.

The consumer and the runtime ask ``isinstance(layer, Ability)``, or ``has(layer,
Ability)`` on the paths every connection takes; a stock layer (channels'
InMemoryChannelLayer, channels-redis's layers) has none of these and works without
them. Keeping the history of the streams is ``history.HistoryLayer``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

_known: dict[tuple[type, type], bool] = {}


def has(layer: Any, ability: type) -> bool:
    """``isinstance(layer, ability)``, answered once per layer class: a check
    against a runtime-checkable Protocol inspects every member each time, and the
    abilities whose answer this caches are methods and class attributes."""
    key = (type(layer), ability)
    known = _known.get(key)
    if known is None:
        known = _known[key] = isinstance(layer, ability)
    return known


@runtime_checkable
class ReportsMissed(Protocol):
    """Tells a receiver what it lost: after ``report_missed_to(channel)``, a
    ``{"type": "skapi.missed", "count": n}`` event precedes its next message when
    ``n`` messages for it were dropped (docs/protocol.md section 10)."""

    def report_missed_to(self, channel: str) -> None: ...


@runtime_checkable
class LosesGroups(Protocol):
    """Keeps its groups where they can be lost (a Redis restart without
    persistence): ``state_lost()`` says when the runtime must add its connections to
    their groups again, and ``skapi_on_reconnect`` is called when the layer reaches
    its server again after an outage, so the runtime checks at once."""

    skapi_on_reconnect: Callable[[], None] | None

    async def state_lost(self) -> bool: ...


@runtime_checkable
class SendsSync(Protocol):
    """Sends without an event loop, for sync callers (``skapi_channels.api`` in a
    WSGI view, a management command, a Celery task), on connections that outlive a
    call: ``group_send_sync`` and ``send_sync`` deliver as ``group_send`` and
    ``send`` do, and the messages of one thread keep their order. A layer without it
    is called through ``async_to_sync``, a new event loop per call."""

    def group_send_sync(self, group: str, message: dict[str, Any]) -> None: ...

    def send_sync(self, channel: str, message: dict[str, Any]) -> None: ...
