"""Call signalling (docs/protocol.md section 12) through the real consumer: an ``rtc``
frame reaches exactly the connection it names, in order, with no SQL per relayed
frame; closed or unknown connections, bad frames and refused senders get errors."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from django.test import override_settings

from skapi_channels.models import Connection
from skapi_channels.protocol import connection_id
from tests.conftest import in_db

pytestmark = pytest.mark.timeout(30)


async def cid_of(user: Any) -> str:
    """The cid of ``user``'s only open connection."""
    return await in_db(lambda: Connection.objects.get(user_id=str(user.pk)).cid)  # type: ignore[no-any-return]


def test_connection_id() -> None:
    assert connection_id("cid:AbC-_9") == "AbC-_9"
    assert connection_id("AbC-_9") == "AbC-_9"
    for bad in ("cid:", "", "cid:a b", "cid:é", "x" * 33, 7, None, ["cid:a"]):
        assert connection_id(bad) is None


async def test_relays_to_exactly_that_connection_in_order(users, connect, db_queries):
    alice = await connect(users.alice)
    alice_cid = await cid_of(users.alice)
    bob = await connect(users.bob)
    bob_cid = await cid_of(users.bob)
    bob_other_tab = await connect(users.bob)
    offer = {"sdpoffer": {"type": "offer", "sdp": "v=0 ..."}}

    answer = await alice.request(
        {"action": "rtc", "uid": f"cid:{bob_cid}", "content": offer, "id": 1}
    )
    assert answer == {"#ack": 1}
    assert await bob.receive() == {
        "#rtc": offer,
        "#user_id": str(users.alice.pk),
        "#scid": alice_cid,
        "#srid": None,
    }
    # A bare cid works too; candidates follow their offer in the order sent.
    db_queries.clear()
    for n in range(20):
        await alice.send({"action": "rtc", "uid": bob_cid, "content": {"candidate": n}})
    received = [(await bob.receive())["#rtc"] for _ in range(20)]
    assert received == [{"candidate": n} for n in range(20)]
    # bob answers without a lookup: the relayed frames told where alice is.
    answer = await bob.request(
        {"action": "rtc", "uid": f"cid:{alice_cid}", "content": {"sdpanswer": 1}, "id": "a"}
    )
    assert answer == {"#ack": "a"}
    assert await alice.receive() == {
        "#rtc": {"sdpanswer": 1},
        "#user_id": str(users.bob.pk),
        "#scid": bob_cid,
        "#srid": None,
    }
    assert db_queries == [], "a relayed frame ran SQL"
    await bob_other_tab.nothing()
    await alice.nothing()


async def test_closed_and_unknown_connections_are_refused(users, connect):
    alice = await connect(users.alice)
    answer = await alice.request({"action": "rtc", "uid": "cid:nobody", "content": {}, "id": 1})
    assert answer == {
        "#error": "Connection 'cid:nobody' is not open.",
        "#code": "INVALID_REQUEST",
        "#id": 1,
    }
    bob = await connect(users.bob)
    bob_cid = await cid_of(users.bob)
    assert (await alice.request({"action": "rtc", "uid": bob_cid, "content": 1, "id": 2})) == {
        "#ack": 2
    }
    await bob.receive()
    await bob.close()
    # alice's route to bob is dropped when he closes: refused, not relayed into the void.
    for _ in range(50):
        answer = await alice.request({"action": "rtc", "uid": bob_cid, "content": 2, "id": 3})
        if "#error" in answer:
            break
        await asyncio.sleep(0.05)
    assert answer == {
        "#error": f"Connection 'cid:{bob_cid}' is not open.",
        "#code": "INVALID_REQUEST",
        "#id": 3,
    }


async def test_bad_rtc_frames(users, connect):
    alice = await connect(users.alice)
    cases = [
        ({"action": "rtc", "content": 1}, "rtc needs a uid field."),
        ({"action": "rtc", "uid": "cid:x"}, "rtc needs a content field."),
        ({"action": "rtc", "uid": 5, "content": 1}, None),
        ({"action": "rtc", "uid": "cid:", "content": 1}, None),
        ({"action": "rtc", "uid": "cid:<script>", "content": 1}, None),
    ]
    for n, (frame, sentence) in enumerate(cases):
        answer = await alice.request({**frame, "id": n})
        assert answer["#code"] == "INVALID_PARAMETER", answer
        assert answer["#error"] == (
            sentence or "rtc needs uid: the callee's connection id, as 'cid:...'."
        )
    # Over the size limit like any frame.
    big = {"action": "rtc", "uid": "cid:x", "content": "x" * 40_000, "id": 9}
    assert (await alice.request(big))["#code"] == "TOO_LARGE"
    # The socket is still fine.
    assert await alice.request({"action": "keepAlive", "id": 10}) == {"#ack": 10}


async def test_authorize_message_decides(users, connect):
    with override_settings(
        SKAPI_CHANNELS={"AUTHORIZE_MESSAGE": "tests.test_hooks.no_messages_to_carol"}
    ):
        alice = await connect(users.alice)
        carol = await connect(users.carol)
        carol_cid = await cid_of(users.carol)
        bob = await connect(users.bob)
        bob_cid = await cid_of(users.bob)
        answer = await alice.request({"action": "rtc", "uid": carol_cid, "content": 1, "id": 1})
        assert answer["#code"] == "INVALID_REQUEST" and answer["#id"] == 1
        assert answer["#error"] == f"You may not send messages to user '{users.carol.pk}'."
        await carol.nothing()
        assert await alice.request({"action": "rtc", "uid": bob_cid, "content": 1, "id": 2}) == {
            "#ack": 2
        }
        assert (await bob.receive())["#rtc"] == 1


async def test_rtc_frames_count_towards_the_rate(users, connect):
    alice = await connect(users.alice)
    bob = await connect(users.bob)
    bob_cid = await cid_of(users.bob)
    for n in range(60):
        await alice.send({"action": "rtc", "uid": bob_cid, "content": n, "id": n})
    answers = [await alice.receive() for _ in range(60)]
    limited = [a for a in answers if a.get("#code") == "RATE_LIMITED"]
    assert limited, "60 frames at once passed a burst of 40"
    relayed = sum(1 for a in answers if "#ack" in a)
    assert [(await bob.receive())["#rtc"] for _ in range(relayed)] == sorted(
        a["#ack"] for a in answers if "#ack" in a
    )
