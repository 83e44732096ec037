"""The consumer's receive loop: messages from the client and from the channel layer,
handled one at a time, in the order they arrive.

Channels' ``await_many_dispatch`` does the same with ``asyncio.wait`` around every
message, which adds and removes a callback on each source and builds a waiter and
two sets each time: about a third of the loop's cost per delivered message. Here
each pending receive calls back once, when it has a message.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

Source = Callable[[], Awaitable[Any]]
# What a source has ready without waiting, or None (see ``dispatch_as_they_come``).
Taker = Callable[[], Any]

# Messages taken without waiting after one received, before the other sources get a
# turn: a client's frame waits behind at most this many queued layer messages.
BURST = 32


async def dispatch_as_they_come(
    sources: Sequence[Source],
    dispatch: Callable[[Any], Awaitable[None]],
    takers: Sequence[Taker | None] = (),
) -> None:
    """Receive from every source at once and ``await dispatch(message)`` for each
    message, one at a time; a source is received from again once its message is
    handled. Ends with what ``dispatch`` or a source raises (``StopConsumer``, an
    error), the pending receives cancelled.

    ``takers[i]``, when given, answers the next message source ``i`` already holds
    (None when it holds none) without awaiting: after a message of that source, the
    ones queued behind it are handled at once, up to ``BURST`` while no other source
    has a message, with no receive started for each (and the socket writes they cause
    go out together)."""
    takers = list(takers) + [None] * (len(sources) - len(takers))
    loop = asyncio.get_running_loop()
    ready: deque[int] = deque()  # sources whose receive has ended, in that order
    waiter: asyncio.Future[None] | None = None

    def arrived(index: int, task: asyncio.Task[Any]) -> None:
        ready.append(index)
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    callbacks = [functools.partial(arrived, index) for index in range(len(sources))]

    def receive(index: int) -> asyncio.Task[Any]:
        task = loop.create_task(sources[index]())  # type: ignore[arg-type]
        task.add_done_callback(callbacks[index])
        return task

    tasks = [receive(index) for index in range(len(sources))]
    try:
        while True:
            if not ready:
                waiter = loop.create_future()
                await waiter
                waiter = None
            index = ready.popleft()
            message = tasks[index].result()
            await dispatch(message)
            take = takers[index]
            if take is not None:
                for _ in range(BURST):
                    if ready:
                        break
                    message = take()
                    if message is None:
                        break
                    await dispatch(message)
            tasks[index] = receive(index)
    finally:
        for task in tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
