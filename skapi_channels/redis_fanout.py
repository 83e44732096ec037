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
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import itertools
import logging
import secrets
import threading
import time
from collections import Counter, deque
from collections.abc import Iterable
from typing import Any

import redis
from asgiref.sync import async_to_sync
from channels_redis.serializers import registry
from channels_redis.utils import create_pool, decode_hosts
from django.core.exceptions import ImproperlyConfigured
from redis import asyncio as aioredis
from redis.exceptions import NoScriptError
from redis.sentinel import Sentinel, SentinelConnectionPool

from skapi_channels.history import Slice, retention, slice_of
from skapi_channels.layers import REDIS_DOWN
from skapi_channels.local_layer import LocalChannelLayer
from skapi_channels.protocol import EPOCH, KEEP, OFFSET

logger = logging.getLogger("skapi_channels")

# KEYS: the group's counters (a hash: "o" the offset of its kept messages,
# docs/protocol.md §11, "n" the number of everything else it published, un-kept
# messages and gap markers, and "e" the epoch), its Redis channel, and its history
# (a list of "<offset>:<time>:<payload>", trimmed in batches: readers take its last
# ``size`` entries).
# ARGV: payload (empty: a gap marker, no message), counter expiry (s), increment (1,
# or the number of messages a gap marker stands for), a new epoch (used when the
# hash starts), history size (0: not kept), history expiry (s), the time (s), "1" to
# refresh the counter's expiry, "1" to refresh the history's, the trim slack.
# A kept message increments only "o" and is published as "o<offset>/<epoch>:<payload>",
# anything else only "n", published as "n<seq>:<payload>". Expiries are set when a
# key is created and otherwise only when the caller asks (it refreshes each key
# about once a minute). Returns the counter's new value.
PUBLISH_LUA = """
local size = tonumber(ARGV[5])
local field = 'n'
if size > 0 and ARGV[1] ~= '' then
    field = 'o'
end
local increment = tonumber(ARGV[3])
local seq = redis.call('HINCRBY', KEYS[1], field, increment)
if seq == increment then
    redis.call('HSETNX', KEYS[1], 'e', ARGV[4])
    redis.call('EXPIRE', KEYS[1], ARGV[2])
elseif ARGV[8] == '1' then
    redis.call('EXPIRE', KEYS[1], ARGV[2])
end
if field == 'n' then
    redis.call('PUBLISH', KEYS[2], 'n' .. seq .. ':' .. ARGV[1])
    return seq
end
if seq == 1 then
    redis.call('DEL', KEYS[3])  -- kept under an epoch that is gone
end
local length = redis.call('RPUSH', KEYS[3], seq .. ':' .. ARGV[7] .. ':' .. ARGV[1])
if length > size + tonumber(ARGV[10]) then
    redis.call('LTRIM', KEYS[3], -size, -1)
end
if length == 1 or ARGV[9] == '1' then
    redis.call('EXPIRE', KEYS[3], ARGV[6])
end
local epoch = redis.call('HGET', KEYS[1], 'e')
redis.call('PUBLISH', KEYS[2], 'o' .. seq .. '/' .. epoch .. ':' .. ARGV[1])
return seq
"""

# Where a stream stands, and what it keeps: {epoch, latest offset, history (its last
# ``size`` entries)}. Reading starts the hash (its epoch) when there is none, so the
# next message keeps it.
# KEYS: the counter, the history. ARGV: a new epoch, counter expiry (s), history size.
HISTORY_LUA = """
redis.call('HSETNX', KEYS[1], 'e', ARGV[1])
redis.call('EXPIRE', KEYS[1], ARGV[2])
local state = redis.call('HMGET', KEYS[1], 'e', 'o')
if not state[2] then
    return {state[1], '0', {}}  -- nothing kept under this epoch (a list left is older)
end
return {state[1], state[2], redis.call('LRANGE', KEYS[2], -tonumber(ARGV[3]), -1)}
"""

# Marks the Redis data set, so that a process notices a restart that lost it.
EPOCH_LUA = """
redis.call('SET', KEYS[1], ARGV[1], 'NX')
return redis.call('GET', KEYS[1])
"""

TO = "__skapi_to"  # the target channel of a message sent to another process

# How often (s) a process refreshes the expiry of a group's counter and history while
# it publishes to them, and how many such keys it remembers.
REFRESH_EVERY = 60
REFRESHED_KEYS = 10_000


@functools.cache
def script_sha(source: str) -> str:
    """The SHA1 that EVALSHA names the Lua script ``source`` by."""
    return hashlib.sha1(source.encode()).hexdigest()


def pack(command: tuple[Any, ...]) -> bytes:
    """``command`` (bytes, str and int arguments) in the Redis protocol: the few
    lines of redis-py's general ``pack_command`` this path needs."""
    parts = [b"*%d\r\n" % len(command)]
    for arg in command:
        if not isinstance(arg, bytes):
            arg = str(arg).encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(arg), arg))
    return b"".join(parts)


