"""This server process: its presence row, heartbeat, reaper and counters (its
channel-layer resync lives in layer_resync.py, the shutdown hook in shutdown.py).

Started by the first connection in an event loop (ASGI servers such as daphne have
no startup hook), stopped on shutdown. The reaper runs in every process; any live
process cleans up after a dead one.

On a graceful shutdown (SIGTERM/SIGINT) the process retires: it removes its own
rows, sends the notices and deletes its process row. Under daphne this runs from
a Twisted "before shutdown" trigger, which the reactor awaits; other servers call
``runtime.retire()`` from their own shutdown hook.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import secrets
import socket
import time
from collections import Counter, deque
from typing import Any, Protocol

from channels.layers import get_channel_layer
from django.utils import timezone

from skapi_channels import metrics, presence, revocation, signals
from skapi_channels.addressing import group_address
from skapi_channels.conf import conf
from skapi_channels.layer_resync import LayerResync
from skapi_channels.protocol import (
    CLOSE_SERVER_RESTART,
    USER_DISCONNECTED,
    frame_event,
    notice_frame,
)
from skapi_channels.shutdown import hook_daphne_shutdown

logger = logging.getLogger("skapi_channels")

# Points of the series kept: ten minutes at the default 5 s heartbeat.
SAMPLES_KEPT = 120


class LocalConnection(Protocol):
    channel_name: str
    user_id: str
    group: str | None

    async def close_from_server(self, code: int) -> None: ...


class ServerRuntime:
    def __init__(self, counters: Counter[str] | None = None) -> None:
        self.id = secrets.token_hex(16)
        self.host = socket.gethostname()
        self.pid = os.getpid()
        self.started_at = timezone.now()
        # Counted in memory, published with the heartbeat, never written per message.
        # (The process's runtime publishes ``metrics.counters``.)
        self.counters: Counter[str] = Counter() if counters is None else counters
        # (epoch seconds, open connections, messages so far), one per heartbeat:
        # the monitoring page draws its charts from these (monitoring.py).
        self.samples: deque[tuple[float, int, int]] = deque(maxlen=SAMPLES_KEPT)
        self.connections: set[LocalConnection] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._starting: asyncio.Task[None] | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._shutdown_hooked = False
        self.resync = LayerResync(self.connections, self.counters)
        self.retired = False

    async def ensure_started(self) -> None:
        """Register this process and start its timers, once per event loop."""
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            self._loop = loop
            self.connections.clear()
            self._starting = None
        starting = self._starting
        if starting is None or (
            starting.done() and (starting.cancelled() or starting.exception() is not None)
        ):
            # First call, or the last start failed (the database was unavailable):
            # this handshake tries again.
            starting = self._starting = loop.create_task(self._start())
        await asyncio.shield(starting)

    async def _start(self) -> None:
        await presence.aregister_server(self.id, self.host, self.pid, self.started_at)
        self.retired = False
        await self.resync.start()
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._heartbeats()),
            loop.create_task(self._reaps()),
            loop.create_task(revocation.sweeps(self.connections)),
        ]
        if not self._shutdown_hooked:
            self._shutdown_hooked = hook_daphne_shutdown(self.retire)

    async def retire(self) -> list[presence.Departure]:
        """Leave the deployment: stop the timers, remove this process's rows (its
        connections and its process row, fixing the counts) and send the notices.

        Safe to call more than once; the sockets are left to the server to close."""
        if self.retired:
            return []
        self.retired = True
        await self.stop()
        try:
            departures = await presence.areap_server(self.id, None)
            logger.info(
                "Server process %s retired with %d connections", self.id, len(departures)
            )
            await send_disconnect_notices(departures)
            for departure in departures:
                await announce_departure(ServerRuntime, departure)
        except Exception:
            # The reaper of another process cleans up after DEAD_AFTER instead.
            logger.exception("Server process %s could not retire", self.id)
            return []
        return departures

    async def stop(self) -> None:
        """Stop the timers (the process row stays until ``retire``)."""
        tasks, self._tasks = self._tasks, []
        recheck = self.resync.stop()
        if recheck is not None:
            tasks.append(recheck)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._loop = None
        self._starting = None

    def stats(self) -> dict[str, Any]:
        return {
            "connections": len(self.connections),
            **self.counters,
            **presence.group_commit.stats.published("presence_"),
            "series": list(self.samples),
        }

    def sample(self) -> None:
        """Add a point to the time series published with the heartbeat."""
        messages = sum(self.counters[name] for name in metrics.MESSAGE_COUNTERS)
        self.samples.append((round(time.time(), 3), len(self.connections), messages))

    async def _heartbeats(self) -> None:
        while True:
            await asyncio.sleep(conf.HEARTBEAT_INTERVAL)
            self.sample()
            try:
                alive = await presence.aheartbeat(self.id, self.stats())
                if not alive:
                    await self._resurrect()
            except Exception:
                logger.exception("Heartbeat of server process %s failed", self.id)
            await self.resync.check_quietly()

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
            await local.close_from_server(CLOSE_SERVER_RESTART)

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


NOTICES_AT_ONCE = 32


async def send_disconnect_notices(departures: list[presence.Departure]) -> None:
    layer = get_channel_layer()
    if layer is None:
        return
    sends = [
        (
            group_address(departure.group_name),
            frame_event(
                notice_frame(
                    USER_DISCONNECTED, departure.user_id, departure.cid, departure.group_name
                ),
                rid=departure.group_name,
            ),
        )
        for departure in departures
        if departure.group_name is not None
    ]
    # Some at a time: the notices of a process that died with thousands of
    # connections go out in a fraction of the round trips, the layer not flooded.
    for start in range(0, len(sends), NOTICES_AT_ONCE):
        batch = sends[start : start + NOTICES_AT_ONCE]
        await asyncio.gather(*(layer.group_send(address, event) for address, event in batch))


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


runtime = ServerRuntime(metrics.counters)
