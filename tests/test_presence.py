"""Presence stays true: concurrent writers, dead processes, concurrent reapers."""

from __future__ import annotations

import random
import threading
from datetime import timedelta

import pytest
from django.db import connections
from django.utils import timezone

from skapi_channels import presence
from skapi_channels.models import Connection, ServerProcess
from skapi_channels.runtime import runtime
from tests.conftest import in_db

GROUPS = ["a", "b", "c", "d", None]


def churn(worker: int, steps: int, errors: list[BaseException]) -> None:
    """One thread's random opens, moves and closes, as many consumers would do."""
    rng = random.Random(worker)
    mine: dict[str, tuple[str, str | None]] = {}
    try:
        for step in range(steps):
            action = rng.random()
            if action < 0.25 or not mine:
                cid = f"w{worker}s{step}"
                user = f"u{rng.randrange(4)}"
                if presence.open_connection(cid, "chan", user, "server", 1000):
                    mine[cid] = (user, None)
            elif action < 0.85:
                cid = rng.choice(list(mine))
                user, old = mine[cid]
                new = rng.choice(GROUPS)
                assert presence.move_connection(cid, user, old, new)
                mine[cid] = (user, new)
            else:
                cid = rng.choice(list(mine))
                assert presence.close_connection(cid) is not None
                del mine[cid]
    except BaseException as error:  # reported by the test
        errors.append(error)
    finally:
        connections.close_all()


@pytest.mark.django_db(transaction=True)
def test_concurrent_joins_switches_and_leaves_keep_counts_exact(presence_is_true):
    presence.register_server("server", "host", 1, timezone.now())
    errors: list[BaseException] = []
    threads = [threading.Thread(target=churn, args=(n, 60, errors)) for n in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert errors == []
    assert Connection.objects.exists()
    presence_is_true()


def make_dead_server(groups: dict[str, list[str]], age: float = 3600) -> list[str]:
    long_ago = timezone.now() - timedelta(seconds=age)
    presence.register_server("dead", "lost-host", 99, long_ago)
    ServerProcess.objects.filter(id="dead").update(heartbeat_at=long_ago)
    cids = []
    for group, users in groups.items():
        for number, user in enumerate(users):
            cid = f"dead-{group}-{number}"
            presence.open_connection(cid, "chan", user, "dead", 10)
            presence.move_connection(cid, user, None, group)
            cids.append(cid)
    return cids


async def test_reaper_removes_a_dead_process_and_tells_its_groups(users, connect, presence_is_true):
    await in_db(make_dead_server, {"Room": ["90", "91"], "Away": ["92"]})
    a = await connect(users.alice)
    await a.join("Room")
    departures = await runtime.reap()
    assert sorted(d.user_id for d in departures) == ["90", "91", "92"]
    notices = [await a.receive(), await a.receive()]
    assert sorted(n["#user_id"] for n in notices) == ["90", "91"]
    assert {n["#code"] for n in notices} == {"USER_DISCONNECTED"}
    assert {n["#srid"] for n in notices} == {"Room"}
    await a.nothing()
    assert not await in_db(ServerProcess.objects.filter(id="dead").exists)
    assert await in_db(Connection.objects.filter(server_id="dead").count) == 0
    await in_db(presence_is_true)


async def test_reaper_leaves_live_processes_alone(users, connect):
    a = await connect(users.alice)
    await a.join("Room")
    assert await runtime.reap() == []
    assert await in_db(Connection.objects.count) == 1


@pytest.mark.django_db(transaction=True)
def test_concurrent_reapers_reap_once(presence_is_true):
    make_dead_server({"Room": ["1", "2", "3"], "Other": ["1"]})
    results: list[list[presence.Departure]] = []

    def reap() -> None:
        try:
            results.append(presence.reap_dead_servers(20))
        finally:
            connections.close_all()

    threads = [threading.Thread(target=reap) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert sorted(len(result) for result in results) == [0, 0, 0, 4]
    presence_is_true()


@pytest.mark.django_db(transaction=True)
def test_dead_processes_connections_count_towards_the_limit_until_reaped():
    make_dead_server({"Room": ["7"] * 2})
    presence.register_server("live", "host", 1, timezone.now())
    assert not presence.open_connection("new", "chan", "7", "live", 2)
    presence.reap_dead_servers(20)
    assert presence.open_connection("new", "chan", "7", "live", 2)
