"""History of the message streams (protocol section 11): what a layer keeps, and
how the consumer and site code read it.

A *stream* is a layer group whose sends are kept: each protocol group's
``#message`` frames (``group_address``) and each user's ``#private`` frames
(``user_address``). The channel layer keeps the history next to the publish, so
no SQL touches the broadcast path and the offsets come from the same place that
orders the deliveries.

The contract between the consumer and a layer that keeps history
(``HistoryLayer``):

- ``group_send(group, message)`` with ``message[KEEP]`` true appends the message's
  ``text`` to the stream ``group`` under the next offset (1, 2, ...) and hands every
  receiver a copy carrying ``message[OFFSET]`` (that offset) and
  ``message[EPOCH]`` (the stream's epoch). Receivers of one stream get its messages
  in offset order. A message without ``KEEP`` is delivered as before.
- ``history_read(group, since=..., last=...)`` answers a ``Slice``: the stream's
  epoch, the offset of its latest message, and the kept frames after ``since``
  (or the ``last`` most recent ones). Reading a stream that has no state yet
  creates it, so the epoch a reader learns is the one the next message gets.
- ``history_read_sync`` (optional, ``ReadsHistorySync``): the same read for sync
  callers, on connections that outlive a call.
- The epoch changes whenever the stream's history is lost (its store restarted,
  or the stream expired), and offsets start again from 1 under the new epoch.

Retention comes from the settings ``HISTORY_SIZE`` and ``HISTORY_TTL``
(``retention()``); either set to 0 turns history off.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from skapi_channels.conf import conf
from skapi_channels.layer_abilities import has
from skapi_channels.protocol import EPOCH, KEEP, OFFSET

__all__ = [
    "EPOCH",
    "KEEP",
    "OFFSET",
    "Cursor",
    "HistoryLayer",
    "ReadsHistorySync",
    "Slice",
    "enabled",
    "retention",
]


@dataclass(frozen=True, slots=True)
class Slice:
    """What a stream's history read answers."""

    epoch: str
    # The offset of the stream's latest message; 0 when it has none.
    latest: int
    # (offset, frame text without "#offset"), oldest first.
    frames: list[tuple[int, str]] = field(default_factory=list)
    # With ``since``: whether every message after it is in ``frames`` (none was
    # trimmed or expired, and ``since`` is not beyond ``latest``).
    complete: bool = True


@runtime_checkable
class HistoryLayer(Protocol):
    """A channel layer that keeps the history of the streams marked ``KEEP``
    (when ``keeps_history`` is true: a subclass may not)."""

    keeps_history: bool

    async def group_send(self, group: str, message: dict[str, Any]) -> None: ...

    async def history_read(
        self, group: str, *, since: int | None = None, last: int | None = None
    ) -> Slice: ...


@runtime_checkable
class ReadsHistorySync(Protocol):
    """A history layer that also reads without an event loop, for sync callers
    (``api.history``): the same answer as ``history_read``. A layer without it is
    read through ``async_to_sync``."""

    def history_read_sync(
        self, group: str, *, since: int | None = None, last: int | None = None
    ) -> Slice: ...


def slice_of(
    epoch: str,
    latest: int,
    kept: list[tuple[int, str]],
    since: int | None = None,
    last: int | None = None,
) -> Slice:
    """The answer to a read of a stream at ``latest`` under ``epoch`` that keeps
    ``kept`` (its unexpired messages, oldest first)."""
    if last is not None:
        return Slice(epoch, latest, kept[max(len(kept) - last, 0) :] if last > 0 else [])
    if since is None or since == latest:
        return Slice(epoch, latest)
    oldest = kept[0][0] if kept else latest + 1
    if since > latest or since + 1 < oldest:
        return Slice(epoch, latest, [], complete=False)
    return Slice(epoch, latest, [(offset, text) for offset, text in kept if offset > since])


def retention() -> tuple[int, float]:
    """(messages kept per stream, seconds each is kept); (0, 0) when history is off."""
    size, ttl = conf.HISTORY_SIZE, conf.HISTORY_TTL
    if size <= 0 or ttl <= 0:
        return 0, 0.0
    return size, ttl


def enabled(layer: Any) -> bool:
    """Whether ``layer`` keeps history and the settings turn it on."""
    return has(layer, HistoryLayer) and layer.keeps_history and retention()[0] > 0


def with_offset(text: str, offset: int) -> str:
    """``text`` (an encoded frame object) with ``"#offset"`` added, without re-encoding."""
    return f'{text[:-1]},"#offset":{offset}}}'


def replayed(text: str, offset: int) -> str:
    """A kept frame as it is replayed: its offset and ``"#replay": true`` added."""
    return f'{text[:-1]},"#offset":{offset},"#replay":true}}'


class Cursor:
    """Where one connection stands in one stream.

    ``boundary`` is the highest offset the connection has been given (live or
    replayed); live frames at or below it are dropped. ``start`` is where its live
    delivery began: frames after ``start`` up to ``boundary`` reached it live, so a
    replay skips them.
    """

    __slots__ = ("epoch", "start", "boundary")

    def __init__(self, epoch: str, latest: int) -> None:
        self.epoch = epoch
        self.start = latest
        self.boundary = latest

    def admit(self, offset: int, epoch: str | None) -> bool:
        """Whether a live frame at ``offset`` is new to the connection (and note it)."""
        if epoch != self.epoch:
            # The stream's history was lost and its offsets start again.
            self.epoch, self.start, self.boundary = epoch or "", offset - 1, offset
            return True
        if offset <= self.boundary:
            return False
        self.boundary = offset
        return True

    def replay(self, kept: Slice) -> list[tuple[int, str]]:
        """The frames of ``kept`` the connection has not had, in order; afterwards
        live frames up to ``kept.latest`` count as given."""
        if kept.epoch != self.epoch:
            self.epoch, self.start, self.boundary = kept.epoch, kept.latest, kept.latest
            return list(kept.frames)
        frames = [
            (offset, text)
            for offset, text in kept.frames
            if offset <= self.start or offset > self.boundary
        ]
        self.boundary = max(self.boundary, kept.latest)
        return frames
