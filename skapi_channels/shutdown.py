"""Retiring the process on a graceful shutdown of daphne.

daphne has no ASGI lifespan hook; its Twisted reactor fires "before shutdown"
triggers on SIGTERM and SIGINT and waits for the Deferreds they return.
"""

from __future__ import annotations

import asyncio
import contextvars
import sys
from collections.abc import Awaitable, Callable
from typing import Any

from asgiref.sync import ThreadSensitiveContext


def hook_daphne_shutdown(retire: Callable[[], Awaitable[Any]]) -> bool:
    """Run ``retire()`` before daphne's reactor stops; False when not under a
    running Twisted reactor (other servers call it from their own shutdown hook)."""
    if "twisted.internet.reactor" not in sys.modules:
        return False
    from twisted.internet import reactor
    from twisted.internet.defer import Deferred

    if not reactor.running:
        return False

    async def retire_alone() -> None:
        # A context of its own: the trigger runs outside any consumer, where
        # asgiref's shared single-thread executor may be taken ("would deadlock").
        async with ThreadSensitiveContext():
            await retire()

    def on_shutdown() -> Deferred[None]:
        loop = asyncio.get_event_loop()
        task = loop.create_task(retire_alone(), context=contextvars.Context())
        return Deferred.fromFuture(task)

    # zope interfaces declare methods without self, which misleads mypy.
    reactor.addSystemEventTrigger("before", "shutdown", on_shutdown)  # type: ignore[arg-type]
    return True
