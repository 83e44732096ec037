"""Presence rows written straight through presence.py, without sockets: a server
process with connections, alive or long dead, with a published time series."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.utils import timezone

from skapi_channels import presence
from skapi_channels.models import ServerProcess


def server_with(
    server_id: str,
    connections: list[tuple[str, str, str | None]],
    *,
    age: float = 0,
    stats: dict[str, Any] | None = None,
    host: str = "web-1",
    pid: int = 100,
) -> None:
    """A process ``server_id`` holding ``(cid, user_id, group)`` connections, whose
    last heartbeat was ``age`` seconds ago."""
    now = timezone.now()
    presence.register_server(server_id, host, pid, now - timedelta(seconds=age + 60))
    for cid, user_id, group in connections:
        assert presence.open_connection(cid, f"chan.{cid}", user_id, server_id, 100)
        if group is not None:
            assert presence.move_connection(cid, user_id, None, group)
    ServerProcess.objects.filter(id=server_id).update(
        heartbeat_at=now - timedelta(seconds=age), stats=stats or {}
    )


def series(start: float, messages: list[int], step: float = 5, connections: int = 3) -> list[Any]:
    """A published series: one point every ``step`` seconds with these message totals."""
    return [[start + i * step, connections, total] for i, total in enumerate(messages)]
