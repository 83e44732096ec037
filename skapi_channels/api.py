"""The Python API for site code: talk to connected users without a socket of its own.

Every call goes through the channel layer, so it reaches the connections of every
server process (with channels-redis; the in-memory layer reaches only the
connections of the calling process). Each function has an async twin with an
``a`` prefix; call that one from async code (the sync forms refuse to run in an
event loop).

Frames from the server look like the frames of PROTOCOL.md section 4, with no
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
"""

from __future__ import annotations

from typing import Any

from asgiref.sync import async_to_sync
from channels.db import database_sync_to_async
from channels.layers import get_channel_layer

from skapi_channels import metrics, queries
from skapi_channels.addressing import group_address, user_address
from skapi_channels.conf import conf
from skapi_channels.models import Connection
from skapi_channels.protocol import (
    CLOSE_BY_SERVER,
    SERVER_NOTICE,
    close_event,
    frame_event,
    group_name_problem,
    server_message_frame,
    server_notice_frame,
    server_private_frame,
    user_id_problem,
)
from skapi_channels.queries import Page

__all__ = [
    "SERVER_NOTICE",
    "Page",
    "abroadcast",
    "adisconnect_connection",
    "adisconnect_user",
    "alist_groups",
    "alist_users",
    "asend_notice",
    "asend_to_user",
    "broadcast",
    "disconnect_connection",
    "disconnect_user",
    "list_groups",
    "list_users",
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
    _check_user_id(user_id)
    if sender is not None:
        _check_user_id(sender, "sender")
    text = server_private_frame(content, sender)
    await _layer().group_send(
        user_address(user_id), frame_event(text, uid=user_id)
    )
    metrics.count("server_messages")


async def abroadcast(group: str, content: Any, *, sender: str | None = None) -> None:
    """Send ``content`` to every connection in ``group``, as the server or as ``sender``."""
    _check_group(group)
    if sender is not None:
        _check_user_id(sender, "sender")
    text = server_message_frame(content, group, sender)
    await _layer().group_send(
        group_address(group), frame_event(text, rid=group)
    )
    metrics.count("server_messages")


async def asend_notice(group: str, sentence: str, *, code: str = SERVER_NOTICE) -> None:
    """Send a notice (``#notice`` ``sentence``, ``#code`` ``code``) to ``group``."""
    _check_group(group)
    if not isinstance(sentence, str) or not sentence:
        raise ValueError("sentence must be a non-empty string.")
    text = server_notice_frame(sentence, group, code)
    await _layer().group_send(
        group_address(group), frame_event(text, rid=group)
    )
    metrics.count("server_messages")


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


# Listing: the same query code as the endpoints (PROTOCOL sections 7 and 8).


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


def send_to_user(user_id: str, content: Any, *, sender: str | None = None) -> None:
    """Sync form of ``asend_to_user``."""
    async_to_sync(asend_to_user)(user_id, content, sender=sender)


def broadcast(group: str, content: Any, *, sender: str | None = None) -> None:
    """Sync form of ``abroadcast``."""
    async_to_sync(abroadcast)(group, content, sender=sender)


def send_notice(group: str, sentence: str, *, code: str = SERVER_NOTICE) -> None:
    """Sync form of ``asend_notice``."""
    async_to_sync(asend_notice)(group, sentence, code=code)


def disconnect_user(user_id: str, *, code: int = CLOSE_BY_SERVER) -> None:
    """Sync form of ``adisconnect_user``."""
    async_to_sync(adisconnect_user)(user_id, code=code)


def disconnect_connection(cid: str, *, code: int = CLOSE_BY_SERVER) -> bool:
    """Sync form of ``adisconnect_connection``."""
    channel_name = _channel_of(cid)
    if channel_name is None:
        return False
    async_to_sync(close_channel)(channel_name, code)
    return True
