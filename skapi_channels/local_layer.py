"""An in-process channel layer for the embedded default: one server process.

It keeps the channel-layer interface of ``channels.layers.InMemoryChannelLayer`` but
not its costs: that layer starts a task per receiver on ``group_send``, deep-copies
the message for every receiver, and scans every channel for expired messages on
each receive. Here a ``group_send`` appends a shallow copy to each receiver's queue
and wakes it, in one synchronous pass.

Nothing is dropped silently. A receiver whose queue is full loses the message, the
loss is counted (``metrics.counters["dropped"]``, published with the heartbeat) and
logged, and a channel registered with ``report_missed_to`` receives a
``{"type": "skapi.missed", "count": n}`` event before its next message.

A channel that has not read for ``expiry`` seconds when its queue overflows is taken
for abandoned (its consumer died without leaving its groups) and removed.

It keeps the history of the streams (``history.py``): a ``group_send`` marked
``KEEP`` gets the stream's next offset and is kept, at most ``HISTORY_SIZE``
messages per stream for ``HISTORY_TTL`` seconds. A stream with nothing kept, no
member and no use for ``HISTORY_TTL`` is forgotten, so memory stays bounded by the
streams in use; ``history_stats()`` counts what is kept. Every stream gets a fresh
random epoch when it is created, so a restarted process never passes off its
offsets as the old ones.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections import deque
from typing import Any

from channels.exceptions import ChannelFull
from channels.layers import BaseChannelLayer

from skapi_channels.history import Slice, retention, slice_of
from skapi_channels.metrics import drops
from skapi_channels.protocol import EPOCH, EVENT_MISSED, KEEP, OFFSET

logger = logging.getLogger("skapi_channels")


class _Channel:
    __slots__ = ("messages", "capacity", "waiter", "missed", "report_missed", "last_read", "groups")

    def __init__(self, capacity: int) -> None:
        self.messages: deque[dict[str, Any]] = deque()
        self.capacity = capacity
        self.waiter: asyncio.Future[None] | None = None
        self.missed = 0
        self.report_missed = False
        self.last_read = time.monotonic()
        self.groups: set[str] = set()


class _Stream:
    __slots__ = ("epoch", "latest", "kept", "used_at")

    def __init__(self, now: float) -> None:
        self.epoch = secrets.token_urlsafe(9)
        self.latest = 0
        # (offset, monotonic time kept, frame text), oldest first.
        self.kept: deque[tuple[int, float, str]] = deque()
        self.used_at = now


class LocalChannelLayer(BaseChannelLayer):
    extensions = ["groups", "flush"]
    keeps_history = True

    def __init__(
        self,
        expiry: int = 60,
        group_expiry: int = 86400,
        capacity: int = 1000,
        channel_capacity: dict[str, int] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(expiry=expiry, capacity=capacity, channel_capacity=channel_capacity)
        self.channel_capacity = self.compile_capacities(channel_capacity or {})
        self.channels: dict[str, _Channel] = {}
        # group -> its channels, as an insertion-ordered set
        self.groups: dict[str, dict[str, None]] = {}
        self.dropped = 0
        self._logged_at = 0.0
        self.streams: dict[str, _Stream] = {}
        self.kept_messages = 0
        self.kept_chars = 0
        self._swept_at = time.monotonic()

    def _channel(self, name: str) -> _Channel:
        channel = self.channels.get(name)
        if channel is None:
            channel = self.channels[name] = _Channel(self.get_capacity(name))
        return channel

    def _put(self, name: str, message: dict[str, Any]) -> bool:
        channel = self._channel(name)
        if len(channel.messages) >= channel.capacity:
            return False
        channel.messages.append(dict(message))
        waiter = channel.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        return True

    # Channel layer API.

    async def send(self, channel: str, message: dict[str, Any]) -> None:
        assert isinstance(message, dict), "message is not a dict"
        self.require_valid_channel_name(channel)
        if not self._put(channel, message):
            raise ChannelFull(channel)

    async def receive(self, channel: str) -> dict[str, Any]:
        self.require_valid_channel_name(channel)
        state = self._channel(channel)
        while True:
            message = self._take(state)
            if message is not None:
                return message
            waiter = asyncio.get_running_loop().create_future()
            state.waiter = waiter
            try:
                await waiter
            except asyncio.CancelledError:
                # The consumer is gone: forget its channel and memberships.
                self._forget(channel)
                raise
            finally:
                state.waiter = None

    def receive_nowait(self, channel: str) -> dict[str, Any] | None:
        """What ``receive`` would answer at once, or None when ``channel`` holds
        nothing (or a receive of it is waiting): for a consumer to take the messages
        queued behind the one it received without a task each (receive_loop.py)."""
        state = self.channels.get(channel)
        if state is None or state.waiter is not None:
            return None
        return self._take(state)

    @staticmethod
    def _take(state: _Channel) -> dict[str, Any] | None:
        """The next message for a reader of ``state`` (the count of what it lost
        first), or None; marks the channel as read now."""
        state.last_read = time.monotonic()
        if state.missed:
            count, state.missed = state.missed, 0
            return {"type": EVENT_MISSED, "count": count}
        if state.messages:
            message: dict[str, Any] = state.messages.popleft()
            return message
        return None

    async def new_channel(self, prefix: str = "specific.") -> str:
        return f"{prefix}.local!{secrets.token_urlsafe(12)}"

    def report_missed_to(self, channel: str) -> None:
        """Tell ``channel`` of the messages it lost (a ``skapi.missed`` event)."""
        self._channel(channel).report_missed = True

    # Groups extension.

    async def group_add(self, group: str, channel: str) -> None:
        self.require_valid_group_name(group)
        self.require_valid_channel_name(channel)
        self.groups.setdefault(group, {})[channel] = None
        self._channel(channel).groups.add(group)

    async def group_discard(self, group: str, channel: str) -> None:
        self.require_valid_group_name(group)
        self.require_valid_channel_name(channel)
        self._leave(group, channel)
        state = self.channels.get(channel)
        if state is not None:
            state.groups.discard(group)

    def _leave(self, group: str, channel: str) -> None:
        members = self.groups.get(group)
        if members is not None:
            members.pop(channel, None)
            if not members:
                del self.groups[group]

    async def group_send(self, group: str, message: dict[str, Any]) -> None:
        assert isinstance(message, dict), "Message is not a dict"
        if message.get(KEEP):
            message = self._keep(group, message)
        self.deliver(group, message)

    def deliver(self, group: str, message: dict[str, Any]) -> None:
        """Queue ``message`` for every channel of ``group`` in this process (the
        fan-out step, shared with layers that bring messages from elsewhere)."""
        members = self.groups.get(group)
        if not members:
            return
        lost = 0
        for name in list(members):
            if not self._put(name, message):
                lost += 1
                self._lost(name)
        if lost:
            self._count_drops(lost)

    def tell_missed(self, group: str, count: int) -> None:
        """``count`` messages for ``group`` never reached this process: count them as
        dropped for each member, and tell the members that asked."""
        members = self.groups.get(group)
        if not members or count <= 0:
            return
        for name in list(members):
            channel = self.channels.get(name)
            if channel is not None and channel.report_missed:
                channel.missed += count
                if channel.waiter is not None and not channel.waiter.done():
                    channel.waiter.set_result(None)
        self._count_drops(count * len(members), "not_received")

    def _lost(self, name: str) -> None:
        channel = self.channels[name]
        if channel.waiter is None and time.monotonic() - channel.last_read > self.expiry:
            self._abandon(name)
        elif channel.report_missed:
            channel.missed += 1
            if channel.waiter is not None and not channel.waiter.done():
                channel.waiter.set_result(None)

    def _abandon(self, name: str) -> None:
        self._forget(name)
        logger.warning("Channel %s stopped reading; removed it from its groups", name)

    def _forget(self, name: str) -> None:
        state = self.channels.pop(name, None)
        if state is not None:
            for group in state.groups:
                self._leave(group, name)

    def _count_drops(self, count: int, reason: str = "queue_full") -> None:
        self.dropped += count
        drops.record(count, reason)

    # History (history.HistoryLayer).

    def _keep(self, group: str, message: dict[str, Any]) -> dict[str, Any]:
        size, ttl = retention()
        if not size:
            return message
        now = time.monotonic()
        stream = self._stream(group, now)
        stream.latest += 1
        text = message["text"]
        stream.kept.append((stream.latest, now, text))
        self.kept_messages += 1
        self.kept_chars += len(text)
        while len(stream.kept) > size:
            self._drop_oldest(stream)
        self._expire(stream, now - ttl)
        if now - self._swept_at > min(ttl, 10.0):
            self._sweep(now, ttl)
        return {**message, OFFSET: stream.latest, EPOCH: stream.epoch}

    async def history_read(
        self, group: str, *, since: int | None = None, last: int | None = None
    ) -> Slice:
        _, ttl = retention()
        now = time.monotonic()
        if now - self._swept_at > min(ttl, 10.0):
            self._sweep(now, ttl)
        stream = self._stream(group, now)
        self._expire(stream, now - ttl)
        kept = [(offset, text) for offset, _, text in stream.kept]
        return slice_of(stream.epoch, stream.latest, kept, since, last)

    def history_stats(self) -> dict[str, int]:
        """Streams known, messages kept and the characters of their frames."""
        return {
            "streams": len(self.streams),
            "messages": self.kept_messages,
            "chars": self.kept_chars,
        }

    def _stream(self, group: str, now: float) -> _Stream:
        stream = self.streams.get(group)
        if stream is None:
            stream = self.streams[group] = _Stream(now)
        stream.used_at = now
        return stream

    def _drop_oldest(self, stream: _Stream) -> None:
        _, _, text = stream.kept.popleft()
        self.kept_messages -= 1
        self.kept_chars -= len(text)

    def _expire(self, stream: _Stream, before: float) -> None:
        kept = stream.kept
        while kept and kept[0][1] < before:
            self._drop_oldest(stream)

    def _sweep(self, now: float, ttl: float) -> None:
        """Expire old messages everywhere; forget streams nobody uses."""
        self._swept_at = now
        for name, stream in list(self.streams.items()):
            self._expire(stream, now - ttl)
            if not stream.kept and name not in self.groups and now - stream.used_at > ttl:
                del self.streams[name]

    # Flush extension.

    async def flush(self) -> None:
        self.channels = {}
        self.groups = {}
        self.streams = {}
        self.kept_messages = self.kept_chars = 0

    async def close(self) -> None:
        pass
