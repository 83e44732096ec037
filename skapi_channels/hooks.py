"""Authorisation hooks from settings, called without blocking the event loop.

``AUTHORIZE_JOIN(user_id, group) -> bool | str`` and
``AUTHORIZE_MESSAGE(user_id, recipient_user_id) -> bool | str`` may be sync (run on
the database thread, so they may query) or async. A string is the refusal sentence
sent to the client; ``False`` refuses with a default sentence.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from channels.db import database_sync_to_async


async def ask(hook: Callable[..., Any] | None, *args: Any) -> str | None:
    """None when ``hook`` allows (or there is none), else the refusal sentence."""
    if hook is None:
        return None
    if asyncio.iscoroutinefunction(hook):
        verdict = await hook(*args)
    else:
        verdict = await database_sync_to_async(hook)(*args)
    if verdict is True or verdict is None:
        return None
    if isinstance(verdict, str) and verdict:
        return verdict
    return ""
