"""This process's counters: messages sent, connections opened, deliveries dropped.

Counted in memory (never written per message), published with the runtime's
heartbeat and shown on the monitoring page. The consumer, ``skapi_channels.api``
and the channel layers count here; ``runtime.counters`` is the same object.
"""

from __future__ import annotations

import logging
import time
from collections import Counter

logger = logging.getLogger("skapi_channels")

counters: Counter[str] = Counter()

# The counters that count messages, summed into the published time series.
MESSAGE_COUNTERS = ("group_messages", "private_messages", "server_messages")
# Deliveries a process could not make; the layers count them all in "dropped" (and
# by reason in "dropped_<reason>").
DROP_COUNTERS = ("dropped",)


def count(name: str, amount: int = 1) -> None:
    counters[name] += amount


class DropLog:
    """Counts drops (in all and by reason) and logs them, at most once a second."""

    def __init__(self) -> None:
        self.pending: Counter[str] = Counter()
        self.logged_at = 0.0

    def record(self, amount: int, reason: str) -> None:
        if amount <= 0:
            return
        counters["dropped"] += amount
        counters[f"dropped_{reason}"] += amount
        self.pending[reason] += amount
        now = time.monotonic()
        if now - self.logged_at >= 1.0:
            self.logged_at = now
            summary = ", ".join(f"{n} {why}" for why, n in sorted(self.pending.items()))
            self.pending.clear()
            logger.warning(
                "Channel layer dropped deliveries: %s (total %d in this process)",
                summary,
                counters["dropped"],
            )


drops = DropLog()