class _Publisher:
    """This process's connection for the scripts (publishing, reading history), in
    one event loop.

    Commands are written as they come, those of one turn of the loop in one write,
    and one reader answers them in order: none of a pool's per-command checkout,
    health check and retry machinery on the path of every message. Per-sender order
    holds as through a pool: a sender awaits each publish. A lost connection fails
    what awaits an answer (``redis.ConnectionError``: the sender retries) and the
    next command connects again."""

    def __init__(self, layer: RedisFanoutLayer, loop: asyncio.AbstractEventLoop) -> None:
        self.layer = layer
        self.loop = loop
        self.connection: Any = None
        self.lock = asyncio.Lock()
        self.reader: asyncio.Task[None] | None = None
        self.unsent: list[bytes] = []  # packed commands to write
        self.writing: Any = None  # the connection a writer task is writing to
        self.waiting: deque[asyncio.Future[Any]] = deque()  # in the order written

    async def publish(self, keys: list[bytes], args: list[Any]) -> Any:
        return await self.script(PUBLISH_LUA, keys, args)

    async def script(self, source: str, keys: list[bytes], args: list[Any]) -> Any:
        """Runs the Lua script ``source``. A burst of history reads at connect (a
        reconnect storm) shares this connection too, rather than opening one each."""
        sha = script_sha(source)
        try:
            return await self.call("EVALSHA", sha, len(keys), *keys, *args)
        except NoScriptError:  # Redis restarted, or its script cache was flushed
            return await self.call("EVAL", source, len(keys), *keys, *args)

    async def call(self, *command: Any) -> Any:
        connection = self.connection or await self._connect()
        future = self.loop.create_future()
        self.unsent.append(pack(command))
        self.waiting.append(future)
        if self.writing is not connection:
            self.writing = connection
            self.loop.create_task(self._write(connection))
        return await future

    async def _connect(self) -> Any:
        async with self.lock:
            if self.connection is None:
                connection = self.layer.pool.make_connection()
                await connection.connect()
                await connection.send_command("CLIENT", "SETNAME", self.layer.publisher_name)
                await connection.read_response()
                self.connection = connection
                self.reader = self.loop.create_task(self._read(connection))
            return self.connection

    async def _write(self, connection: Any) -> None:
        try:
            while self.unsent and self.connection is connection:
                chunks, self.unsent = self.unsent, []
                await connection.send_packed_command(chunks, False)
        except Exception as error:
            self._fail(connection, error)
        finally:
            if self.writing is connection:
                self.writing = None

    async def _read(self, connection: Any) -> None:
        try:
            while True:
                try:
                    reply = await connection.read_response()
                except aioredis.ResponseError as error:
                    reply = error
                if not self.waiting:
                    continue
                future = self.waiting.popleft()
                if future.done():
                    continue  # its sender was cancelled
                if isinstance(reply, Exception):
                    future.set_exception(reply)
                else:
                    future.set_result(reply)
        except asyncio.CancelledError:
            raise
        except Exception as error:
            self._fail(connection, error)

    def _fail(self, connection: Any, error: BaseException) -> None:
        if self.connection is not connection:
            return
        self.connection = None
        self.unsent = []
        waiting, self.waiting = self.waiting, deque()
        for future in waiting:
            if not future.done():
                future.set_exception(aioredis.ConnectionError(f"Redis connection lost: {error}"))
        if self.reader is not None and self.reader is not asyncio.current_task():
            self.reader.cancel()
        self.loop.create_task(connection.disconnect(nowait=True))

    async def close(self) -> None:
        connection, self.connection = self.connection, None
        if self.reader is not None:
            self.reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self.reader
        if connection is not None:
            with contextlib.suppress(Exception):
                await connection.disconnect(nowait=True)


class _Subscriber:
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
        self._subscriber: _Subscriber | None = None
        self.pool: Any = None
        self.redis: Any = None
        self._publisher: _Publisher | None = None
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
            self._publisher = _Publisher(self, loop)
        return loop

    def _ensure(self) -> _Subscriber:
        loop = self._client()
        if self._subscriber is None:
            self._subscriber = _Subscriber(self, loop)
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
        keys, args = self._history_call(group)
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
        keys, args = self._history_call(group)
        return self._history_slice(script(keys=keys, args=args), since, last)

    def _history_call(self, group: str) -> tuple[list[bytes], list[Any]]:
        """The keys and arguments of HISTORY_LUA reading the stream ``group``."""
        name = self.channel_key(group)
        keys = [self.counter_key(name), self.history_key(name)]
        size, _ = retention()
        return keys, [secrets.token_hex(6), self.group_expiry + REFRESH_EVERY, size]

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
