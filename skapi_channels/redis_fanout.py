"""The scale-out channel layer: one Redis publish per group message, fan-out in
each process.

channels-redis copies a group message into the queue of every member channel, so
a broadcast costs Redis work in proportion to the group's size. Here a
``group_send`` is one Lua script round trip that numbers the message (a counter per
group) and PUBLISHes it once; every process subscribes to the groups its own
channels are in (one subscription per group and process, counted by its local
members) and hands the message to those channels with the embedded layer's
machinery (``LocalChannelLayer``: bounded queues, counted drops, ``skapi.missed``).

What docs/protocol.md section 10 asks, on this path:

- per-sender order: a sender awaits each publish; a process reads all its
  subscriptions from one connection, in the order Redis published them;
- the owed window: ``group_add`` returns once Redis confirmed the subscription, so
  a message published after a ``joinRoom`` ack reaches the new member;
  ``group_discard`` first waits for a PING through the subscription connection, so
  every message published before the leave is queued for the member before it stops
  being one (the consumer's drain marker then follows them); while that connection
  is down it waits (up to ``retry_for``) for the next one and its counter check, so
  a member leaving then is told its gap first;
- nothing lost silently: each message carries its group counter's value. A
  process that sees a gap (its subscription connection dropped, Redis disconnected
  a subscriber that fell behind, Redis restarted) tells the affected members with
  ``{"type": "skapi.missed", "count": n}``. After a reconnection the process reads
  the counters once, so a gap is told even if no further message comes (for a group
  with no message since it was subscribed, from the counters read just after the
  subscription was confirmed); a send that
  gave up while Redis was down is later published as a gap marker (the counter
  advances without a message), so its receivers are told too;
- a Redis restart: receives never touch Redis (the queues are local), sends and
  group changes wait up to ``retry_for`` seconds, the subscriptions come back by
  themselves (the process knows its members), so the runtime has nothing to resync;
- bounded memory: a channel queues at most ``capacity`` messages (then it is told,
  or taken for abandoned, as in the embedded layer); Redis bounds what it buffers
  for a subscriber (``client-output-buffer-limit pubsub``) and disconnects one that
  falls further behind, which the gap check reports.

Publishing goes through one connection per process and event loop
(``skapi-pub-<process>`` in CLIENT LIST), pipelined: the scripts of one turn of the
loop are written at once and answered in order. Sync callers (``skapi_channels.api``
in a WSGI view, a management command, a Celery task) publish without an event loop
through a pool of blocking connections the layer keeps (``skapi-sync-<process>``),
shared with their history reads: the same script, retries and gap markers.

A channel name carries its process (``specific.<process>!<token>``): ``send`` to a
channel of this process is queued directly, to another process it is published on
that process's own subscription channel.

Redis operations per group message, whatever the group's size: one EVALSHA
running HINCRBY + PUBLISH (3 commands), and for a message kept in history HINCRBY +
RPUSH + HGET (the epoch) + PUBLISH (5 commands), in the steady state. The first
message of a stream also sets the epoch and the expiries; the history is trimmed
in batches (LTRIM once it holds a quarter more than ``HISTORY_SIZE``, at least 16
more; readers take its newest ``HISTORY_SIZE``), and each process refreshes the
expiries of a stream it publishes to about once a minute (REFRESH_EVERY), so those
commands are occasional. Redis then writes the message once to each subscribed
process. A group has two counters: "o" numbers its kept messages (their offsets,
docs/protocol.md §11), "n" everything else it published (messages not kept, gap
markers); each receiving process checks each counter for gaps.
One Redis server (or a Sentinel-managed master, through channels-redis's
host options); see docs/deployment.md.

The connections are in their own modules: ``redis_publisher`` (the scripts),
``redis_subscriber`` (subscriptions and gap checks); the scripts in ``redis_scripts``.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import secrets
import threading
import time
from collections import Counter
from collections.abc import Iterable
from typing import Any

import redis
from asgiref.sync import async_to_sync
from channels_redis.serializers import registry
from channels_redis.utils import create_pool, decode_hosts
from django.core.exceptions import ImproperlyConfigured
from redis import asyncio as aioredis
from redis.sentinel import Sentinel, SentinelConnectionPool

from skapi_channels.history import Slice, retention, slice_of
from skapi_channels.layers import REDIS_DOWN
from skapi_channels.local_layer import LocalChannelLayer
from skapi_channels.protocol import EPOCH, KEEP, OFFSET
from skapi_channels.redis_publisher import Publisher
from skapi_channels.redis_scripts import EPOCH_LUA, HISTORY_LUA, PUBLISH_LUA
from skapi_channels.redis_subscriber import Subscriber

logger = logging.getLogger("skapi_channels")

TO = "__skapi_to"  # the target channel of a message sent to another process

# How often (s) a process refreshes the expiry of a group's counter and history while
# it publishes to them, and how many such keys it remembers.
REFRESH_EVERY = 60
REFRESHED_KEYS = 10_000



class RedisFanoutLayer(LocalChannelLayer):
    """A Channels layer for many processes: groups published once through Redis.

    CONFIG: ``hosts`` (one entry, as channels-redis takes it: a URL, or a dict with
    Sentinel's ``master_name`` and ``sentinels``), ``prefix``, ``capacity`` and
    ``channel_capacity`` (per channel, as the embedded layer), ``expiry``,
    ``group_expiry`` (how long an idle group's counter lives), ``retry_for``
    (seconds a send or a group change waits for an unreachable Redis, default 5),
    ``serializer_format`` and ``symmetric_encryption_keys`` (channels-redis's
    serializers, msgpack by default).

    It keeps the history of the streams (``history.HistoryLayer``) in Redis, next
    to the counter, in the publishing script: a kept message gets its offset and
    is stored and published in one round trip, so every process delivers and
    replays the same offsets. The retention is ``HISTORY_SIZE`` / ``HISTORY_TTL``.
    """

    extensions = ["groups", "flush"]
    keeps_history = True
    # Sync callers (history reads, sends): a pool of blocking connections and the
    # scripts run through it, made at first use (``_sync_client``).
    _sync_pool: Any = None
    _sync_redis: Any = None
    _sync_history_script: Any = None
    _sync_publish_script: Any = None

    def __init__(
        self,
        hosts: Iterable[Any] | None = None,
        prefix: str = "skapi",
        expiry: int = 60,
        group_expiry: int = 86400,
        capacity: int = 1000,
        channel_capacity: dict[str, int] | None = None,
        retry_for: float = 5.0,
        serializer_format: str = "msgpack",
        symmetric_encryption_keys: Iterable[str] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            expiry=expiry,
            group_expiry=group_expiry,
            capacity=capacity,
            channel_capacity=channel_capacity,
        )
        decoded = decode_hosts(hosts)
        if len(decoded) != 1:
            raise ImproperlyConfigured(
                "RedisFanoutLayer takes one Redis host (a URL or a Sentinel entry), "
                f"not {len(decoded)}: messages of one sender must go through one server "
                "to keep their order."
            )
        self.host = decoded[0]
        self.prefix = prefix
        self.group_expiry = group_expiry
        self.retry_for = retry_for
        self.serializer = registry.get_serializer(
            serializer_format, symmetric_encryption_keys=symmetric_encryption_keys
        )
        self.process = secrets.token_hex(6)
        self.inbox = f"{prefix}:p:{self.process}".encode()
        self.subscriber_name = f"skapi-sub-{self.process}"
        self.publisher_name = f"skapi-pub-{self.process}"
        self._group_prefix = f"{prefix}:g:".encode()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._subscriber: Subscriber | None = None
        self.pool: Any = None
        self.redis: Any = None
        self._publisher: Publisher | None = None
        # New epochs: this process's random id and a count, unique without the cost
        # of a random token per message.
        self._epochs = itertools.count()
        # Sends given up while Redis was down, per Redis channel: published later as
        # gap markers so their receivers are told.
        self.unsent: Counter[bytes] = Counter()
        self._telling: asyncio.Task[None] | None = None
        # When this process last refreshed the expiry of a key (monotonic), oldest
        # first; at most REFRESHED_KEYS entries. Shared by the event loop and the
        # threads of sync senders, under the lock.
        self._refreshed: dict[bytes, float] = {}
        self._refreshed_lock = threading.Lock()
        # Sync sends given up while Redis was down, per Redis channel, and the thread
        # that publishes their gap markers once Redis answers (None when idle).
        self._unsent_sync: Counter[bytes] = Counter()
        self._unsent_sync_lock = threading.Lock()
        self._telling_sync: threading.Thread | None = None

    # Connections, one set per event loop.

    def _client(self) -> asyncio.AbstractEventLoop:
        """Connections for commands, made in the running event loop. Sending needs
        no subscription: a process that only sends (a management command, a worker
        calling ``skapi_channels.api``) starts none."""
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            self._loop = loop
            self._subscriber = None  # it belonged to a loop that is gone
            self.pool = create_pool(self.host)
            self.redis = aioredis.Redis(connection_pool=self.pool)
            self._publisher = Publisher(self, loop)
        return loop

    def _ensure(self) -> Subscriber:
        loop = self._client()
        if self._subscriber is None:
            self._subscriber = Subscriber(self, loop)
            self._subscriber.subscribe(self.inbox)
            for group in self.groups:
                self._subscriber.subscribe(self.channel_key(group))
        return self._subscriber

    async def epoch(self) -> bytes:
        value: bytes = await self.redis.eval(
            EPOCH_LUA, 1, f"{self.prefix}:epoch", secrets.token_hex(8)
        )
        return value

    def channel_key(self, group: str) -> bytes:
        return self._group_prefix + group.encode()

    def counter_key(self, channel: bytes) -> bytes:
        return channel + b"#n"

    def history_key(self, channel: bytes) -> bytes:
        return channel + b"#h"

    # Messages in.

    def arrived(self, name: bytes, payload: bytes, offset: int = 0, epoch: bytes = b"") -> None:
        message = self.serializer.deserialize(payload)
        if offset:
            message[OFFSET], message[EPOCH] = offset, epoch.decode()
        if name == self.inbox:
            target = message.pop(TO, "")
            if not self._put(target, message):
                self._lost(target)
                self._count_drops(1)
            return
        self.deliver(name[len(self._group_prefix) :].decode(), message)

    def missed_on(self, name: bytes, count: int) -> None:
        if name == self.inbox:
            # Which channels they were for is unknown: counted and logged only.
            self._count_drops(count, "not_received")
        else:
            self.tell_missed(name[len(self._group_prefix) :].decode(), count)

    # Channel layer API.

    async def new_channel(self, prefix: str = "specific.") -> str:
        # Listening on this process's own channel before a name is handed out.
        subscriber = self._ensure()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(
                asyncio.shield(subscriber.confirmed(self.inbox)), self.retry_for
            )
        return f"{prefix}{self.process}!{secrets.token_urlsafe(12)}"

    def _is_local(self, channel: str) -> bool:
        return channel.partition("!")[0].endswith(self.process)

    async def send(self, channel: str, message: dict[str, Any]) -> None:
        assert isinstance(message, dict), "message is not a dict"
        self.require_valid_channel_name(channel)
        if self._is_local(channel) or "!" not in channel:
            await super().send(channel, message)
            return
        process = channel.partition("!")[0].rpartition(".")[2]
        self._client()
        await self._publish(f"{self.prefix}:p:{process}".encode(), {**message, TO: channel})

    async def receive(self, channel: str) -> dict[str, Any]:
        self._ensure()
        return await super().receive(channel)

    async def group_add(self, group: str, channel: str) -> None:
        subscriber = self._ensure()
        fresh = group not in self.groups
        await super().group_add(group, channel)
        name = self.channel_key(group)
        waiter = subscriber.subscribe(name) if fresh else subscriber.confirmed(name)
        try:
            await asyncio.wait_for(asyncio.shield(waiter), self.retry_for)
        except TimeoutError:
            # Redis is unreachable: the subscription is made when it answers again.
            logger.warning("Redis unreachable: subscription to %s not confirmed yet", group)

    async def group_discard(self, group: str, channel: str) -> None:
        self.require_valid_group_name(group)
        self.require_valid_channel_name(channel)
        members = self.groups.get(group)
        if members is not None and channel in members:
            # Everything published to the group before now reaches the channel first.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._ensure().barrier(), self.retry_for)
        await super().group_discard(group, channel)

    def _leave(self, group: str, channel: str) -> None:
        super()._leave(group, channel)
        if group not in self.groups and self._subscriber is not None:
            self._subscriber.unsubscribe(self.channel_key(group))

    async def group_send(self, group: str, message: dict[str, Any]) -> None:
        assert isinstance(message, dict), "Message is not a dict"
        self.require_valid_group_name(group)
        self._client()
        await self._publish(self.channel_key(group), message)

    async def _publish(self, name: bytes, message: dict[str, Any]) -> None:
        keep = bool(message.get(KEEP))
        payload = self.serializer.serialize(message)
        deadline = time.monotonic() + self.retry_for
        delay = 0.05
        while True:
            try:
                await self._run_script(name, payload, 1, keep)
                return
            except REDIS_DOWN as error:
                if time.monotonic() + delay > deadline:
                    logger.warning("Redis unreachable: a message was not sent (%s)", error)
                    self._count_drops(1, "redis_down")
                    self.unsent[name] += 1
                    if self._telling is None or self._telling.done():
                        self._telling = asyncio.get_running_loop().create_task(self._tell_unsent())
                    return
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)

    async def _run_script(
        self, name: bytes, payload: bytes, increment: int, keep: bool = False
    ) -> int:
        keys, args = self._script_call(name, payload, increment, keep)
        assert self._publisher is not None
        return int(await self._publisher.publish(keys, args))

    def _script_call(
        self, name: bytes, payload: bytes, increment: int, keep: bool
    ) -> tuple[list[bytes], list[Any]]:
        """The keys and arguments of PUBLISH_LUA publishing ``payload`` (empty: a gap
        marker standing for ``increment`` messages) on the Redis channel ``name``."""
        size, ttl = retention() if keep else (0, 0.0)
        counter, history = self.counter_key(name), self.history_key(name)
        keys = [counter, name, history]
        args = [
            payload,
            self.group_expiry + REFRESH_EVERY,
            increment,
            f"{self.process}{next(self._epochs):x}",
            size,
            # A message pushed just before the next refresh still lives ``ttl``.
            int(ttl + 0.999) + REFRESH_EVERY,
            repr(time.time()),
            self._due(counter),
            self._due(history) if size else 0,
            max(16, size // 4),
        ]
        return keys, args

    def _due(self, key: bytes) -> int:
        """1 if this process has not refreshed ``key``'s expiry for REFRESH_EVERY
        seconds (and counts it as refreshed now), else 0."""
        with self._refreshed_lock:
            now = time.monotonic()
            refreshed = self._refreshed
            at = refreshed.get(key)
            if at is not None and now - at < REFRESH_EVERY:
                return 0
            refreshed.pop(key, None)
            refreshed[key] = now  # the newest last
            while (
                len(refreshed) > REFRESHED_KEYS
                or now - next(iter(refreshed.values())) > REFRESH_EVERY
            ):
                del refreshed[next(iter(refreshed))]
            return 1

    async def _tell_unsent(self) -> None:
        """Once Redis answers again, advance the counters of the groups whose sends
        were given up, with a gap marker, so their receivers are told."""
        delay = 0.2
        while self.unsent:
            name, count = next(iter(self.unsent.items()))
            try:
                await self._run_script(name, b"", count)
            except REDIS_DOWN:
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
                continue
            self.unsent[name] -= count
            if self.unsent[name] <= 0:
                del self.unsent[name]

    # Sending from sync code (layer_abilities.SendsSync).

    def group_send_sync(self, group: str, message: dict[str, Any]) -> None:
        """``group_send`` for sync code (``api.broadcast`` in a WSGI view, a management
        command, a Celery task), without an event loop: the same script through the
        blocking connections of ``history_read_sync``, so calls open no connections
        of their own. A sender's messages keep their order (each call returns once
        Redis answered); while Redis is down a call waits up to ``retry_for``, then
        gives up as ``group_send`` does (counted, and told later as a gap)."""
        assert isinstance(message, dict), "Message is not a dict"
        self.require_valid_group_name(group)
        self._publish_sync(self.channel_key(group), message)

    def send_sync(self, channel: str, message: dict[str, Any]) -> None:
        """``send`` for sync code, as ``group_send_sync``. A channel of this process
        is queued through ``async_to_sync`` (its queues belong to its event loop)."""
        assert isinstance(message, dict), "message is not a dict"
        self.require_valid_channel_name(channel)
        if self._is_local(channel) or "!" not in channel:
            async_to_sync(self.send)(channel, message)
            return
        process = channel.partition("!")[0].rpartition(".")[2]
        self._publish_sync(f"{self.prefix}:p:{process}".encode(), {**message, TO: channel})

    def _sync_client(self) -> Any:
        """The blocking client of sync callers (named ``skapi-sync-<process>``), made
        at first use and shared by threads."""
        if self._sync_redis is None:
            with _SYNC_LOCK:
                if self._sync_redis is None:
                    self._sync_pool = sync_pool(self.host, f"skapi-sync-{self.process}")
                    client = redis.Redis(connection_pool=self._sync_pool)
                    self._sync_history_script = client.register_script(HISTORY_LUA)
                    self._sync_publish_script = client.register_script(PUBLISH_LUA)
                    self._sync_redis = client
        return self._sync_redis

    def _publish_sync(self, name: bytes, message: dict[str, Any]) -> None:
        """``_publish`` without an event loop."""
        keep = bool(message.get(KEEP))
        payload = self.serializer.serialize(message)
        self._sync_client()
        deadline = time.monotonic() + self.retry_for
        delay = 0.05
        while True:
            try:
                self._run_script_sync(name, payload, 1, keep)
                return
            except REDIS_DOWN as error:
                if time.monotonic() + delay > deadline:
                    logger.warning("Redis unreachable: a message was not sent (%s)", error)
                    self._count_drops(1, "redis_down")
                    self._tell_unsent_sync_later(name)
                    return
                time.sleep(delay)
                delay = min(delay * 2, 1.0)

    def _run_script_sync(
        self, name: bytes, payload: bytes, increment: int, keep: bool = False
    ) -> int:
        keys, args = self._script_call(name, payload, increment, keep)
        # A Script runs EVALSHA, and loads the script when Redis lost it.
        return int(self._sync_publish_script(keys=keys, args=args))

    def _tell_unsent_sync_later(self, name: bytes) -> None:
        with self._unsent_sync_lock:
            self._unsent_sync[name] += 1
            if self._telling_sync is None:
                self._telling_sync = threading.Thread(
                    target=self._tell_unsent_sync, name="skapi-gap-markers", daemon=True
                )
                self._telling_sync.start()

    def _tell_unsent_sync(self) -> None:
        """``_tell_unsent`` for the sends of sync callers, in a thread of its own that
        ends once every gap marker is published."""
        delay = 0.2
        while True:
            with self._unsent_sync_lock:
                if not self._unsent_sync:
                    self._telling_sync = None
                    return
                name, count = next(iter(self._unsent_sync.items()))
            try:
                self._run_script_sync(name, b"", count)
            except REDIS_DOWN:
                time.sleep(delay)
                delay = min(delay * 2, 2.0)
                continue
            except Exception:
                logger.exception("Gap markers of sync sends not published")
                with self._unsent_sync_lock:
                    self._telling_sync = None
                return
            with self._unsent_sync_lock:
                self._unsent_sync[name] -= count
                if self._unsent_sync[name] <= 0:
                    del self._unsent_sync[name]

    # History (history.HistoryLayer).

    async def history_read(
        self, group: str, *, since: int | None = None, last: int | None = None
    ) -> Slice:
        self._client()
        assert self._publisher is not None
        keys, args = self._history_call(group, since, last)
        reply = await self._publisher.script(HISTORY_LUA, keys, args)
        return self._history_slice(reply, since, last)

    def history_read_sync(
        self, group: str, *, since: int | None = None, last: int | None = None
    ) -> Slice:
        """``history_read`` for sync code (``api.history`` in a WSGI view, a management
        command), without an event loop: through one pool of blocking connections kept
        by the layer and shared by threads (named ``skapi-sync-<process>`` in CLIENT
        LIST), not a pool per event loop, which ``async_to_sync`` makes anew each call."""
        self._sync_client()
        script = self._sync_history_script
        keys, args = self._history_call(group, since, last)
        return self._history_slice(script(keys=keys, args=args), since, last)

    def _history_call(
        self, group: str, since: int | None, last: int | None
    ) -> tuple[list[bytes], list[Any]]:
        """The keys and arguments of HISTORY_LUA reading the stream ``group``, for
        what ``since`` or ``last`` asks."""
        name = self.channel_key(group)
        keys = [self.counter_key(name), self.history_key(name)]
        size, _ = retention()
        # As slice_of reads them: ``last`` first; with neither, no frames.
        wanted, after = 0, -1
        if last is not None:
            wanted = max(0, min(last, size))
        elif since is not None:
            wanted, after = size, max(since, 0)
        return keys, [secrets.token_hex(6), self.group_expiry + REFRESH_EVERY, wanted, after]

    def _history_slice(self, reply: Any, since: int | None, last: int | None) -> Slice:
        """What HISTORY_LUA answered, read as ``since`` / ``last`` ask."""
        _, ttl = retention()
        epoch, latest, items = reply
        oldest = time.time() - ttl
        kept: list[tuple[int, str]] = []
        for item in items:
            offset, _, rest = item.partition(b":")
            stamp, _, payload = rest.partition(b":")
            if float(stamp) >= oldest:
                kept.append((int(offset), self.serializer.deserialize(payload)["text"]))
        return slice_of(epoch.decode(), int(latest), kept, since, last)

    # Flush extension, and shutdown.

    async def flush(self) -> None:
        await super().flush()
        with self._refreshed_lock:
            self._refreshed.clear()
        self._client()
        async for key in self.redis.scan_iter(match=f"{self.prefix}:*", count=1000):
            await self.redis.delete(key)

    async def close(self) -> None:
        publisher, self._publisher = self._publisher, None
        if publisher is not None:
            await publisher.close()
        subscriber, self._subscriber = self._subscriber, None
        if subscriber is not None:
            subscriber.task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await subscriber.task
        if self.redis is not None:
            await self.redis.aclose(close_connection_pool=True)
            self.redis = None
            # A Sentinel host entry: the clients that asked the Sentinels for the master.
            for client in getattr(getattr(self.pool, "sentinel_manager", None), "sentinels", ()):
                await client.aclose()
        self._loop = None
        if self._sync_pool is not None:
            self._sync_pool.disconnect()  # reconnects if a sync read comes later
            for client in getattr(getattr(self._sync_pool, "sentinel_manager", None), "sentinels", ()):
                client.close()

    close_pools = close


# Blocking connections for sync callers.

_SYNC_LOCK = threading.Lock()


def sync_pool(host: dict[str, Any], client_name: str) -> redis.ConnectionPool:
    """A thread-safe pool of blocking connections to ``host`` (an entry of the
    layer's ``hosts``, as channels-redis's ``create_pool`` reads it), each named
    ``client_name`` unless the entry names them."""
    host = {"client_name": client_name, **host}
    if "address" in host:
        return redis.ConnectionPool.from_url(host.pop("address"), **host)
    master_name = host.pop("master_name", None)
    if master_name is not None:
        sentinels = host.pop("sentinels")
        sentinel = Sentinel(sentinels, sentinel_kwargs=host.pop("sentinel_kwargs", None))
        return SentinelConnectionPool(master_name, sentinel, **host)
    return redis.ConnectionPool(**host)
