"""All database work of the realtime server: presence rows and their counts.

Every function here is synchronous and runs in one transaction; the consumer calls
the ``a``-prefixed twins, which run on Channels' database thread so the event loop
never blocks.

Counts stay exact under concurrency because every change is an atomic statement
(``INSERT ... ON CONFLICT DO UPDATE``, ``UPDATE ... RETURNING``), never a read
followed by a write. Rows are always locked in one order (connections, memberships
and groups by group name, then users), so concurrent transactions cannot deadlock
each other.

The consumers' writes (open, move, close) are applied many to a transaction, with
multi-row statements: ``apply_writes``; ``presence_batch`` gathers them.
"""

from __future__ import annotations

import functools
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from types import ModuleType
from typing import Any, ParamSpec, TypeVar

from channels.db import database_sync_to_async
from django.db import OperationalError, connection, transaction
from django.utils import timezone

from skapi_channels import metrics, presence_arrays, presence_lists
from skapi_channels.models import (
    Connection,
    GroupMembership,
    OnlineUser,
    RealtimeGroup,
    ServerProcess,
)
from skapi_channels.presence_batch import GroupCommit

P = ParamSpec("P")
R = TypeVar("R")
T = TypeVar("T")


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


# PostgreSQL's code for a transaction chosen as a deadlock's victim. The writes here
# take rows in one order so that it never happens; ``presence_deadlocks`` counts it.
DEADLOCK_DETECTED = "40P01"


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
            except OperationalError as error:
                metrics.count("presence_retries")
                if getattr(error.__cause__, "sqlstate", None) == DEADLOCK_DETECTED:
                    metrics.count("presence_deadlocks")
                if attempt == 4:
                    raise
                time.sleep(0.01 * 2**attempt)
        raise AssertionError("unreachable")

    return wrapper


class GroupCreationRefused(Exception):
    """Raised inside a move to roll it back: it would create a group, and the
    caller said it may not."""


# Counting primitives; callers hold a transaction. Rows are changed in the fixed lock
# order: connection rows, then memberships by (group name, user_id), then groups by
# name, then online users by user_id, so concurrent transactions cannot deadlock.
# Many changes go together in multi-row statements.

# Rows per statement: well under SQLite's parameter limit (999 in older builds);
# PostgreSQL takes 65,535 parameters.
ROWS_PER_STATEMENT = {"sqlite": 200, "postgresql": 1000}


def _statements() -> ModuleType:
    """The multi-row statements this database takes: one array per column on
    PostgreSQL (``presence_arrays``), rows listed in the statement elsewhere
    (``presence_lists``). Both take rows in key order."""
    return presence_arrays if connection.vendor == "postgresql" else presence_lists


def _chunks(items: Sequence[T]) -> Iterator[Sequence[T]]:
    size = ROWS_PER_STATEMENT.get(connection.vendor, 200)
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _lock_rows(
    cursor: Any,
    table: str,
    columns: tuple[str, ...],
    keys: Sequence[tuple[Any, ...]],
    make: tuple[str, Mapping[str, Any]] | None = None,
) -> bool:
    """Lock the rows of ``keys`` in key order before a multi-row UPDATE, whose own
    order of locking is the plan's. With ``make`` (the counter column and the
    columns of a new row), rows that do not exist are made at zero in the same
    pass, so that a later insert does not take a row out of order; answers whether
    it did (the caller deletes the rows left at zero). SQLite locks the whole
    database: nothing to do there."""
    if connection.vendor != "postgresql" or len(keys) < 2:
        return False
    for part in _chunks(keys):
        if make is None:
            presence_arrays.lock_rows(cursor, table, columns, part)
        else:
            presence_arrays.lock_or_make_rows(cursor, table, columns, make[0], part, make[1])
    return make is not None


