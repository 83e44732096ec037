"""Group commit of presence writes: many writes in one transaction stay as exact as
one at a time (results, limits, created groups), a bad write fails alone, and a
frame's ack waits for its own write's commit."""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any
from unittest import mock

import pytest
from channels.db import database_sync_to_async
from django.contrib.sessions.backends.db import SessionStore
from django.core.cache import cache
from django.db import IntegrityError, connections
from django.test import override_settings
from django.utils import timezone

from skapi_channels import handshake, metrics, presence
from skapi_channels.models import (
    Connection,
    GroupMembership,
    OnlineUser,
    RealtimeGroup,
    ServerProcess,
)
from skapi_channels.presence import (
    CREATED,
    GONE,
    MOVED,
    CloseConnection,
    MoveConnection,
    OpenConnection,
    apply_writes,
)
from skapi_channels.presence_batch import GroupCommit
from skapi_channels.revocation import LOGOUT_KEY
from skapi_channels.runtime import runtime
from skapi_channels.tokens import issue_token, read_payload
from tests.conftest import in_db, session_key_for


def opened(cid: str, user: str, limit: int = 100, server: str = "server") -> OpenConnection:
    return OpenConnection(cid, f"chan.{cid}", user, server, limit)


@pytest.fixture
def server(transactional_db: None) -> str:
    presence.register_server("server", "host", 1, timezone.now())
    return "server"


def in_thread(function: Callable[[], Any]) -> Any:
    """Run ``function`` on a thread of its own, with a database connection of its own."""
    out: list[Any] = []

    def run() -> None:
        try:
            out.append(function())
        finally:
            connections.close_all()

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(60)
    return out[0]


def test_a_batch_answers_each_write_as_if_applied_one_by_one(server, presence_is_true):
    apply_writes([opened("a1", "1"), opened("a2", "1"), opened("b1", "2")])
    results = apply_writes(
        [
            MoveConnection("a1", "1", None, "Room"),
            MoveConnection("b1", "2", None, "Room"),  # Room exists by then
            MoveConnection("a2", "1", None, "Room"),  # user 1 already in Room
            MoveConnection("zz", "9", None, "Room"),  # no such connection
            CloseConnection("nope"),
            opened("c1", "3"),
        ]
    )
    assert results == [CREATED, MOVED, MOVED, GONE, None, True]
    assert RealtimeGroup.objects.get(name="Room").number_of_users == 2
    assert GroupMembership.objects.get(group_name="Room", user_id="1").connections == 2
    presence_is_true()
    results = apply_writes(
        [
            CloseConnection("a1"),
            MoveConnection("a2", "1", "Room", "Hall"),
            MoveConnection("b1", "2", "Room", None),
        ]
    )
    assert results[0] == presence.Departure("a1", "1", "Room")
    assert results[1:] == [CREATED, MOVED]
    assert not RealtimeGroup.objects.filter(name="Room").exists()  # its last user left
    presence_is_true()


def test_names_that_look_like_sql_or_array_syntax_stay_as_they_are(server, presence_is_true):
    # PostgreSQL's batches pass names as arrays: quoting is the driver's, not ours.
    groups = ["NULL", "null", "{a,b}", 'x"y\\z', " sp ", "a'b", "é🙂", "(1, 2)"]
    users = ["NULL", 'u"1', "u{2}", "u,3"]
    cids = [f"odd{n}" for n in range(len(groups))]
    apply_writes([opened(cid, users[n % 4]) for n, cid in enumerate(cids)])
    assert apply_writes(
        [MoveConnection(cid, users[n % 4], None, groups[n]) for n, cid in enumerate(cids)]
    ) == [CREATED] * len(groups)
    assert set(RealtimeGroup.objects.values_list("name", flat=True)) == set(groups)
    assert apply_writes(
        [
            MoveConnection(cid, users[n % 4], groups[n], groups[(n + 1) % len(groups)])
            for n, cid in enumerate(cids)
        ]
    ) == [MOVED] * len(groups)
    assert set(GroupMembership.objects.values_list("group_name", "user_id")) == {
        (groups[(n + 1) % len(groups)], users[n % 4]) for n in range(len(groups))
    }
    presence_is_true()
    departures = apply_writes([CloseConnection(cid) for cid in cids])
    assert [(d.user_id, d.group_name) for d in departures] == [
        (users[n % 4], groups[(n + 1) % len(groups)]) for n in range(len(groups))
    ]
    assert not RealtimeGroup.objects.exists() and not GroupMembership.objects.exists()
    presence_is_true()


