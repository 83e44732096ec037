"""Two daphne processes on one Redis and one PostgreSQL: messages, notices and
listings cross processes, presence survives kill -9 and SIGTERM, counts stay exact
under concurrency, and a Redis restart does not stop the service."""

from __future__ import annotations

import asyncio
import random
import signal
import time
from typing import Any

import pytest

from tests.scaleout.conftest import (
    FAST,
    REAP_BOUND,
    TABLES,
    USERS,
    Client,
    Deployment,
    RedisServer,
)

pytestmark = [pytest.mark.scaleout, pytest.mark.timeout(120)]


def notice(code: str, user_id: str, group: str) -> Any:
    return lambda f: (
        f.get("#code") == code and f.get("#user_id") == user_id and f.get("#srid") == group
    )


async def test_messages_notices_and_listings_cross_processes(deployment: Deployment) -> None:
    a, b = deployment.servers
    alice = await deployment.client(a, 0)
    bob = await deployment.client(b, 1)
    carol = await deployment.client(b, 2)

    await bob.join("room")
    await alice.join("room")
    joined = await bob.wait_for(notice("USER_JOINED", alice.user_id, "room"), 5)
    assert joined["#notice"] == f"{alice.user_id} has joined the message group."

    await alice.broadcast("room", {"hello": "from A"})
    message = await bob.wait_for(lambda f: "#message" in f, 5)
    assert message["#message"] == {"hello": "from A"} and message["#user_id"] == alice.user_id
    await alice.wait_for(lambda f: "#message" in f, 5)  # the sender's own copy

    await carol.send_private(alice.user_id, "psst from B")
    private = await alice.wait_for(lambda f: "#private" in f, 5)
    assert private["#private"] == "psst from B" and private["#srid"] is None
    assert not any("#message" in f for f in carol.frames)  # carol never joined

    for server in (a, b):
        groups = await server.apost("/realtime/groups/", {}, user=2)
        assert groups["list"] == [{"group": "room", "number_of_users": 2}]
        users = await server.apost("/realtime/users/", {"group": "room"}, user=2)
        assert sorted(item["user_id"] for item in users["list"]) == sorted(
            [alice.user_id, bob.user_id]
        )

    await bob.join(None)
    left = await alice.wait_for(notice("USER_LEFT", bob.user_id, "room"), 5)
    assert left["#scid"] == joined_cid(users["list"], bob.user_id)
    await alice.close()
    await carol.join("room")
    await bob.join("room")
    await carol.wait_for(notice("USER_JOINED", bob.user_id, "room"), 5)
    deployment.database.assert_counts_true()


def joined_cid(items: list[dict[str, str]], user_id: str) -> str:
    return next(item["cid"] for item in items if item["user_id"] == user_id)


async def test_kill_9_is_reaped_with_notices_within_the_bound(deployment: Deployment) -> None:
    a, b = deployment.servers
    doomed = [await deployment.client(a, user) for user in (0, 1, 2)]
    survivor = await deployment.client(b, 3)
    await survivor.join("room")
    for client in doomed:
        await client.join("room")
    await doomed[2].join("elsewhere")
    assert len(deployment.server_ids()) == 2
    a_id = next(
        row[0]
        for row in deployment.database.query(
            f"SELECT server_id FROM {TABLES.connection} WHERE user_id = %s", ("1",)
        )
    )

    killed_at = time.monotonic()
    a.signal(signal.SIGKILL)
    a.wait(10)
    for user_id in ("1", "2"):
        await survivor.wait_for(notice("USER_DISCONNECTED", user_id, "room"), REAP_BOUND + 2)
    elapsed = time.monotonic() - killed_at
    print(f"kill -9 to USER_DISCONNECTED: {elapsed:.2f} s (bound {REAP_BOUND:.1f} s)")
    assert elapsed <= REAP_BOUND

    assert a_id not in deployment.server_ids()
    assert deployment.database.query(
        f"SELECT count(*) FROM {TABLES.connection} WHERE server_id = %s", (a_id,)
    ) == [(0,)]
    deployment.database.assert_counts_true()
    groups = await b.apost("/realtime/groups/", {}, user=3)
    assert groups["list"] == [{"group": "room", "number_of_users": 1}]
    # The third doomed client was in another group: nobody there to tell.
    assert not any(f.get("#srid") == "elsewhere" for f in survivor.frames)


@pytest.mark.parametrize("liveness", [{}])  # the defaults: 5 s heartbeat, dead after 20 s
async def test_kill_9_with_default_settings_is_reaped_within_30_s(deployment: Deployment) -> None:
    from skapi_channels.conf import DEFAULTS

    a, b = deployment.servers
    doomed = await deployment.client(a, 0)
    survivor = await deployment.client(b, 1)
    await survivor.join("room")
    await doomed.join("room")
    killed_at = time.monotonic()
    a.signal(signal.SIGKILL)
    a.wait(10)
    await survivor.wait_for(notice("USER_DISCONNECTED", doomed.user_id, "room"), 40)
    elapsed = time.monotonic() - killed_at
    print(f"kill -9 to USER_DISCONNECTED with the default settings: {elapsed:.2f} s")
    # The last heartbeat may come just before the death: stale DEAD_AFTER later,
    # then the next reaper run (REAP_INTERVAL, +20 % jitter); docs/protocol.md §9 says 30 s.
    assert DEFAULTS["DEAD_AFTER"] + 1.2 * DEFAULTS["REAP_INTERVAL"] < 30
    assert elapsed <= 30.0
    deployment.database.assert_counts_true()


