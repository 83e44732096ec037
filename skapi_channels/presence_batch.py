"""Group commit: the database calls that arrive together run in one go.

A ``GroupCommit`` wraps a synchronous function that takes a list of requests and
answers a list of results (or exceptions), one per request, such as
``presence.apply_writes``. Callers ``await submit(request)``; the requests queued
while the previous call runs go together into the next call, on Channels' database
thread, so a burst costs one transaction instead of one per request, and a lone
request waits for nothing but its own call. Each caller's await ends when the call
that carried its request has returned (for presence writes: committed), with its
own result.

One queue per event loop; the queue drains in a task of its own, so a caller
cancelled while it waits does not stop the others' requests.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import weakref
from collections import deque
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from channels.db import database_sync_to_async

logger = logging.getLogger("skapi_channels")

Request = TypeVar("Request")


@dataclass
class BatchStats:
    """What a group commit has done so far in this process."""

    batches: int = 0
    requests: int = 0
    largest: int = 0
    # Batches by size: 1, 2-9, 10-99, 100 and more.
    sizes: dict[str, int] = field(default_factory=lambda: dict.fromkeys(SIZE_BANDS, 0))

    def record(self, size: int) -> None:
        self.batches += 1
        self.requests += size
        self.largest = max(self.largest, size)
        band = "1" if size == 1 else "2-9" if size < 10 else "10-99" if size < 100 else "100+"
        self.sizes[band] += 1

    def published(self, prefix: str) -> dict[str, Any]:
        """The figures to publish with the heartbeat, names prefixed."""
        return {
            f"{prefix}batches": self.batches,
            f"{prefix}batched_requests": self.requests,
            f"{prefix}largest_batch": self.largest,
            f"{prefix}batch_sizes": dict(self.sizes),
        }


SIZE_BANDS = ("1", "2-9", "10-99", "100+")


def one_by_one(function: Callable[[Request], Any]) -> Callable[[Sequence[Request]], list[Any]]:
    """``function`` applied to each request of a call, an exception answering only
    the request that raised it: for calls that gain from sharing a thread hop."""

    def apply(requests: Sequence[Request]) -> list[Any]:
        results: list[Any] = []
        for request in requests:
            try:
                results.append(function(request))
            except Exception as error:
                results.append(error)
        return results

    return apply


class _Queue(Generic[Request]):
    def __init__(self) -> None:
        self.waiting: deque[tuple[Request, asyncio.Future[Any]]] = deque()
        self.task: asyncio.Task[None] | None = None


class GroupCommit(Generic[Request]):
    def __init__(
        self,
        apply: Callable[[Sequence[Request]], list[Any]],
        key: Callable[[Request], Hashable] | None = None,
        on_abandoned: Callable[[Request, Any], Request | None] | None = None,
        max_batch: int = 500,
    ) -> None:
        """``key`` names what a request changes: two requests with one key never go
        in one call (the second waits for the next); without it, any may. ``on_abandoned(request,
        result)`` may answer a request that undoes the result of one whose caller
        was cancelled before it arrived."""
        self._apply = database_sync_to_async(apply)
        self._key = key
        self._on_abandoned = on_abandoned
        self.max_batch = max_batch
        self._queues: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Queue[Request]] = (
            weakref.WeakKeyDictionary()
        )
        self.stats = BatchStats()

    async def submit(self, request: Request) -> Any:
        """Queue ``request`` and return its result once the call carrying it is done."""
        return await self._enqueue(request)

    def _enqueue(self, request: Request) -> asyncio.Future[Any]:
        loop = asyncio.get_running_loop()
        queue = self._queues.get(loop)
        if queue is None:
            queue = self._queues[loop] = _Queue()
        future: asyncio.Future[Any] = loop.create_future()
        queue.waiting.append((request, future))
        if queue.task is None or queue.task.done():
            # A context of its own: not the first caller's (its thread-sensitive
            # executor may end with it).
            queue.task = loop.create_task(self._drain(queue), context=contextvars.Context())
        return future

    def _take(self, queue: _Queue[Request]) -> list[tuple[Request, asyncio.Future[Any]]]:
        batch: list[tuple[Request, asyncio.Future[Any]]] = []
        keys: set[Hashable] = set()
        while queue.waiting and len(batch) < self.max_batch:
            request, future = queue.waiting[0]
            if future.cancelled() and self._on_abandoned is None:
                queue.waiting.popleft()
                continue
            if self._key is not None:
                key = self._key(request)
                if key in keys:
                    break
                keys.add(key)
            batch.append(queue.waiting.popleft())
        return batch

    async def _drain(self, queue: _Queue[Request]) -> None:
        # Let the callers that are ready in this turn of the loop join the first call.
        await asyncio.sleep(0)
        while queue.waiting:
            batch = self._take(queue)
            if not batch:
                continue
            requests = [request for request, _ in batch]
            try:
                results = await self._apply(requests)
            except Exception as error:  # the call itself failed: so did every request
                results = [error] * len(batch)
            self.stats.record(len(batch))
            for (request, future), result in zip(batch, results, strict=True):
                if future.done():  # its caller was cancelled: undo what it asked
                    undo = (
                        None if self._on_abandoned is None else self._on_abandoned(request, result)
                    )
                    if undo is not None:  # queued with no one waiting for it
                        abandoned = asyncio.get_running_loop().create_future()
                        abandoned.cancel()
                        queue.waiting.append((undo, abandoned))
                elif isinstance(result, BaseException):
                    future.set_exception(result)
                else:
                    future.set_result(result)