def test_only_the_first_move_into_a_new_group_created_it(server, presence_is_true):
    apply_writes([opened(f"c{n}", str(n)) for n in range(6)])
    results = apply_writes([MoveConnection(f"c{n}", str(n), None, f"G{n % 2}") for n in range(6)])
    assert results == [CREATED, CREATED, MOVED, MOVED, MOVED, MOVED]
    presence_is_true()


def test_a_move_that_may_not_create_is_refused_alone_in_its_batch(server, presence_is_true):
    apply_writes([opened("a", "1"), opened("b", "2"), opened("c", "3"), opened("d", "4")])
    apply_writes([MoveConnection("d", "4", None, "Old")])
    results = apply_writes(
        [
            MoveConnection("a", "1", None, "New", may_create=False),
            MoveConnection("b", "2", None, "Other"),
            MoveConnection("c", "3", None, "Old", may_create=False),
        ]
    )
    assert results == [None, CREATED, MOVED]
    assert Connection.objects.get(cid="a").group_name is None
    assert not RealtimeGroup.objects.filter(name="New").exists()
    presence_is_true()


def test_the_connection_limit_is_exact_inside_a_batch(server, presence_is_true):
    apply_writes([opened("old1", "7", 3), opened("old2", "7", 3)])
    results = apply_writes(
        [opened("n1", "7", 3), opened("n2", "7", 3), opened("n3", "7", 3), opened("x", "8", 3)]
    )
    assert results == [True, False, False, True]
    # A close in the same batch frees its place for an open.
    results = apply_writes([opened("n4", "7", 3), CloseConnection("old1"), opened("n5", "7", 3)])
    assert results[0] is True and results[2] is False
    assert OnlineUser.objects.get(user_id="7").connections == 3
    assert set(Connection.objects.filter(user_id="7").values_list("cid", flat=True)) == {
        "old2",
        "n1",
        "n4",
    }
    presence_is_true()