def _change_counts(
    cursor: Any,
    table: str,
    columns: tuple[str, ...],
    counter: str,
    deltas: Mapping[tuple[Any, ...], int],
    extra: Mapping[str, Any] | None = None,
    lock: bool = True,
) -> dict[tuple[Any, ...], tuple[int, int]]:
    """Add each delta to the counter of the row its key names, making the row (with
    the ``extra`` columns) when a positive delta finds none, and deleting the rows
    left at zero. Answers (before, after) per row changed; a negative delta on a
    missing row changes nothing."""
    keys = sorted(key for key, delta in deltas.items() if delta)
    down = [key for key in keys if deltas[key] < 0]
    up = [key for key in keys if deltas[key] > 0]
    # Rows are locked in key order. One row going down, the rows going up all on one
    # side of it (a lone switch of group): the two statements run in that order and
    # lock it themselves. Otherwise a multi-row UPDATE locks in the plan's order, so
    # every row is locked first, in order, by a statement of its own.
    ups_first = len(down) == 1 and bool(up) and up[-1] < down[0]
    in_order = len(down) == 1 and (ups_first or not up or up[0] > down[0])
    made = False
    if lock and down and len(keys) > 1 and not in_order:
        made = _lock_rows(
            cursor, table, columns, keys, (counter, extra or {}) if up else None
        )
    after: dict[tuple[Any, ...], int] = {}
    statements = _statements()

    def decrease() -> None:
        for part in _chunks(down):
            rows = statements.add_to_existing(cursor, table, columns, counter, deltas, part)
            after.update((tuple(row[:-1]), row[-1]) for row in rows)

    def increase() -> None:
        for part in _chunks(up):
            rows = statements.add_or_insert(
                cursor, table, columns, counter, deltas, part, extra or {}
            )
            after.update((tuple(row[:-1]), row[-1]) for row in rows)

    for step in (increase, decrease) if ups_first else (decrease, increase):
        step()
    emptied = keys if made else sorted(key for key, count in after.items() if count == 0)
    _delete_zeros(cursor, table, columns, counter, emptied)
    return {key: (count - deltas[key], count) for key, count in after.items()}


def _delete_zeros(
    cursor: Any, table: str, columns: tuple[str, ...], counter: str, keys: Sequence[tuple[Any, ...]]
) -> None:
    """Delete the rows of ``keys`` whose counter is zero."""
    for part in _chunks(keys):
        _statements().delete_empty(cursor, table, columns, counter, part)


def _count_members(cursor: Any, members: Mapping[tuple[str, str], int], now: datetime) -> set[str]:
    """Apply the changes of connections per (group, user), and so of distinct users
    per group; answers the groups this created."""
    changed = _change_counts(
        cursor, _table(GroupMembership), ("group_name", "user_id"), "connections", members
    )
    users: defaultdict[tuple[str], int] = defaultdict(int)
    for (group, _user), (before, after) in changed.items():
        if before == 0 and after > 0:
            users[(group,)] += 1
        elif before > 0 and after == 0:
            users[(group,)] -= 1
    groups = _change_counts(
        cursor,
        _table(RealtimeGroup),
        ("name",),
        "number_of_users",
        users,
        extra={"created_at": _db_time(now)},
    )
    return {key[0] for key, (before, after) in groups.items() if before == 0 and after > 0}


def _admit(cursor: Any, wanted: Mapping[str, int], limit: int) -> dict[str, int]:
    """Count up to ``wanted`` more connections per user, never more than ``limit``
    in all; answers how many each user got."""
    online = _table(OnlineUser)
    granted: dict[str, int] = {}
    asking = {user: min(count, limit) for user, count in wanted.items() if count > 0 and limit > 0}
    for _attempt in range(3):
        if not asking:
            break
        for part in _chunks(sorted(asking)):
            cursor.execute(
                f"INSERT INTO {online} (user_id, connections) VALUES "
                f"{', '.join(['(%s, %s)'] * len(part))} "
                f"ON CONFLICT (user_id) DO UPDATE SET connections = {online}.connections "
                f"+ excluded.connections WHERE {online}.connections + excluded.connections <= %s "
                f"RETURNING user_id",
                [value for user in part for value in (user, asking[user])] + [limit],
            )
            for (user,) in cursor.fetchall():
                granted[user] = asking.pop(user)
        if not asking:
            break
        # Those rows would go over the limit (and are now locked): grant the room left.
        room: dict[str, int] = {}
        for part in _chunks(sorted(asking)):
            cursor.execute(
                f"SELECT user_id, connections FROM {online} "
                f"WHERE user_id IN ({', '.join(['%s'] * len(part))})",
                list(part),
            )
            room.update((user, limit - count) for user, count in cursor.fetchall())
        asking = {
            user: min(count, room.get(user, limit))
            for user, count in asking.items()
            if room.get(user, limit) > 0
        }
    return granted


