"""The Python API for site code: talk to connected users without a socket of its own.

Every call goes through the channel layer, so it reaches the connections of every
server process (with channels-redis; the in-memory layer reaches only the
connections of the calling process). Each function has an async twin with an
``a`` prefix; call that one from async code (the sync forms refuse to run in an
event loop). From sync code (a WSGI view, a management command, a Celery task)
the Redis layer sends and reads through blocking connections it keeps for such
callers (``layer_abilities.SendsSync``, ``history.ReadsHistorySync``); other layers
are called through ``async_to_sync``.

Frames from the server look like the frames of docs/protocol.md section 4, with no
connection behind them:

- ``#scid`` is always ``null``: no connection sent the frame;
- ``#user_id`` is ``null`` when the server speaks for itself, or the user_id
  given as ``sender`` when the site speaks on behalf of a user;
- a notice has the code ``SERVER_NOTICE`` (or the one given) and the sentence
  given.

    from skapi_channels import api

    api.send_to_user("7", {"text": "Your export is ready"})
    api.broadcast("lobby", "Maintenance at noon")
    api.broadcast("lobby", "hello", sender="7")  # as if user 7 wrote it
    api.send_notice("lobby", "The room closes in 5 minutes.")
    page = api.list_groups(search_for="number_of_users", condition=">=", value=2)
    api.disconnect_user("7")
    recent = api.history("lobby", last=20)  # the messages the group's stream keeps

Messages (not notices) go into the history of their stream, as the ones clients
send do (docs/protocol.md section 11), and carry its ``#offset``.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from asgiref.sync import async_to_sync
from channels.db import database_sync_to_async
from channels.layers import get_channel_layer

from skapi_channels import metrics, queries
from skapi_channels.addressing import group_address, user_address
from skapi_channels.conf import conf
from skapi_channels.history import ReadsHistorySync, Slice, enabled
from skapi_channels.layer_abilities import SendsSync
from skapi_channels.models import Connection
from skapi_channels.protocol import (
    CLOSE_BY_SERVER,
    SERVER_NOTICE,
    close_event,
    frame_event,
    group_name_problem,
    loads,
    server_message_frame,
    server_notice_frame,
    server_private_frame,
    user_id_problem,
)
from skapi_channels.queries import Page

__all__ = [
    "SERVER_NOTICE",
    "History",
    "Page",
    "abroadcast",
    "adisconnect_connection",
    "adisconnect_user",
    "alist_groups",
    "alist_users",
    "asend_notice",
    "asend_to_user",
    "ahistory",
    "aprivate_history",
    "broadcast",
    "disconnect_connection",
    "disconnect_user",
    "history",
    "list_groups",
    "list_users",
    "private_history",
    "send_notice",
    "send_to_user",
]


def _check_group(group: str) -> None:
    problem = group_name_problem(group, conf.MAX_GROUP_NAME_LENGTH)
    if problem:
        raise ValueError(problem)


def _check_user_id(user_id: str, name: str = "user_id") -> None:
    problem = user_id_problem(user_id)
    if problem:
        raise ValueError(problem.replace("uid", name, 1))


def _layer() -> Any:
    layer = get_channel_layer()
    if layer is None:
        raise RuntimeError("skapi_channels needs a channel layer: set CHANNEL_LAYERS.")
    return layer


# Sending.


async def asend_to_user(user_id: str, content: Any, *, sender: str | None = None) -> None:
    """Send ``content`` as a private message to every open connection of ``user_id``."""
    text = _private(user_id, content, sender)
    layer = _layer()
    await layer.group_send(
        user_address(user_id), frame_event(text, uid=user_id, keep=enabled(layer))
    )
    metrics.count("server_messages")


async def abroadcast(group: str, content: Any, *, sender: str | None = None) -> None:
    """Send ``content`` to every connection in ``group``, as the server or as ``sender``."""
    text = _message(group, content, sender)
    layer = _layer()
    await layer.group_send(group_address(group), frame_event(text, rid=group, keep=enabled(layer)))
    metrics.count("server_messages")


async def asend_notice(group: str, sentence: str, *, code: str = SERVER_NOTICE) -> None:
    """Send a notice (``#notice`` ``sentence``, ``#code`` ``code``) to ``group``."""
    text = _notice(group, sentence, code)
    await _layer().group_send(group_address(group), frame_event(text, rid=group))
    metrics.count("server_messages")


def _private(user_id: str, content: Any, sender: str | None) -> str:
    """The ``#private`` frame of ``asend_to_user``, its arguments checked."""
    _check_user_id(user_id)
    if sender is not None:
        _check_user_id(sender, "sender")
    return server_private_frame(content, sender)


def _message(group: str, content: Any, sender: str | None) -> str:
    """The ``#message`` frame of ``abroadcast``, its arguments checked."""
    _check_group(group)
    if sender is not None:
        _check_user_id(sender, "sender")
    return server_message_frame(content, group, sender)


def _notice(group: str, sentence: str, code: str) -> str:
    """The ``#notice`` frame of ``asend_notice``, its arguments checked."""
    _check_group(group)
    if not isinstance(sentence, str) or not sentence:
        raise ValueError("sentence must be a non-empty string.")
    return server_notice_frame(sentence, group, code)


def _sync_sender() -> SendsSync | None:
    """The channel layer when it sends without an event loop (the Redis layer) and
    no event loop runs in this thread; else None, and the sync form goes through
    ``async_to_sync`` (a new event loop, and the layer's connections for it, per
    call; in an event loop's thread it refuses)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        layer = _layer()
        return layer if isinstance(layer, SendsSync) else None
    return None


# History (docs/protocol.md section 11).


@dataclass(frozen=True)
class History:
    """What a stream keeps: its ``epoch``, the ``offset`` of its latest message (0
    when none), and the kept ``messages`` asked for, oldest first, as clients get
    them (``#message`` or ``#private`` frames with their ``#offset``). With
    ``since``, ``recovered`` tells whether every message after it is there (when
    not, ``messages`` is empty). While history is off, ``epoch`` is "" and nothing
    is kept."""

    epoch: str
    offset: int
    messages: list[dict[str, Any]] = field(default_factory=list)
    recovered: bool | None = None


async def ahistory(
    group: str, *, since: int | None = None, last: int | None = None, epoch: str | None = None
) -> History:
    """The kept messages of ``group``: those after offset ``since`` (of ``epoch``,
    when given), or the ``last`` most recent, or (neither) just where it stands."""
    _check_group(group)
    return await _read(group_address(group), since, last, epoch)


async def aprivate_history(
    user_id: str, *, since: int | None = None, last: int | None = None, epoch: str | None = None
) -> History:
    """The kept private messages of ``user_id``, as ``ahistory`` reads a group's."""
    _check_user_id(user_id)
    return await _read(user_address(user_id), since, last, epoch)


async def _read(address: str, since: int | None, last: int | None, epoch: str | None) -> History:
    since, last = _read_arguments(since, last)
    layer = _layer()
    if not enabled(layer):
        return History("", 0, [], False if since is not None else None)
    return _answer(await layer.history_read(address, since=since, last=last), since, epoch)


def _read_sync(
    address: str, since: int | None, last: int | None, epoch: str | None, name: str
) -> History:
    """``_read`` for sync callers: on a layer that can (the Redis layer), through its
    blocking connections, which outlive the call; ``async_to_sync`` would make a new
    event loop, and the layer new connections, each time."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        pass
    else:
        raise RuntimeError(f"{name}() cannot run in an event loop's thread: await a{name}().")
    since, last = _read_arguments(since, last)
    layer = _layer()
    if not enabled(layer):
        return History("", 0, [], False if since is not None else None)
    if isinstance(layer, ReadsHistorySync):
        kept = layer.history_read_sync(address, since=since, last=last)
    else:
        kept = async_to_sync(layer.history_read)(address, since=since, last=last)
    return _answer(kept, since, epoch)


def _read_arguments(since: int | None, last: int | None) -> tuple[int | None, int | None]:
    """``since`` and ``last`` checked; ``last`` 0 when neither is given (where the
    stream stands, nothing replayed)."""
    if since is not None and last is not None:
        raise ValueError("Give since or last, not both.")
    if since is not None and (isinstance(since, bool) or not isinstance(since, int) or since < 0):
        raise ValueError(f"since must be an integer of 0 or more, not {since!r}.")
    if last is not None and (isinstance(last, bool) or not isinstance(last, int) or last < 1):
        raise ValueError(f"last must be a positive integer, not {last!r}.")
    return since, 0 if since is None and last is None else last


def _answer(kept: Slice, since: int | None, epoch: str | None) -> History:
    recovered = None
    if since is not None:
        recovered = kept.complete and (epoch is None or epoch == kept.epoch)
    frames = [] if recovered is False else kept.frames
    messages = [{**loads(text), "#offset": offset} for offset, text in frames]
    return History(kept.epoch, kept.latest, messages, recovered)


# Disconnecting.


async def adisconnect_user(user_id: str, *, code: int = CLOSE_BY_SERVER) -> None:
    """Close every open connection of ``user_id``; each one's group gets
    ``USER_DISCONNECTED``. The client may reconnect: refuse it at login for a ban."""
    _check_user_id(user_id)
    await _layer().group_send(user_address(user_id), close_event(code))


async def adisconnect_connection(cid: str, *, code: int = CLOSE_BY_SERVER) -> bool:
    """Close one connection by its (bare) cid; False when no such connection is open."""
    channel_name = await database_sync_to_async(_channel_of)(cid)
    if channel_name is None:
        return False
    await close_channel(channel_name, code)
    return True


def _channel_of(cid: str) -> str | None:
    return Connection.objects.filter(cid=cid).values_list("channel_name", flat=True).first()


async def close_channel(channel_name: str, code: int = CLOSE_BY_SERVER) -> None:
    """Ask the consumer behind ``channel_name`` to close its socket."""
    await _layer().send(channel_name, close_event(code))


# Listing: the same query code as the endpoints (docs/protocol.md sections 7 and 8).


def list_groups(
    *,
    search_for: str = "group",
    value: str | float | None = None,
    condition: str | None = None,
    range: str | float | None = None,  # the protocol's name
    limit: int = queries.DEFAULT_LIMIT,
    ascending: bool = True,
    start_key: dict[str, Any] | str | None = None,
) -> Page:
    """One page of groups, as ``POST /realtime/groups/`` answers; ``ValueError``
    (``queries.InvalidParameter``) for bad parameters. ``page.start_key`` fetches
    the next page."""
    body = {
        "searchFor": search_for,
        "value": value,
        "condition": condition,
        "range": range,
        "limit": limit,
        "ascending": ascending,
        "startKey": start_key,
    }
    return queries.list_groups(queries.parse_group_query(body))


def list_users(
    group: str,
    *,
    user_id: str | None = None,
    limit: int = queries.DEFAULT_LIMIT,
    ascending: bool = True,
    start_key: dict[str, Any] | str | None = None,
) -> Page:
    """One page of the connections in ``group`` (``{"user_id", "cid"}`` items), as
    ``POST /realtime/users/`` answers."""
    body = {
        "group": group,
        "user_id": user_id,
        "limit": limit,
        "ascending": ascending,
        "startKey": start_key,
    }
    return queries.list_users(queries.parse_user_query(body))


alist_groups = database_sync_to_async(list_groups)
alist_users = database_sync_to_async(list_users)
# Sync twins, for views, tasks and shells.


def history(
    group: str, *, since: int | None = None, last: int | None = None, epoch: str | None = None
) -> History:
    """Sync form of ``ahistory`` (on the Redis layer, through connections the layer
    keeps for sync callers)."""
    _check_group(group)
    return _read_sync(group_address(group), since, last, epoch, "history")


def private_history(
    user_id: str, *, since: int | None = None, last: int | None = None, epoch: str | None = None
) -> History:
    """Sync form of ``aprivate_history``."""
    _check_user_id(user_id)
    return _read_sync(user_address(user_id), since, last, epoch, "private_history")


def send_to_user(user_id: str, content: Any, *, sender: str | None = None) -> None:
    """Sync form of ``asend_to_user`` (on the Redis layer, through connections the
    layer keeps for sync callers; a thread's sends keep their order)."""
    text = _private(user_id, content, sender)
    layer = _sync_sender()
    if layer is None:
        async_to_sync(asend_to_user)(user_id, content, sender=sender)
        return
    event = frame_event(text, uid=user_id, keep=enabled(layer))
    layer.group_send_sync(user_address(user_id), event)
    metrics.count("server_messages")


def broadcast(group: str, content: Any, *, sender: str | None = None) -> None:
    """Sync form of ``abroadcast``, as ``send_to_user``."""
    text = _message(group, content, sender)
    layer = _sync_sender()
    if layer is None:
        async_to_sync(abroadcast)(group, content, sender=sender)
        return
    layer.group_send_sync(group_address(group), frame_event(text, rid=group, keep=enabled(layer)))
    metrics.count("server_messages")


def send_notice(group: str, sentence: str, *, code: str = SERVER_NOTICE) -> None:
    """Sync form of ``asend_notice``, as ``send_to_user``."""
    text = _notice(group, sentence, code)
    layer = _sync_sender()
    if layer is None:
        async_to_sync(asend_notice)(group, sentence, code=code)
        return
    layer.group_send_sync(group_address(group), frame_event(text, rid=group))
    metrics.count("server_messages")


def disconnect_user(user_id: str, *, code: int = CLOSE_BY_SERVER) -> None:
    """Sync form of ``adisconnect_user``, as ``send_to_user``."""
    _check_user_id(user_id)
    layer = _sync_sender()
    if layer is None:
        async_to_sync(adisconnect_user)(user_id, code=code)
        return
    layer.group_send_sync(user_address(user_id), close_event(code))


def disconnect_connection(cid: str, *, code: int = CLOSE_BY_SERVER) -> bool:
    """Sync form of ``adisconnect_connection``, as ``send_to_user``."""
    channel_name = _channel_of(cid)
    if channel_name is None:
        return False
    layer = _sync_sender()
    if layer is None:
        async_to_sync(close_channel)(channel_name, code)
    else:
        layer.send_sync(channel_name, close_event(code))
    return True
