"""Putting this process's connections back in their channel-layer groups when a
layer that keeps its groups in Redis lost them (``LosesGroups``: channels-redis's
queues). The scale-out fan-out layer keeps its groups in the process and needs none
of this."""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Iterable
from typing import Any

from channels.layers import get_channel_layer

from skapi_channels.addressing import group_address, user_address
from skapi_channels.layer_abilities import LosesGroups

logger = logging.getLogger("skapi_channels")


class LayerResync:
    def __init__(self, connections: Iterable[Any], counters: Counter[str]) -> None:
        self.connections = connections
        self.counters = counters
        self._loop: asyncio.AbstractEventLoop | None = None
        self._recheck: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Listen for the layer's reconnections and record its epochs (before any
        group_add)."""
        self._loop = asyncio.get_running_loop()
        layer = get_channel_layer()
        if isinstance(layer, LosesGroups):
            layer.skapi_on_reconnect = self.reconnected
        await self.check_quietly()

    def reconnected(self) -> None:
        """Redis answers again: check at once whether it lost the groups, so few
        messages go to groups that lack their members."""
        if self._loop is None or (self._recheck is not None and not self._recheck.done()):
            return
        self._recheck = self._loop.create_task(self.check_quietly())

    async def check_quietly(self) -> None:
        try:
            await self.check()
        except Exception as error:
            logger.warning("Channel layer check failed (%s); next heartbeat retries", error)

    async def check(self) -> None:
        """Put the local connections back in their layer groups when the layer lost
        them (Redis restarted without persistence, or a group change was given up
        during an outage)."""
        layer = get_channel_layer()
        if not isinstance(layer, LosesGroups) or not await layer.state_lost():
            return
        local = list(self.connections)
        logger.warning(
            "Adding %d connections to their channel-layer groups again (the layer lost "
            "its state, or its groups are due for a refresh)",
            len(local),
        )
        self.counters["layer_resyncs"] += 1
        for connection in local:
            await layer.group_add(user_address(connection.user_id), connection.channel_name)
            if connection.group is not None:
                await layer.group_add(group_address(connection.group), connection.channel_name)

    def stop(self) -> asyncio.Task[None] | None:
        """The recheck in progress, cancelled (for the caller to await)."""
        task, self._recheck, self._loop = self._recheck, None, None
        if task is not None:
            task.cancel()
        return task