def _count_users(
    cursor: Any, departed: Mapping[str, int], opens: Sequence[OpenConnection]
) -> list[bool]:
    """Count the users' closed connections off and their new ones on, within each
    user's limit (first come, first served); answers whether each open got in."""
    online = _table(OnlineUser)
    wanted: Counter[str] = Counter(write.user_id for write in opens)
    limits: dict[str, int] = {}
    for write in opens:
        limits.setdefault(write.user_id, write.limit)
    made = False
    keys = sorted({(u,) for u in (*departed, *wanted)})
    if departed and len(keys) > 1:
        made = _lock_rows(
            cursor, online, ("user_id",), keys, ("connections", {}) if wanted else None
        )
    _change_counts(
        cursor,
        online,
        ("user_id",),
        "connections",
        {(user,): -count for user, count in departed.items()},
        lock=False,
    )
    granted: dict[str, int] = {}
    for limit in sorted(set(limits.values())):
        granted.update(
            _admit(cursor, {u: n for u, n in wanted.items() if limits[u] == limit}, limit)
        )
    if made:  # rows made for users who got no place
        _delete_zeros(cursor, online, ("user_id",), "connections", keys)
    admitted = []
    for write in opens:
        left = granted.get(write.user_id, 0)
        admitted.append(left > 0)
        granted[write.user_id] = left - 1
    return admitted


def _count_departures(
    departures: Iterable[Departure],
    members: defaultdict[tuple[str, str], int],
    users: defaultdict[str, int],
) -> None:
    for departure in departures:
        if departure.group_name is not None:
            members[(departure.group_name, departure.user_id)] -= 1
        users[departure.user_id] += 1


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
        members: defaultdict[tuple[str, str], int] = defaultdict(int)
        departed: defaultdict[str, int] = defaultdict(int)
        _count_departures(departures, members, departed)
        _count_members(cursor, members, timezone.now())
        _count_users(cursor, departed, [])
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


# Connections: the writes of the consumers, applied alone or many in one transaction.


@dataclass(frozen=True, slots=True)
class OpenConnection:
    """Add a connection, unless its user already has ``limit`` open; answers a bool."""

    cid: str
    channel_name: str
    user_id: str
    server_id: str
    limit: int


@dataclass(frozen=True, slots=True)
class MoveConnection:
    """Move a connection from group ``old`` to ``new`` (None: no group); answers
    ``CREATED`` when that created group ``new``, ``MOVED`` otherwise, ``GONE`` when
    the row is not as expected (it was reaped), and None when it would create a group
    and ``may_create`` is false. In the last two cases nothing changes."""

    cid: str
    user_id: str
    old: str | None
    new: str | None
    may_create: bool = True


@dataclass(frozen=True, slots=True)
class CloseConnection:
    """Remove a connection; answers its ``Departure``, None when it was already gone."""

    cid: str


Write = OpenConnection | MoveConnection | CloseConnection

MOVED, GONE, CREATED = "moved", "gone", "created"


def apply_writes(writes: Sequence[Write]) -> list[Any]:
    """Apply ``writes`` in one transaction; answers each one's result, or the
    exception that failed it.

    The writes (at most one per connection) take effect as if applied one after
    another: the closes, then the moves, then the opens, each in the given order.
    When the transaction fails as a whole, each write is applied again alone, so
    that a bad one fails alone.
    """
    writes = list(writes)
    if len({write.cid for write in writes}) == len(writes):
        try:
            return _apply_writes(writes)
        except Exception as error:
            if len(writes) == 1:
                return [error]
    results: list[Any] = []
    for write in writes:
        try:
            results.extend(_apply_writes([write]))
        except Exception as error:
            results.append(error)
    return results


@atomic_with_retry
def _apply_writes(writes: Sequence[Write]) -> list[Any]:
    results: list[Any] = [None] * len(writes)
    now = timezone.now()
    closes: list[tuple[int, CloseConnection]] = []
    moves: list[tuple[int, MoveConnection]] = []
    opens: list[tuple[int, OpenConnection]] = []
    for index, write in enumerate(writes):
        if isinstance(write, CloseConnection):
            closes.append((index, write))
        elif isinstance(write, OpenConnection):
            opens.append((index, write))
        elif write.old == write.new:
            results[index] = MOVED
        elif not write.may_create and write.new is not None:
            results[index] = _move_unless_creating(write)
        else:
            moves.append((index, write))
    members: defaultdict[tuple[str, str], int] = defaultdict(int)
    departed: defaultdict[str, int] = defaultdict(int)
    entering: list[tuple[int, str]] = []
    with connection.cursor() as cursor:
        if closes:
            gone = _delete_connections(cursor, [write.cid for _, write in closes])
            for index, write in closes:
                results[index] = gone.get(write.cid)
            _count_departures(gone.values(), members, departed)
        if moves:
            moved = _regroup_connections(cursor, [write for _, write in moves])
            for index, write in moves:
                user_id = moved.get(write.cid)
                if user_id is None:
                    results[index] = GONE
                    continue
                results[index] = MOVED
                if write.old is not None:
                    members[(write.old, user_id)] -= 1
                if write.new is not None:
                    members[(write.new, user_id)] += 1
                    entering.append((index, write.new))
        created = _count_members(cursor, members, now)
        for index, group in entering:  # the first to enter a new group created it
            if group in created:
                results[index] = CREATED
                created.discard(group)
        admitted = _count_users(cursor, departed, [write for _, write in opens])
    joining = []
    for (index, write), admit in zip(opens, admitted, strict=True):
        results[index] = admit
        if admit:
            joining.append(write)
    _insert_connections(joining, now)
    return results


