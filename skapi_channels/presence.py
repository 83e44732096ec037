"""All database work of the realtime server: presence rows and their counts.

Every function here is synchronous and runs in one transaction; the consumer calls
the ``a``-prefixed twins, which run on Channels' database thread so the event loop
never blocks.

Counts stay exact under concurrency because every change is an atomic statement
(``INSERT ... ON CONFLICT DO UPDATE``, ``UPDATE ... RETURNING``), never a read
followed by a write. Group rows are always locked in group-name order and user rows
after them, so concurrent transactions cannot deadlock each other.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, ParamSpec, TypeVar

from channels.db import database_sync_to_async
from django.db import OperationalError, connection, transaction
from django.utils import timezone

from skapi_channels.models import (
    Connection,
    GroupMembership,
    OnlineUser,
    RealtimeGroup,
    ServerProcess,
)

P = ParamSpec("P")
R = TypeVar("R")


def _table(model: type) -> str:
    return connection.ops.quote_name(model._meta.db_table)


def _db_time(moment: datetime) -> Any:
    """A datetime as a raw-SQL parameter of this database."""
    return connection.ops.adapt_datetimefield_value(moment)


@dataclass(frozen=True, slots=True)
class Departure:
    """A connection removed from the tables, for the notice to its group."""

    cid: str
    user_id: str
    group_name: str | None


def atomic_with_retry(function: Callable[P, R]) -> Callable[P, R]:
    """Run ``function`` in a transaction, again if the database refused it for a
    conflict (a deadlock victim on PostgreSQL, a busy database on SQLite)."""

    @functools.wraps(function)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        if connection.in_atomic_block:  # the caller's transaction decides
            with transaction.atomic():
                return function(*args, **kwargs)
        for attempt in range(5):
            try:
                with transaction.atomic():
                    return function(*args, **kwargs)
            except OperationalError:
                if attempt == 4:
                    raise
                time.sleep(0.01 * 2**attempt)
        raise AssertionError("unreachable")

    return wrapper


# Counting primitives; callers hold a transaction and respect the lock order.


class GroupCreationRefused(Exception):
    """Raised inside a move to roll it back: it would create a group, and the
    caller said it may not."""


def _enter_group(cursor: Any, group_name: str, user_id: str, now: datetime) -> bool:
    """Count one more connection of ``user_id`` in the group; True if that created it."""
    membership, group = _table(GroupMembership), _table(RealtimeGroup)
    cursor.execute(
        f"INSERT INTO {membership} (group_name, user_id, connections) VALUES (%s, %s, 1) "
        f"ON CONFLICT (group_name, user_id) DO UPDATE "
        f"SET connections = {membership}.connections + 1 RETURNING connections",
        [group_name, user_id],
    )
    if cursor.fetchone()[0] == 1:  # the user's first connection in the group
        cursor.execute(
            f"INSERT INTO {group} (name, number_of_users, created_at) VALUES (%s, 1, %s) "
            f"ON CONFLICT (name) DO UPDATE SET number_of_users = {group}.number_of_users + 1 "
            f"RETURNING number_of_users",
            [group_name, _db_time(now)],
        )
        return bool(cursor.fetchone()[0] == 1)
    return False


def _decrement(cursor: Any, table: str, counter: str, where: str, params: list[Any]) -> bool:
    """Take one from ``counter`` of the row ``where`` names, and delete the row when
    that leaves zero; True when it was deleted."""
    cursor.execute(
        f"UPDATE {table} SET {counter} = {counter} - 1 WHERE {where} RETURNING {counter}", params
    )
    row = cursor.fetchone()
    if row is None or row[0] > 0:
        return False
    cursor.execute(f"DELETE FROM {table} WHERE {where} AND {counter} = 0", params)
    return bool(cursor.rowcount == 1)


def _leave_group(cursor: Any, group_name: str, user_id: str) -> None:
    """Count one connection of ``user_id`` less in the group."""
    last_of_user = _decrement(
        cursor,
        _table(GroupMembership),
        "connections",
        "group_name = %s AND user_id = %s",
        [group_name, user_id],
    )
    if last_of_user:
        _decrement(cursor, _table(RealtimeGroup), "number_of_users", "name = %s", [group_name])


def _user_went_offline(cursor: Any, user_id: str) -> None:
    _decrement(cursor, _table(OnlineUser), "connections", "user_id = %s", [user_id])


def _forget(cursor: Any, departures: Iterable[Departure]) -> None:
    """Fix the counts for connections whose rows were just deleted."""
    departures = list(departures)
    for departure in sorted(
        (d for d in departures if d.group_name is not None), key=lambda d: d.group_name or ""
    ):
        _leave_group(cursor, departure.group_name or "", departure.user_id)
    for departure in sorted(departures, key=lambda d: d.user_id):
        _user_went_offline(cursor, departure.user_id)


# Server processes.


@atomic_with_retry
def register_server(server_id: str, host: str, pid: int, started_at: datetime) -> None:
    now = timezone.now()
    ServerProcess.objects.update_or_create(
        id=server_id,
        defaults={"host": host, "pid": pid, "started_at": started_at, "heartbeat_at": now},
    )


def heartbeat(server_id: str, stats: dict[str, Any]) -> bool:
    """Record that the process is alive; False when its row is gone (it was reaped)."""
    updated = ServerProcess.objects.filter(id=server_id).update(
        heartbeat_at=timezone.now(), stats=stats
    )
    return updated == 1


@atomic_with_retry
def reap_server(server_id: str, dead_before: datetime | None) -> list[Departure]:
    """Remove a server process and all its connections, fixing the counts.

    With ``dead_before``, only when its heartbeat is older than that. Deleting the
    process row first claims the work, so concurrent reapers never count twice.
    """
    with connection.cursor() as cursor:
        if dead_before is None:
            cursor.execute(f"DELETE FROM {_table(ServerProcess)} WHERE id = %s", [server_id])
        else:
            cursor.execute(
                f"DELETE FROM {_table(ServerProcess)} WHERE id = %s AND heartbeat_at < %s",
                [server_id, _db_time(dead_before)],
            )
        if cursor.rowcount != 1:
            return []
        cursor.execute(
            f"DELETE FROM {_table(Connection)} WHERE server_id = %s "
            f"RETURNING cid, user_id, group_name",
            [server_id],
        )
        departures = [Departure(*row) for row in cursor.fetchall()]
        _forget(cursor, departures)
    return departures


def stale_servers(dead_after: float) -> list[str]:
    cutoff = timezone.now() - timedelta(seconds=dead_after)
    return list(
        ServerProcess.objects.filter(heartbeat_at__lt=cutoff).values_list("id", flat=True)
    )


def reap_dead_servers(dead_after: float) -> list[Departure]:
    """Reap every process whose heartbeat is older than ``dead_after`` seconds."""
    cutoff = timezone.now() - timedelta(seconds=dead_after)
    departures: list[Departure] = []
    for server_id in stale_servers(dead_after):
        departures.extend(reap_server(server_id, cutoff))
    return departures


# Connections.


@atomic_with_retry
def open_connection(
    cid: str, channel_name: str, user_id: str, server_id: str, limit: int
) -> bool:
    """Add a connection; False (and nothing written) when the user has ``limit`` open."""
    online = _table(OnlineUser)
    with connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {online} (user_id, connections) VALUES (%s, 1) "
            f"ON CONFLICT (user_id) DO UPDATE SET connections = {online}.connections + 1 "
            f"WHERE {online}.connections < %s RETURNING connections",
            [user_id, limit],
        )
        if cursor.fetchone() is None:
            return False
    Connection.objects.create(
        cid=cid,
        channel_name=channel_name,
        user_id=user_id,
        group_name=None,
        server_id=server_id,
        connected_at=timezone.now(),
    )
    return True


MOVED, GONE, CREATED = "moved", "gone", "created"


def move_connection(
    cid: str, user_id: str, old: str | None, new: str | None, may_create: bool = True
) -> str | None:
    """Move a connection from group ``old`` to ``new`` (None: no group).

    Answers ``CREATED`` when the move created group ``new``, ``MOVED`` otherwise,
    ``GONE`` when the row is not as expected (it was reaped), and None when it
    would create a group and ``may_create`` is false; in the last two cases
    nothing changed.
    """
    try:
        return _move_connection(cid, user_id, old, new, may_create)
    except GroupCreationRefused:
        return None


@atomic_with_retry
def _move_connection(
    cid: str, user_id: str, old: str | None, new: str | None, may_create: bool
) -> str:
    if old == new:
        return MOVED
    updated = Connection.objects.filter(cid=cid, group_name=old).update(group_name=new)
    if updated != 1:
        return GONE
    now = timezone.now()
    created = False
    with connection.cursor() as cursor:
        # Both group rows in name order, so concurrent moves cannot deadlock.
        for group in sorted(name for name in (old, new) if name is not None):
            if group == old:
                _leave_group(cursor, group, user_id)
            else:
                created = _enter_group(cursor, group, user_id, now)
    if created and not may_create:
        raise GroupCreationRefused(new)
    return CREATED if created else MOVED


@atomic_with_retry
def close_connection(cid: str) -> Departure | None:
    """Remove a connection; None when it was already gone (reaped)."""
    with connection.cursor() as cursor:
        cursor.execute(
            f"DELETE FROM {_table(Connection)} WHERE cid = %s RETURNING cid, user_id, group_name",
            [cid],
        )
        row = cursor.fetchone()
        if row is None:
            return None
        departure = Departure(*row)
        _forget(cursor, [departure])
    return departure


# Users.

_known_users: dict[str, float] = {}
_KNOWN_USERS_MAX = 10_000


def user_exists(
    user_id: str,
    lookup: Callable[[str], Any],
    cache_seconds: float,
    id_of: Callable[[Any], Any] = str,
) -> bool:
    """Whether ``user_id`` names a user; positive answers are cached per process.

    The user found must have exactly this user_id: a lookup may accept look-alikes
    ("07" or " 7" for 7), which name no user on the wire.
    """
    now = time.monotonic()
    expires = _known_users.get(user_id)
    if expires is not None and expires > now:
        return True
    user = lookup(user_id)
    if user is None or str(id_of(user)) != user_id:
        _known_users.pop(user_id, None)
        return False
    if len(_known_users) >= _KNOWN_USERS_MAX:
        _known_users.clear()
    _known_users[user_id] = now + cache_seconds
    return True


def user_known(user_id: str) -> bool:
    """Whether ``user_id`` is in the cache, so ``user_exists`` needs no query."""
    expires = _known_users.get(user_id)
    return expires is not None and expires > time.monotonic()


# Async twins for the consumer.

aregister_server = database_sync_to_async(register_server)
aheartbeat = database_sync_to_async(heartbeat)
areap_dead_servers = database_sync_to_async(reap_dead_servers)
areap_server = database_sync_to_async(reap_server)
aopen_connection = database_sync_to_async(open_connection)
amove_connection = database_sync_to_async(move_connection)
aclose_connection = database_sync_to_async(close_connection)
auser_exists = database_sync_to_async(user_exists)
