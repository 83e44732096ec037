"""Call signalling across two daphne processes on Redis and PostgreSQL (docs/protocol.md
section 12): relayed to the one connection named, in order, both ways; refused
once that connection has closed."""

from __future__ import annotations

import asyncio

import pytest

from tests.scaleout.conftest import TABLES, Client, Deployment

pytestmark = [pytest.mark.scaleout, pytest.mark.timeout(120)]


def cid_of(deployment: Deployment, client: Client) -> str:
    rows = deployment.database.query(
        f"SELECT cid FROM {TABLES.connection} WHERE user_id = %s", (client.user_id,)
    )
    assert len(rows) == 1, rows
    return str(rows[0][0])


async def test_rtc_crosses_processes(deployment: Deployment) -> None:
    a, b = deployment.servers
    alice = await deployment.client(a, 0)
    bob = await deployment.client(b, 1)
    carol = await deployment.client(b, 2)
    alice_cid, bob_cid = cid_of(deployment, alice), cid_of(deployment, bob)

    answer = await alice.request(
        {"action": "rtc", "uid": f"cid:{bob_cid}", "content": {"sdpoffer": {"sdp": "o"}}}
    )
    assert "#ack" in answer, answer
    for n in range(15):
        answer = await alice.request({"action": "rtc", "uid": bob_cid, "content": {"candidate": n}})
        assert "#ack" in answer, answer
    offer = await bob.wait_for(lambda f: "#rtc" in f, 10)
    assert offer == {
        "#rtc": {"sdpoffer": {"sdp": "o"}},
        "#user_id": alice.user_id,
        "#scid": alice_cid,
        "#srid": None,
    }
    candidates = [(await bob.wait_for(lambda f: "#rtc" in f, 10))["#rtc"] for _ in range(15)]
    assert candidates == [{"candidate": n} for n in range(15)]

    # The answer goes back across the processes.
    answer = await bob.request(
        {"action": "rtc", "uid": f"cid:{alice_cid}", "content": {"pickup": 1}}
    )
    assert "#ack" in answer, answer
    back = await alice.wait_for(lambda f: "#rtc" in f, 10)
    assert back["#rtc"] == {"pickup": 1} and back["#scid"] == bob_cid
    assert not any("#rtc" in f for f in carol.frames)  # same user process, other connection

    # bob closes: alice is refused, not relayed into the void.
    await bob.close()
    for _ in range(100):
        answer = await alice.request({"action": "rtc", "uid": bob_cid, "content": {"hungup": 1}})
        if "#error" in answer:
            break
        await asyncio.sleep(0.05)
    assert answer["#code"] == "INVALID_REQUEST"
    assert answer["#error"] == f"Connection 'cid:{bob_cid}' is not open."
    deployment.database.assert_counts_true()