@pytest.mark.parametrize("signal_number", [signal.SIGTERM, signal.SIGINT])
async def test_sigterm_retires_the_process_at_once(
    deployment: Deployment, signal_number: int
) -> None:
    a, b = deployment.servers
    leaving = await deployment.client(a, 0)
    staying = await deployment.client(b, 1)
    await staying.join("room")
    await leaving.join("room")
    assert len(deployment.server_ids()) == 2

    stopped_at = time.monotonic()
    a.signal(signal_number)
    await staying.wait_for(notice("USER_DISCONNECTED", leaving.user_id, "room"), 5)
    elapsed = time.monotonic() - stopped_at
    assert elapsed < FAST["DEAD_AFTER"], f"notice came after {elapsed:.2f} s: reaped, not retired"
    assert a.wait(15) == 0
    assert len(deployment.server_ids()) == 1
    assert deployment.database.query(f"SELECT count(*) FROM {TABLES.connection}") == [(1,)]
    deployment.database.assert_counts_true()


@pytest.mark.parametrize("capacity", [5])
async def test_clients_of_a_process_that_fell_behind_are_told_what_they_missed(
    deployment: Deployment,
) -> None:
    a, b = deployment.servers
    sender = await deployment.client(a, 0)
    receiver = await deployment.client(b, 1)
    await receiver.join("room")
    await sender.join("room")
    await receiver.wait_for(notice("USER_JOINED", sender.user_id, "room"), 5)

    b.signal(signal.SIGSTOP)  # B stalls (well under DEAD_AFTER): its queue fills
    try:
        for number in range(12):
            await sender.broadcast("room", number)
    finally:
        b.signal(signal.SIGCONT)

    missed = await receiver.wait_for(lambda f: f.get("#code") == "MISSED_MESSAGES", 5)
    await asyncio.sleep(0.5)
    delivered = [f["#message"] for f in receiver.frames if "#message" in f]
    assert delivered == sorted(delivered)  # in order, with a gap
    assert missed["#missed"] + len(delivered) == 12, (missed, delivered)
    # At most a queue's worth (5) got through, and one more if B read it before
    # the SIGSTOP took hold.
    assert missed["#missed"] >= 12 - 5 - 1
    # The sending process counted the drops and publishes them with its heartbeat.
    await asyncio.sleep(2 * FAST["HEARTBEAT_INTERVAL"])
    stats = [row[0] for row in deployment.database.query(f"SELECT stats FROM {TABLES.server}")]
    assert sum(s.get("dropped", 0) for s in stats) == missed["#missed"]


async def test_concurrent_joins_switches_and_leaves_keep_counts_exact(
    deployment: Deployment,
) -> None:
    a, b = deployment.servers
    rng = random.Random(5)
    groups = ["g0", "g1", "g2", "g3"]
    clients: list[Client] = await asyncio.gather(
        *(deployment.client((a, b)[i % 2], i % USERS) for i in range(24))
    )
    operations = 0

    async def churn(client: Client, count: int) -> None:
        nonlocal operations
        for _ in range(count):
            target = rng.choice([*groups, None])
            await client.join(target)
            operations += 1

    # 24 clients x 9 joins/switches/leaves = 216 operations, all at once, on both
    # processes; a few clients also close mid-way.
    tasks = [churn(client, 9) for client in clients]
    await asyncio.gather(*tasks)
    assert operations >= 200
    await asyncio.gather(*(client.close() for client in clients[:4]))
    await asyncio.sleep(0.5)
    deployment.database.assert_counts_true()

    listed = {}
    for server in (a, b):
        answer = await server.apost("/realtime/groups/", {"limit": 100}, user=0)
        listed[server.name] = {item["group"]: item["number_of_users"] for item in answer["list"]}
    assert listed["A"] == listed["B"]
    fresh = dict(
        deployment.database.query(
            f"SELECT group_name, count(DISTINCT user_id) FROM {TABLES.connection} "
            "WHERE group_name IS NOT NULL GROUP BY group_name"
        )
    )
    assert listed["A"] == fresh


async def test_redis_restart_service_resumes(
    deployment_on_private_redis: tuple[Deployment, RedisServer],
) -> None:
    deployment, redis = deployment_on_private_redis
    a, b = deployment.servers
    alice = await deployment.client(a, 0)
    bob = await deployment.client(b, 1)
    await bob.join("room")
    await alice.join("room")
    await bob.wait_for(notice("USER_JOINED", alice.user_id, "room"), 5)

    redis.stop()
    await asyncio.sleep(1)
    redis.start()  # empty: no persistence, so every group is gone
    restarted_at = time.monotonic()

    # The sockets stay open; within a few heartbeats each process puts its
    # connections back in their groups and messages flow again.
    deadline = restarted_at + 15
    n = 0
    while True:
        n += 1
        answer = await alice.request({"action": "broadcast", "rid": "room", "content": n})
        assert "#ack" in answer, answer
        try:
            await bob.wait_for(lambda f, n=n: f.get("#message") == n, 0.5)
            break
        except TimeoutError:
            assert time.monotonic() < deadline, "broadcasts did not resume after the restart"
    print(f"Redis restart to first delivered broadcast: {time.monotonic() - restarted_at:.2f} s")
    await alice.send_private(bob.user_id, "after restart")
    await bob.wait_for(lambda f: f.get("#private") == "after restart", 5)
    carol = await deployment.client(b, 2)
    await carol.join("room")
    await alice.wait_for(notice("USER_JOINED", carol.user_id, "room"), 5)
    assert alice.closed_with is None and bob.closed_with is None
    deployment.database.assert_counts_true()
