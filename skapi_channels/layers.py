"""A channels-redis layer that never drops a message silently.

``channels_redis.core.RedisChannelLayer`` drops quietly in three places: a
``group_send`` to a process whose queue is at capacity (an INFO log line), a message
older than ``expiry`` trimmed from a queue, and a local receive buffer that
overflows. It also lets a Redis outage raise out of ``receive``, which kills the
consumer without its disconnect handler (its presence row would stay until the
process dies). This subclass:

- counts every dropped delivery in ``metrics.counters["dropped"]`` (published with
  the heartbeat) and logs a warning, at most once a second with a summary;
- tells the receivers that asked (``report_missed_to``) how many messages they
  missed, with a ``{"type": "skapi.missed", "count": n}`` event: the sending process
  records each miss in Redis, the receiving process collects them every
  ``missed_poll`` seconds and wakes the receiver;
- retries Redis commands while Redis is unreachable (``retry_for`` seconds for
  sends and group changes, indefinitely for ``receive``) instead of crashing the
  consumer, and counts the sends given up as drops;
- keeps an epoch key per Redis host, so the runtime can tell that Redis lost its
  state (a restart without persistence) and add its connections to their groups
  again (``state_lost``); the same refreshes the groups before channels-redis
  expires them (``group_expiry``).

Note on capacity: channels-redis keeps one queue per *process* (every connection of
a process shares the key ``<prefix>specific.<process>!``), so ``capacity`` bounds the
undelivered messages of a whole process, not of one connection.

Written against channels-redis 4.3 (its ``group_send`` is reimplemented here to get
the drops back); ``pyproject.toml`` pins ``channels-redis<4.4``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from channels.exceptions import ChannelFull
from channels_redis.core import BoundedQueue
from channels_redis.core import RedisChannelLayer as BaseRedisChannelLayer
from redis import exceptions as redis_errors

from skapi_channels.metrics import drops
from skapi_channels.protocol import EVENT_MISSED

logger = logging.getLogger("skapi_channels")

# What redis-py raises while the server is down or restarting.
REDIS_DOWN: tuple[type[BaseException], ...] = (
    redis_errors.ConnectionError,
    redis_errors.TimeoutError,
    redis_errors.BusyLoadingError,
    ConnectionError,
    OSError,
)

# channels-redis 4.3's group-send script, which also answers which queues were full
# and, for each receiver that missed the message, adds one to its count in the hash
# "<queue key>$missed" (ARGV: messages, capacities, comma-joined receivers, time, expiry).
GROUP_SEND_LUA = """
local n = #KEYS
local over = {}
local current_time = ARGV[#ARGV - 1]
local expiry = ARGV[#ARGV]
for i = 1, n do
    if redis.call('ZCOUNT', KEYS[i], '-inf', '+inf') < tonumber(ARGV[i + n]) then
        redis.call('ZADD', KEYS[i], current_time, ARGV[i])
        redis.call('EXPIRE', KEYS[i], expiry)
    else
        table.insert(over, i)
        local missed = KEYS[i] .. '$missed'
        for name in string.gmatch(ARGV[i + 2 * n], '[^,]+') do
            redis.call('HINCRBY', missed, name, 1)
        end
        redis.call('EXPIRE', missed, expiry)
    end
end
return over
"""

# Take (and clear) the missed counts of one process's receivers.
TAKE_MISSED_LUA = """
local counts = redis.call('HGETALL', KEYS[1])
redis.call('DEL', KEYS[1])
return counts
"""


# Sent to a receiver to wake its ``receive`` for a ``skapi.missed``; never returned.
WAKE: dict[str, Any] = {"type": "skapi.wake"}


class CountingQueue(BoundedQueue):
    """A local receive buffer: drops its oldest message when full, counted."""

    def __init__(self, maxsize: int, on_drop: Callable[[], None]) -> None:
        super().__init__(maxsize)
        self.on_drop = on_drop

    def put_nowait(self, item: Any) -> None:
        if self.full() and self._queue[0].get("type") != WAKE["type"]:  # type: ignore[attr-defined]
            drops.record(1, "buffer_full")
            self.on_drop()
        super().put_nowait(item)


class ReceiveBuffers(dict[str, CountingQueue]):
    """The layer's local receive buffers by channel, made on first use."""

    def __init__(self, layer: RedisChannelLayer) -> None:
        super().__init__()
        self.layer = layer

    def __missing__(self, channel: str) -> CountingQueue:
        queue = self[channel] = CountingQueue(
            self.layer.capacity, lambda: self.layer.missed_locally(channel)
        )
        return queue


class RedisChannelLayer(BaseRedisChannelLayer):
    """``channels_redis.core.RedisChannelLayer`` with counted drops and outage retries.

    Extra CONFIG keys: ``retry_for`` (seconds, default 5), how long a send or a
    group change waits for an unreachable Redis before it gives up (a send is then
    counted as dropped; a group change is redone by the runtime's resync);
    ``missed_poll`` (seconds, default 1), how often a process collects the misses of
    its receivers (``report_missed_to``).
    """

    def __init__(
        self, *args: Any, retry_for: float = 5.0, missed_poll: float = 1.0, **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        self.retry_for = retry_for
        self.missed_poll = missed_poll
        self._reporting: set[str] = set()
        self._missed_loop: asyncio.AbstractEventLoop | None = None
        self._missed_task: asyncio.Task[None] | None = None
        self.receive_buffer = ReceiveBuffers(self)  # type: ignore[assignment]
        # Messages lost by each channel that asked (report_missed_to), not yet told.
        self.missed: Counter[str] = Counter()
        # Set when a group change was given up, so the runtime resyncs the groups.
        self.groups_unsure = False
        self._epochs: dict[int, bytes | None] = {}
        self._refreshed_at = time.monotonic()
        # Called (no arguments) when Redis answers again after an outage, so the
        # runtime checks ``state_lost`` at once rather than at its next heartbeat.
        self.skapi_on_reconnect: Callable[[], None] | None = None

    def _reconnected(self) -> None:
        if self.skapi_on_reconnect is not None:
            self.skapi_on_reconnect()

    # Outages.

    async def _retrying(self, what: str, operation: Any, *args: Any) -> Any:
        deadline = time.monotonic() + self.retry_for
        delay = 0.05
        failed = False
        while True:
            try:
                result = await operation(*args)
            except REDIS_DOWN as error:
                failed = True
                if time.monotonic() + delay > deadline:
                    raise
                logger.debug("Redis unreachable during %s (%s); retrying", what, error)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)
                continue
            if failed:
                self._reconnected()
            return result

    async def receive(self, channel: str) -> dict[str, Any]:
        delay = 0.05
        reported = False
        while True:
            if self.missed.get(channel):
                return {"type": EVENT_MISSED, "count": self.missed.pop(channel)}
            try:
                message: dict[str, Any] = await super().receive(channel)
            except asyncio.CancelledError:
                self._reporting.discard(channel)  # the consumer has ended
                self.missed.pop(channel, None)
                raise
            except REDIS_DOWN as error:
                if not reported:
                    logger.warning("Redis unreachable (%s); receivers wait for it", error)
                    reported = True
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)
                continue
            if reported:
                logger.info("Redis reachable again; receiving")
                self._reconnected()
                reported = False
            if message.get("type") == WAKE["type"]:
                continue
            return message

    async def send(self, channel: str, message: dict[str, Any]) -> None:
        try:
            await self._retrying("send", super().send, channel, message)
        except ChannelFull:
            drops.record(1, "channel_full")
            raise
        except REDIS_DOWN:
            drops.record(1, "redis_down")
            raise

    async def group_add(self, group: str, channel: str) -> None:
        try:
            await self._retrying("group_add", super().group_add, group, channel)
        except REDIS_DOWN:
            logger.warning("Redis unreachable: group_add of %s given up; resync follows", channel)
            self.groups_unsure = True

    async def group_discard(self, group: str, channel: str) -> None:
        try:
            await self._retrying("group_discard", super().group_discard, group, channel)
        except REDIS_DOWN:
            # A stale member only gets events its consumer filters out, until the
            # group expires; nothing to redo.
            logger.warning("Redis unreachable: group_discard of %s given up", channel)

    async def group_send(self, group: str, message: dict[str, Any]) -> None:
        try:
            await self._retrying("group_send", self._group_send, group, message)
        except REDIS_DOWN:
            drops.record(1, "redis_down")

    async def _group_send(self, group: str, message: dict[str, Any]) -> None:
        """channels-redis 4.3's group_send, counting what it drops."""
        assert self.require_valid_group_name(group), "Group name not valid"
        key = self._group_key(group)
        connection = self.connection(self.consistent_hash(group))
        await connection.zremrangebyscore(key, min=0, max=int(time.time()) - self.group_expiry)
        channel_names = [x.decode("utf8") for x in await connection.zrange(key, 0, -1)]
        keys_by_host, message_by_key, capacity_by_key = self._map_channel_keys_to_connection(
            channel_names, message
        )
        receivers_by_key: dict[str, list[str]] = {}
        for name in channel_names:
            local = self.non_local_name(name) if "!" in name else name
            receivers_by_key.setdefault(self.prefix + local, []).append(name)
        for index, channel_keys in keys_by_host.items():
            connection = self.connection(index)
            pipe = connection.pipeline()
            cutoff = int(time.time()) - int(self.expiry)
            for channel_key in channel_keys:
                pipe.zremrangebyscore(channel_key, min=0, max=cutoff)
            expired = await pipe.execute()
            drops.record(sum(int(n) for n in expired), "expired")
            args = [message_by_key[k] for k in channel_keys]
            args += [capacity_by_key[k] for k in channel_keys]
            args += [",".join(receivers_by_key[k]) for k in channel_keys]
            args += [time.time(), self.expiry]
            over = await connection.eval(GROUP_SEND_LUA, len(channel_keys), *channel_keys, *args)
            if over:
                missed = sum(len(receivers_by_key[channel_keys[int(i) - 1]]) for i in over)
                drops.record(missed, "channel_full")

    # Telling receivers what they missed (docs/protocol.md section 10).

    def report_missed_to(self, channel: str) -> None:
        """Give ``channel`` a ``{"type": "skapi.missed", "count": n}`` event, from the
        ``receive`` that follows, when messages for it were dropped: because its
        process's queue in Redis was full (the sending process records the misses in
        Redis; this process collects them every ``missed_poll`` seconds, one command),
        or its local buffer overflowed."""
        self._reporting.add(channel)
        loop = asyncio.get_running_loop()
        if self._missed_loop is not loop:
            self._missed_loop = loop
            self._missed_task = loop.create_task(self._collect_missed())

    async def _collect_missed(self) -> None:
        """Collect every ``missed_poll`` seconds until the layer closes; a round that
        fails is logged (an outage quietly) and the next one runs."""
        while True:
            await asyncio.sleep(self.missed_poll)
            try:
                await self._collect_missed_once()
            except REDIS_DOWN:
                continue
            except Exception:
                logger.exception("Collecting missed counts failed; the next round retries")

    async def _collect_missed_once(self) -> None:
        key = f"{self.prefix}specific.{self.client_prefix}!$missed"
        index = self.consistent_hash(f"specific.{self.client_prefix}!")
        pairs = await self.connection(index).eval(TAKE_MISSED_LUA, 1, key)
        for name, count in zip(pairs[::2], pairs[1::2], strict=True):
            channel = name.decode() if isinstance(name, bytes) else str(name)
            if channel in self._reporting:
                self.missed[channel] += int(count)
                # Through Redis: a receive waiting on it returns, then reports.
                with contextlib.suppress(ChannelFull, *REDIS_DOWN):
                    await BaseRedisChannelLayer.send(self, channel, dict(WAKE))

    async def close_pools(self) -> None:
        """Stop collecting missed counts, then close the connections."""
        task, self._missed_task, self._missed_loop = self._missed_task, None, None
        if task is not None and not task.done():
            task.cancel()
            if task.get_loop() is asyncio.get_running_loop():
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        await super().close_pools()

    def missed_locally(self, channel: str) -> None:
        if channel in self._reporting:
            self.missed[channel] += 1

    # Lost state.

    async def state_lost(self) -> bool:
        """Whether the runtime should add its connections to their groups again:
        a Redis host lost its keys (restarted without persistence, or flushed) since
        the last call, a group change was given up, or half of ``group_expiry`` has
        passed (channels-redis forgets a member after ``group_expiry``, a day by
        default, however long its socket is open). The first call records the epochs."""
        lost = False
        if time.monotonic() - self._refreshed_at > self.group_expiry / 2:
            lost = True
        for index in range(self.ring_size):
            connection = self.connection(index)
            key = f"{self.prefix}:skapi:epoch"
            await connection.set(key, secrets.token_hex(8), nx=True)
            epoch = await connection.get(key)
            known = self._epochs.get(index)
            if known is not None and known != epoch:
                lost = True
            self._epochs[index] = epoch
        if self.groups_unsure:
            self.groups_unsure = False
            lost = True
        if lost:
            self._refreshed_at = time.monotonic()
        return lost
