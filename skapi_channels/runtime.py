"""This server process: its presence row, heartbeat, reaper and counters.

Started by the first connection in an event loop (ASGI servers such as daphne have
no startup hook), stopped on shutdown. The reaper runs in every process; any live
process cleans up after a dead one.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import secrets
import socket
from collections import Counter
from typing import Any, Protocol

from channels.layers import get_channel_layer
from django.utils import timezone

from skapi_channels import presence, signals
from skapi_channels.addressing import group_address
from skapi_channels.conf import conf
from skapi_channels.protocol import USER_DISCONNECTED, notice_frame

logger = logging.getLogger("skapi_channels")


class LocalConnection(Protocol):
    async def close_from_server(self, code: int) -> None: ...


class ServerRuntime:
    def __init__(self) -> None:
        self.id = secrets.token_hex(16)
        self.host = socket.gethostname()
        self.pid = os.getpid()
        self.started_at = timezone.now()
        # Counted in memory, published with the heartbeat, never written per message.
        self.counters: Counter[str] = Counter()
        self.connections: set[LocalConnection] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._starting: asyncio.Task[None] | None = None
        self._tasks: list[asyncio.Task[None]] = []

    async def ensure_started(self) -> None:
        """Register this process and start its timers, once per event loop."""
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            self._loop = loop
            self.connections.clear()
            self._starting = loop.create_task(self._start())
        assert self._starting is not None
        await asyncio.shield(self._starting)

    async def _start(self) -> None:
        await presence.aregister_server(self.id, self.host, self.pid, self.started_at)
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._heartbeats()), loop.create_task(self._reaps())]

    async def stop(self) -> None:
        """Stop the timers (the process row stays until ``retire``)."""
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        for task in tasks:
            try:
                await task
            except asyncio.CancelledError:
                pass
        self._loop = None
        self._starting = None

    def stats(self) -> dict[str, Any]:
        return {"connections": len(self.connections), **self.counters}

    async def _heartbeats(self) -> None:
        while True:
            await asyncio.sleep(conf.HEARTBEAT_INTERVAL)
            try:
                alive = await presence.aheartbeat(self.id, self.stats())
                if not alive:
                    await self._resurrect()
            except Exception:
                logger.exception("Heartbeat of server process %s failed", self.id)

    async def _resurrect(self) -> None:
        """Our row was reaped while we lived (a long stall): the tables no longer
        know our sockets, so close them; their clients reconnect and are counted anew."""
        logger.warning(
            "Server process %s was taken for dead and reaped; closing its %d sockets",
            self.id,
            len(self.connections),
        )
        await presence.aregister_server(self.id, self.host, self.pid, self.started_at)
        for local in list(self.connections):
            await local.close_from_server(1012)

    async def _reaps(self) -> None:
        while True:
            # Jitter spreads the reapers of many processes over the interval.
            await asyncio.sleep(conf.REAP_INTERVAL * random.uniform(0.8, 1.2))
            try:
                await self.reap()
            except Exception:
                logger.exception("Reaper of server process %s failed", self.id)

    async def reap(self) -> list[presence.Departure]:
        departures = await presence.areap_dead_servers(conf.DEAD_AFTER)
        if departures:
            logger.info("Reaped %d connections of dead server processes", len(departures))
            await send_disconnect_notices(departures)
            for departure in departures:
                await announce_departure(ServerRuntime, departure)
        return departures


async def send_disconnect_notices(departures: list[presence.Departure]) -> None:
    layer = get_channel_layer()
    if layer is None:
        return
    for departure in departures:
        if departure.group_name is None:
            continue
        text = notice_frame(
            USER_DISCONNECTED, departure.user_id, departure.cid, departure.group_name
        )
        await layer.group_send(
            group_address(departure.group_name),
            {"type": "skapi.frame", "text": text, "rid": departure.group_name},
        )


async def announce_departure(sender: Any, departure: presence.Departure) -> None:
    """The signals of a connection that is gone: left its group, closed."""
    if departure.group_name is not None:
        await signals.group_left.asend(
            sender,
            user_id=departure.user_id,
            cid=departure.cid,
            group=departure.group_name,
            reason="disconnected",
        )
    await signals.connection_closed.asend(
        sender, user_id=departure.user_id, cid=departure.cid, group=departure.group_name
    )


runtime = ServerRuntime()
