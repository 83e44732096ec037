"""The scale-out layer's subscription connection, one per process
(``skapi-sub-<process>`` in CLIENT LIST): what it listens to, the confirmations and
barriers awaited, and the gap check of each group's counters (docs/protocol.md §10)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from typing import TYPE_CHECKING, Any

from redis import asyncio as aioredis

from skapi_channels.layers import REDIS_DOWN

if TYPE_CHECKING:
    from skapi_channels.redis_fanout import RedisFanoutLayer

logger = logging.getLogger("skapi_channels")


class Subscriber:
    """This process's one subscription connection: what it listens to, the
    confirmations and barriers awaited, and the last counter values per channel."""

    def __init__(self, layer: RedisFanoutLayer, loop: asyncio.AbstractEventLoop) -> None:
        self.layer = layer
        self.loop = loop
        self.connection: Any = None
        self.wanted: set[bytes] = set()
        # Per Redis channel, the SUBSCRIBE commands not yet confirmed (in order), each
        # with the futures waiting for it and whether it starts a fresh subscription.
        self.confirming: dict[bytes, deque[tuple[list[asyncio.Future[None]], bool]]] = {}
        # PINGs awaiting their answer: True once answered, False when the
        # connection was lost first.
        self.pongs: deque[asyncio.Future[bool]] = deque()
        # Per channel, the last value of each counter ("n", "o") accounted for
        # (delivered or told); None until the counter's first message on a fresh
        # subscription.
        self.last: dict[bytes, list[int | None]] = {}
        # Per channel subscribed afresh, its counters read just after Redis
        # confirmed: where a counter still None starts, should the connection drop
        # before its first message.
        self.floor: dict[bytes, list[int]] = {}
        self.unread: set[bytes] = set()  # fresh subscriptions whose counters are unread
        self.reading: asyncio.Task[None] | None = None
        # Done while connected with every gap of the last reconnection told.
        self.ready: asyncio.Future[None] = loop.create_future()
        self.epoch: bytes | None = None
        self.task = loop.create_task(self.run())

    # Commands.

    def _send(self, *args: Any) -> None:
        connection = self.connection
        if connection is None:
            return  # run() subscribes to everything wanted once it connects
        self.loop.create_task(self._write(connection, args))

    async def _write(self, connection: Any, args: tuple[Any, ...]) -> None:
        # A failure here is the reader's too: it reconnects.
        with contextlib.suppress(*REDIS_DOWN):
            await connection.send_packed_command(connection.pack_command(*args), False)

    def subscribe(self, name: bytes) -> asyncio.Future[None]:
        self.wanted.add(name)
        future = self.loop.create_future()
        self.confirming.setdefault(name, deque()).append(([future], True))
        self._send("SUBSCRIBE", name)
        return future

    def confirmed(self, name: bytes) -> asyncio.Future[None]:
        """Done once every SUBSCRIBE of ``name`` sent so far is confirmed."""
        pending = self.confirming.get(name)
        if pending:
            return pending[-1][0][0]
        future = self.loop.create_future()
        future.set_result(None)
        return future

    def unsubscribe(self, name: bytes) -> None:
        self.wanted.discard(name)
        self.last.pop(name, None)
        self.floor.pop(name, None)
        self._send("UNSUBSCRIBE", name)

    async def barrier(self) -> None:
        """Return once everything Redis published before now has been handled, or
        told as missed: while the connection is down, that waits for the next one
        and its reconciliation (a member leaving then is told its gap first)."""
        while True:
            await asyncio.shield(self.ready)
            if await self._ping():
                return

    def _ping(self) -> asyncio.Future[bool]:
        future = self.loop.create_future()
        if self.connection is None:
            future.set_result(False)
        else:
            self.pongs.append(future)
            self._send("PING")
        return future

    # The connection.

    async def run(self) -> None:
        delay = 0.05
        down_since: float | None = None
        while True:
            connection = self.layer.pool.make_connection()
            try:
                await connection.connect()
                # Named for operators (CLIENT LIST) and for tests that disconnect it.
                await connection.send_command("CLIENT", "SETNAME", self.layer.subscriber_name)
                await connection.read_response()
                epoch = await self.layer.epoch()
                if self.epoch is not None and epoch != self.epoch:
                    # Redis lost its data: the counters restarted from zero, and every
                    # message of the new numbering is owed to the members here (those
                    # who joined while Redis was down too).
                    for name in self.wanted:
                        self.last[name] = [0, 0]
                    self.floor.clear()
                    for name, pending in self.confirming.items():
                        self.confirming[name] = deque((f, False) for f, _ in pending)
                self.epoch = epoch
                self.connection = connection
                reconnected = down_since is not None
                self._resubscribe(connection)
                if reconnected:
                    logger.info("Redis reachable again; subscriptions restored")
                    self.loop.create_task(self._reconcile(connection))
                elif not self.ready.done():
                    self.ready.set_result(None)
                down_since = None
                delay = 0.05
                while True:
                    reply = await connection.read_response(disable_decoding=True)
                    try:
                        self._handle(reply)
                    except Exception:
                        logger.exception("Could not handle a message from Redis: %r", reply)
            except asyncio.CancelledError:
                await connection.disconnect(nowait=True)
                raise
            except (*REDIS_DOWN, aioredis.RedisError) as error:
                self.connection = None
                with contextlib.suppress(Exception):
                    await connection.disconnect(nowait=True)
                self._lost_connection()
                if down_since is None:
                    down_since = time.monotonic()
                    logger.warning("Redis subscription connection lost (%s); reconnecting", error)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)

    def _lost_connection(self) -> None:
        if self.ready.done():
            self.ready = self.loop.create_future()
        for future in self.pongs:
            if not future.done():
                future.set_result(False)
        self.pongs.clear()
        # Every wanted channel is subscribed again on the next connection; the
        # futures of the unconfirmed commands wait for that.
        for name in list(self.confirming):
            futures = [f for entry in self.confirming.pop(name) for f in entry[0]]
            if name in self.wanted:
                self.confirming[name] = deque([(futures or [self.loop.create_future()], False)])
            else:
                for future in futures:
                    if not future.done():
                        future.set_result(None)

    def _resubscribe(self, connection: Any) -> None:
        names = sorted(self.wanted)
        for name in names:
            if name not in self.confirming:
                self.confirming[name] = deque([([self.loop.create_future()], False)])
        for start in range(0, len(names), 1000):
            self._send("SUBSCRIBE", *names[start : start + 1000])

    async def _reconcile(self, connection: Any) -> None:
        """After a reconnection: tell the gaps of groups whose messages were
        published while this process was not subscribed, without waiting for their
        next message; then the subscriber is ready again."""
        while self.connection is connection:
            try:
                await self._tell_gaps()
            except REDIS_DOWN:
                await asyncio.sleep(0.2)
                continue
            except Exception:
                logger.exception("Could not check the counters after a reconnection")
            break
        if self.connection is connection and not self.ready.done():
            self.ready.set_result(None)

    async def _tell_gaps(self) -> None:
        names = [n for n in self.wanted if n in self.last or n in self.floor]
        await asyncio.gather(*(asyncio.shield(self.confirmed(n)) for n in names))
        counts = await self._counters(names)
        if not await self._ping():
            return  # lost again: the next reconnection reconciles
        for name, values in zip(names, counts, strict=True):
            last = self.last.get(name)
            if last is None or name not in self.wanted:
                continue
            floor = self.floor.get(name)
            missed = 0
            for index, current in enumerate(values):
                seen = last[index]
                if seen is None and floor is not None:
                    seen = floor[index]  # nothing arrived since it subscribed
                # A restart of the numbering was seen at the connection (the epoch);
                # here a counter can only be ahead of what arrived.
                if seen is not None and current > seen:
                    last[index] = current
                    missed += current - seen
            if missed:
                self.layer.missed_on(name, missed)

    async def _counters(self, names: list[bytes]) -> list[list[int]]:
        """The counters ("n", "o") of the groups ``names``, in one round trip."""
        pipe = self.layer.redis.pipeline(transaction=False)
        for name in names:
            pipe.hmget(self.layer.counter_key(name), "n", "o")
        return [[int(v or 0) for v in values] for values in await pipe.execute()]

    async def _read_floors(self) -> None:
        """Read the counters of the channels just subscribed afresh (in batches)."""
        while self.unread:
            names, self.unread = sorted(self.unread), set()
            try:
                counts = await self._counters(names)
            except REDIS_DOWN:
                return  # their counters start unknown; a restart (epoch) still resets them
            for name, values in zip(names, counts, strict=True):
                if name in self.wanted:
                    self.floor[name] = values

    # What Redis sends.

    def _handle(self, reply: Any) -> None:
        kind = reply[0]
        if kind == b"message":
            self._message(reply[1], reply[2])
        elif kind == b"subscribe":
            name = reply[1]
            pending = self.confirming.get(name)
            if pending:
                futures, fresh = pending.popleft()
                if not pending:
                    del self.confirming[name]
                if fresh or name not in self.last:
                    self.last[name] = [None, None]
                    self.floor.pop(name, None)
                    self.unread.add(name)
                    if self.reading is None or self.reading.done():
                        self.reading = self.loop.create_task(self._read_floors())
                for future in futures:
                    if not future.done():
                        future.set_result(None)
        elif kind == b"pong" and self.pongs:
            future = self.pongs.popleft()
            if not future.done():
                future.set_result(True)

    def _message(self, name: bytes, data: bytes) -> None:
        if name not in self.wanted:
            return  # unsubscribed while the message was on its way
        head, _, payload = data.partition(b":")
        if head[:1] == b"o":  # a kept message: "o<offset>/<epoch>"
            number, _, epoch = head[1:].partition(b"/")
            index = 1
        else:  # "n<seq>"
            number, epoch, index = head[1:], b"", 0
        seq = int(number)
        counters = self.last.get(name)
        if counters is None:
            counters = self.last[name] = [None, None]
        last = counters[index]
        if last is None:
            missed = 0
        elif seq > last:
            missed = seq - last - (1 if payload else 0)
        else:  # the counter restarted: what came before this one was not seen
            missed = seq - (1 if payload else 0)
        counters[index] = seq
        if missed > 0:
            self.layer.missed_on(name, missed)
        if payload:
            self.layer.arrived(name, payload, seq if index else 0, epoch)