def _insert_connections(opens: Sequence[OpenConnection], now: datetime) -> None:
    table, connected_at = _table(Connection), _db_time(now)
    with connection.cursor() as cursor:
        for part in _chunks(opens):
            cursor.execute(
                f"INSERT INTO {table} "
                f"(cid, channel_name, user_id, group_name, server_id, connected_at) VALUES "
                f"{', '.join(['(%s, %s, %s, NULL, %s, %s)'] * len(part))}",
                [
                    value
                    for write in part
                    for value in (
                        write.cid,
                        write.channel_name,
                        write.user_id,
                        write.server_id,
                        connected_at,
                    )
                ],
            )


def _move_unless_creating(write: MoveConnection) -> str | None:
    """A move that may not create its group, in a savepoint of its own."""
    try:
        with transaction.atomic():
            result = _apply_writes([replace(write, may_create=True)])[0]
            if result == CREATED:
                raise GroupCreationRefused(write.new)
    except GroupCreationRefused:
        return None
    return str(result)


def _delete_connections(cursor: Any, cids: Sequence[str]) -> dict[str, Departure]:
    gone: dict[str, Departure] = {}
    for part in _chunks(sorted(cids)):
        rows = _statements().delete_connections(cursor, _table(Connection), part)
        gone.update((row[0], Departure(*row)) for row in rows)
    return gone


def _regroup_connections(cursor: Any, moves: Sequence[MoveConnection]) -> dict[str, str]:
    """Set each connection's group where it still is in the old one; answers the
    user_id of each connection moved."""
    moved: dict[str, str] = {}
    for part in _chunks(sorted(moves, key=lambda write: write.cid)):
        rows = _statements().regroup(
            cursor, _table(Connection), [(write.cid, write.old, write.new) for write in part]
        )
        moved.update(rows)
    return moved


def open_connection(
    cid: str, channel_name: str, user_id: str, server_id: str, limit: int
) -> bool:
    """Add a connection; False (and nothing written) when the user has ``limit`` open."""
    return bool(_apply_one(OpenConnection(cid, channel_name, user_id, server_id, limit)))


def connection_route(cid: str) -> tuple[str, str] | None:
    """The layer channel and user_id of open connection ``cid``, or None."""
    row = Connection.objects.filter(cid=cid).values_list("channel_name", "user_id").first()
    return None if row is None else (row[0], row[1])


def move_connection(
    cid: str, user_id: str, old: str | None, new: str | None, may_create: bool = True
) -> str | None:
    """Move a connection (see ``MoveConnection`` for the answers)."""
    result = _apply_one(MoveConnection(cid, user_id, old, new, may_create))
    return None if result is None else str(result)


def close_connection(cid: str) -> Departure | None:
    """Remove a connection; None when it was already gone (reaped)."""
    result = _apply_one(CloseConnection(cid))
    return result if isinstance(result, Departure) else None


def _apply_one(write: Write) -> Any:
    (result,) = apply_writes([write])
    if isinstance(result, BaseException):
        raise result
    return result


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
aconnection_route = database_sync_to_async(connection_route)
auser_exists = database_sync_to_async(user_exists)


def _undo(write: Write, result: Any) -> Write | None:
    """What undoes a write whose caller stopped waiting: a connection opened for a
    consumer that never learned of it is closed again."""
    if isinstance(write, OpenConnection) and result is True:
        return CloseConnection(write.cid)
    return None


# The consumers' writes of each event loop, many to a transaction.
group_commit: GroupCommit[Write] = GroupCommit(
    apply_writes, key=lambda write: write.cid, on_abandoned=_undo
)


async def aopen_connection(
    cid: str, channel_name: str, user_id: str, server_id: str, limit: int
) -> bool:
    opened = await group_commit.submit(OpenConnection(cid, channel_name, user_id, server_id, limit))
    return bool(opened)


async def amove_connection(
    cid: str, user_id: str, old: str | None, new: str | None, may_create: bool = True
) -> str | None:
    result = await group_commit.submit(MoveConnection(cid, user_id, old, new, may_create))
    return None if result is None else str(result)


async def aclose_connection(cid: str) -> Departure | None:
    result = await group_commit.submit(CloseConnection(cid))
    return result if isinstance(result, Departure) else None
