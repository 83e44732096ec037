"""Channel layers for the tests of the replay/live hand-over (docs/protocol.md §11).

A ``joinRoom`` with ``since`` or ``last`` subscribes the connection first, then reads
the history, and the live frames queued meanwhile that the replay covered must be
dropped. How many arrive in that window depends on timing, so a test could pass
without any. These layers make it certain: a history read that replays (``since``
or a positive ``last``) waits until ``HOLD`` kept messages of its stream have been
queued for this process's members first, which includes the joining connection
(it is a member before the read). Reads that replay nothing (a plain join, the
handshake's read of the private stream) are not held.

Selected by ``CHANNEL_LAYERS`` in a test (``override_settings``) or by the
``CHANNEL_LAYER_BACKEND`` of the daphne processes of the scale-out tests; each held
read is counted (``held_reads``) and logged, so a test can tell the window was
exercised.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from typing import Any

from skapi_channels.history import Slice
from skapi_channels.local_layer import LocalChannelLayer
from skapi_channels.protocol import OFFSET
from skapi_channels.redis_fanout import RedisFanoutLayer

logger = logging.getLogger("skapi_channels")

HOLD = 5  # kept messages queued live before a replaying read goes on
WAIT = 20.0  # seconds a held read waits for them before it fails


class HeldReplay:
    """Mixin over a layer that fans out through ``deliver`` and keeps history."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.kept_delivered: Counter[str] = Counter()
        self.held_reads = 0

    def deliver(self, group: str, message: dict[str, Any]) -> None:
        super().deliver(group, message)  # type: ignore[misc]
        if OFFSET in message:
            self.kept_delivered[group] += 1

    async def history_read(
        self, group: str, *, since: int | None = None, last: int | None = None
    ) -> Slice:
        if since is not None or last:
            start = self.kept_delivered[group]
            deadline = time.monotonic() + WAIT
            while self.kept_delivered[group] - start < HOLD:
                if time.monotonic() > deadline:
                    raise TimeoutError(
                        f"held history read of {group}: fewer than {HOLD} kept messages "
                        f"arrived in {WAIT} s"
                    )
                await asyncio.sleep(0.002)
            self.held_reads += 1
            logger.info("Held a history read until %d live messages were queued", HOLD)
        return await super().history_read(group, since=since, last=last)  # type: ignore[misc]


class HeldLocalLayer(HeldReplay, LocalChannelLayer):
    pass


class HeldRedisLayer(HeldReplay, RedisFanoutLayer):
    pass