def test_concurrent_batches_keep_the_limit_exact(server, presence_is_true):
    limit = 5

    def opens(worker: int) -> list[Any]:
        return apply_writes(
            [opened(f"w{worker}u{u}n{n}", f"u{u}", limit) for n in range(4) for u in range(3)]
        )

    results: list[list[Any]] = []

    def run(worker: int) -> None:
        try:
            results.append(opens(worker))
        finally:
            connections.close_all()

    threads = [threading.Thread(target=run, args=(worker,)) for worker in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert sum(result.count(True) for result in results) == 3 * limit
    assert Counter(Connection.objects.values_list("user_id", flat=True)) == {
        "u0": limit,
        "u1": limit,
        "u2": limit,
    }
    presence_is_true()


def test_a_failing_write_fails_alone(server, presence_is_true):
    apply_writes([opened("a", "1"), opened("b", "2")])
    results = apply_writes(
        [
            MoveConnection("a", "1", None, "Room"),
            opened("orphan", "3", server="no-such-server"),  # violates the foreign key
            CloseConnection("b"),
            opened("c", "4"),
        ]
    )
    assert results[0] == CREATED
    assert isinstance(results[1], IntegrityError)
    assert results[2] == presence.Departure("b", "2", None)
    assert results[3] is True
    assert set(Connection.objects.values_list("cid", flat=True)) == {"a", "c"}
    presence_is_true()


def test_two_writes_of_one_connection_apply_in_order(server, presence_is_true):
    results = apply_writes([opened("a", "1"), MoveConnection("a", "1", None, "Room")])
    assert results == [True, CREATED]
    presence_is_true()


def churn_in_batches(worker: int, rounds: int, errors: list[BaseException]) -> None:
    """One thread's random batches of opens, moves and closes of its own connections."""
    rng = random.Random(worker)
    mine: dict[str, tuple[str, str | None]] = {}
    groups = ["a", "b", "c", "d", None]
    try:
        for round_ in range(rounds):
            batch: list[presence.Write] = []
            touched: set[str] = set()
            for step in range(rng.randrange(1, 12)):
                action = rng.random()
                free = [cid for cid in mine if cid not in touched]
                if action < 0.3 or not free:
                    cid = f"w{worker}r{round_}s{step}"
                    batch.append(opened(cid, f"u{rng.randrange(4)}", 1000))
                elif action < 0.85:
                    cid = rng.choice(free)
                    user, old = mine[cid]
                    batch.append(MoveConnection(cid, user, old, rng.choice(groups)))
                else:
                    batch.append(CloseConnection(rng.choice(free)))
                touched.add(batch[-1].cid)
            for write, result in zip(batch, apply_writes(batch), strict=True):
                assert not isinstance(result, BaseException), result
                if isinstance(write, OpenConnection):
                    assert result is True
                    mine[write.cid] = (write.user_id, None)
                elif isinstance(write, MoveConnection):
                    assert result in (MOVED, CREATED)
                    mine[write.cid] = (write.user_id, write.new)
                else:
                    assert result is not None
                    del mine[write.cid]
    except BaseException as error:  # reported by the test
        errors.append(error)
    finally:
        connections.close_all()


def test_a_lone_switch_takes_its_rows_in_key_order_without_a_lock_statement(
    server, db_queries, presence_is_true
):
    """Rows are locked in key order: a lone switch's two statements per table run in
    that order (the row going up first when its key sorts first), with no SELECT ...
    FOR UPDATE before them."""
    apply_writes([opened("c1", "1"), opened("c2", "2")])
    apply_writes([MoveConnection("c1", "1", None, "b"), MoveConnection("c2", "2", None, "b")])
    db_queries.clear()
    assert apply_writes([MoveConnection("c1", "1", "b", "a")]) == [CREATED]
    for table in ("groupmembership", "realtimegroup"):
        changes = [sql.split()[0] for sql in db_queries if table in sql and "DELETE" not in sql]
        assert changes == ["INSERT", "UPDATE"], (table, db_queries)  # a before b
    db_queries.clear()
    assert apply_writes([MoveConnection("c1", "1", "a", "b")]) == [MOVED]
    changes = [sql.split()[0] for sql in db_queries if "groupmembership" in sql]
    assert changes[:2] == ["UPDATE", "INSERT"], db_queries  # a before b
    assert not any("FOR UPDATE" in sql for sql in db_queries)


def churn_in_threads(threads: int, rounds: int) -> list[BaseException]:
    """``churn_in_batches`` on ``threads`` threads at once; answers their errors."""
    errors: list[BaseException] = []
    running = [
        threading.Thread(target=churn_in_batches, args=(n, rounds, errors)) for n in range(threads)
    ]
    for thread in running:
        thread.start()
    for thread in running:
        thread.join(120)
    return errors


def test_concurrent_batches_keep_counts_exact(server, presence_is_true):
    assert churn_in_threads(5, 25) == []
    assert Connection.objects.exists()
    presence_is_true()


@pytest.mark.skipif(
    connections["default"].vendor != "postgresql", reason="SQLite locks the whole database"
)
def test_concurrent_batches_never_deadlock(server, presence_is_true):
    # Rows are taken in one order, new rows included: a transaction that inserts a
    # group (or membership, or user) row must not do so after locking a row that
    # sorts after it, or two batches wait for each other until PostgreSQL's
    # deadlock_timeout (1 s) picks a victim.
    before = metrics.counters["presence_deadlocks"]
    assert churn_in_threads(6, 40) == []
    assert metrics.counters["presence_deadlocks"] == before
    presence_is_true()


def test_a_dead_process_is_reaped_in_a_few_statements(server, db_queries, presence_is_true):
    presence.register_server("dead", "lost", 9, timezone.now())
    apply_writes([opened(f"d{n}", f"u{n % 40}", server="dead") for n in range(400)])
    apply_writes([MoveConnection(f"d{n}", f"u{n % 40}", None, f"g{n % 30}") for n in range(400)])
    apply_writes([opened("live", "u1")])
    db_queries.clear()
    departures = presence.reap_server("dead", None)
    assert len(departures) == 400
    assert len(db_queries) <= 20, db_queries
    assert list(Connection.objects.values_list("cid", flat=True)) == ["live"]
    presence_is_true()


# The group commit itself.


class Gate:
    """Holds the group commit's calls until opened, counting them."""

    def __init__(self) -> None:
        self.open = threading.Event()
        self.calls: list[int] = []

    def apply(self, writes: list[Any]) -> list[Any]:
        self.calls.append(len(writes))
        self.open.wait(30)
        return apply_writes(writes)


@pytest.fixture
def gate(monkeypatch: pytest.MonkeyPatch) -> Iterator[Gate]:
    gate = Gate()
    monkeypatch.setattr(presence.group_commit, "_apply", database_sync_to_async(gate.apply))
    yield gate
    gate.open.set()


async def until(condition: Callable[[], bool], timeout: float = 10) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


def group_of(cid: str) -> str | None:
    """The connection's group as another database connection sees it (committed)."""
    return in_thread(lambda: Connection.objects.get(cid=cid).group_name)


async def test_writes_queued_during_a_call_go_together_in_the_next(
    users, connect, gate, presence_is_true
):
    gate.open.set()
    clients = [await connect(user) for user in (users.alice, users.alice, users.bob, users.carol)]
    gate.open.clear()
    stats = presence.group_commit.stats
    batches_before, calls_before = stats.batches, len(gate.calls)
    await clients[0].send({"action": "joinRoom", "rid": "Room", "id": 1})
    await until(lambda: len(gate.calls) > calls_before)  # the first join's call, held
    for number, client in enumerate(clients[1:], start=2):
        await client.send({"action": "joinRoom", "rid": "Room", "id": number})
    queue = presence.group_commit._queues[asyncio.get_running_loop()]
    await until(lambda: len(queue.waiting) == 3)
    await clients[0].nothing()  # no ack before the commit
    gate.open.set()
    for number, client in enumerate(clients, start=1):
        frame = await client.receive()
        while "#ack" not in frame:  # notices of the others' joins may come first
            assert frame["#code"] == "USER_JOINED", frame
            frame = await client.receive()
        assert frame["#ack"] == number
    assert gate.calls[calls_before:] == [1, 3]  # the joins queued meanwhile went together
    assert stats.batches == batches_before + 2
    await in_db(presence_is_true)


async def test_an_ack_comes_after_its_write_is_committed(users, connect, gate):
    gate.open.set()
    a = await connect(users.alice)
    gate.open.clear()
    calls_before = len(gate.calls)
    await a.send({"action": "joinRoom", "rid": "Room", "id": 1})
    await until(lambda: len(gate.calls) > calls_before)
    await a.nothing(0.3)
    gate.open.set()
    assert (await a.receive())["#ack"] == 1
    (row,) = await in_db(lambda: list(Connection.objects.values_list("cid", flat=True)))
    assert await asyncio.to_thread(group_of, row) == "Room"


@pytest.mark.django_db(transaction=True)
async def test_an_open_whose_caller_gave_up_is_closed_again(presence_is_true):
    await in_db(presence.register_server, "server", "host", 1, timezone.now())
    commit: GroupCommit[presence.Write] = GroupCommit(
        apply_writes, key=lambda write: write.cid, on_abandoned=presence._undo
    )
    hold = threading.Event()
    original = commit._apply

    async def held(writes: list[Any]) -> list[Any]:
        await asyncio.to_thread(hold.wait, 30)
        return await original(writes)

    commit._apply = held  # type: ignore[method-assign]
    waiting = asyncio.ensure_future(commit.submit(opened("gone", "1")))
    await asyncio.sleep(0.05)
    waiting.cancel()
    hold.set()
    await until(lambda: commit.stats.batches >= 2)
    assert commit.stats.requests == 2  # the open, then the close that undid it
    assert await in_db(Connection.objects.count) == 0
    await in_db(presence_is_true)
    await database_sync_to_async(connections.close_all)()


# Handshakes: the user lookups of a burst share a query, never a cache.


def test_active_users_answers_each_key_in_one_query(users, db_queries):
    users.carol.is_active = False
    users.carol.save()
    alice, bob, carol = (str(user.pk) for user in (users.alice, users.bob, users.carol))
    db_queries.clear()
    found = handshake.active_users([alice, bob, "nope", alice, carol, "999999"])
    assert len(db_queries) == 1
    assert [user and user.username for user in found] == [
        "alice",
        "bob",
        None,
        "alice",
        None,
        None,
    ]
    assert found[0] is not found[3]  # each handshake gets its own instance


def refuse_user_id_of_carol(user: Any) -> str:
    if user.username == "carol":
        raise LookupError("no user_id for carol")
    return str(user.pk)


def test_token_logins_read_users_and_logouts_once_for_a_burst(users, db_queries):
    """One query for the users and one cache read for the logout times, whatever
    the burst's size; each handshake answered on its own."""
    payloads = {
        user.username: read_payload(issue_token(user)[0])
        for user in (users.alice, users.bob, users.carol)
    }
    cache.set(LOGOUT_KEY.format(users.bob.pk), time.time() + 1)  # bob logged out after
    stale = {**payloads["alice"], "h": "an older auth hash"}
    reads: list[list[str]] = []
    get_many = cache.get_many

    def counted(keys: list[str]) -> Any:
        reads.append(keys)
        return get_many(keys)

    db_queries.clear()
    try:
        with (
            mock.patch.object(cache, "get_many", counted),
            override_settings(
                SKAPI_CHANNELS={
                    "USER_ID_FUNCTION": "tests.test_presence_batch.refuse_user_id_of_carol"
                }
            ),
        ):
            logins = handshake.token_logins(
                [payloads["alice"], payloads["bob"], stale, payloads["carol"], payloads["alice"]]
            )
    finally:
        cache.delete(LOGOUT_KEY.format(users.bob.pk))
    assert len(db_queries) == 1 and len(reads) == 1
    assert isinstance(logins[0], handshake.Login) and isinstance(logins[4], handshake.Login)
    assert logins[0].user_id == str(users.alice.pk) and logins[0].session_key is None
    assert logins[0].user is not logins[4].user
    assert logins[1] is None  # logged out since the token was issued
    assert logins[2] is None  # the password changed since
    assert isinstance(logins[3], LookupError)  # fails that handshake alone


async def test_a_burst_of_handshakes_gets_each_its_own_user(users, connect, presence_is_true):
    await in_db(lambda: type(users.carol).objects.filter(pk=users.carol.pk).update(is_active=False))
    tokens = {
        user.username: (await in_db(issue_token, user))[0]
        for user in (users.alice, users.bob, users.carol)
    }
    names = ["alice", "bob", "carol"] * 4
    clients = await asyncio.gather(
        *(
            connect(None, path=f"/ws/realtime/?token={tokens[name]}", accept=name != "carol")
            for name in names
        )
    )
    assert len(clients) == 12
    rows = await in_db(lambda: sorted(Connection.objects.values_list("user_id", flat=True)))
    assert rows == sorted([str(users.alice.pk)] * 4 + [str(users.bob.pk)] * 4)
    # A session logged out in the middle of a burst is refused at once.
    keys = [await in_db(session_key_for, users.alice) for _ in range(3)]
    await in_db(lambda: SessionStore(keys[1]).delete())

    async def by_session(key: str, accept: bool) -> Any:
        from channels.testing import WebsocketCommunicator

        from tests.asgi import application

        communicator = WebsocketCommunicator(
            application, "/ws/realtime/", headers=[(b"cookie", f"sessionid={key}".encode())]
        )
        connected, _ = await communicator.connect(timeout=5)
        assert connected == accept
        return communicator

    communicators = await asyncio.gather(
        by_session(keys[0], True), by_session(keys[1], False), by_session(keys[2], True)
    )
    for communicator in communicators:
        await communicator.disconnect()
    await in_db(presence_is_true)


async def test_a_dead_process_with_many_connections_is_reaped_with_every_notice(
    users, connect, presence_is_true
):
    def dead_server() -> None:
        presence.register_server("dead", "lost", 9, timezone.now() - timedelta(hours=1))
        ServerProcess.objects.filter(id="dead").update(
            heartbeat_at=timezone.now() - timedelta(hours=1)
        )
        apply_writes([opened(f"d{n}", f"u{n % 7}", server="dead") for n in range(120)])
        apply_writes(
            [
                MoveConnection(f"d{n}", f"u{n % 7}", None, "Room" if n % 2 else "Hall")
                for n in range(120)
            ]
        )

    await in_db(dead_server)
    a = await connect(users.alice)
    await a.join("Room")
    departures = await runtime.reap()
    assert len(departures) == 120
    notices = [await a.receive() for _ in range(60)]
    assert {notice["#code"] for notice in notices} == {"USER_DISCONNECTED"}
    assert sorted(notice["#scid"] for notice in notices) == sorted(
        f"d{n}" for n in range(1, 120, 2)
    )
    await a.nothing()
    await in_db(presence_is_true)
