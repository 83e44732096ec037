"""Each signal fires once per event, with the documented arguments."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from skapi_channels import signals
from skapi_channels.consumer import RealtimeConsumer
from skapi_channels.runtime import ServerRuntime, runtime
from tests.conftest import in_db
from tests.rows import server_with

SIGNALS = ("connection_opened", "connection_closed", "group_joined", "group_left", "message_sent")


@pytest.fixture
def fired() -> Iterator[list[tuple[str, Any, dict[str, Any]]]]:
    """(signal name, sender, arguments) of every signal sent during the test; half
    the receivers are sync (run in a thread), half async."""
    events: list[tuple[str, Any, dict[str, Any]]] = []
    receivers = []
    for index, name in enumerate(SIGNALS):

        def sync_receiver(sender: Any, name: str = name, **kwargs: Any) -> None:
            kwargs.pop("signal")
            events.append((name, sender, kwargs))

        async def async_receiver(sender: Any, name: str = name, **kwargs: Any) -> None:
            kwargs.pop("signal")
            events.append((name, sender, kwargs))

        receiver = sync_receiver if index % 2 else async_receiver
        getattr(signals, name).connect(receiver, weak=False)
        receivers.append((name, receiver))
    yield events
    for name, receiver in receivers:
        getattr(signals, name).disconnect(receiver)


async def test_a_connection_lifecycle_fires_each_signal_once(users, connect, fired):
    alice = await connect(users.alice)
    bob = await connect(users.bob)
    alice_id, bob_id = str(users.alice.pk), str(users.bob.pk)
    # The signal follows the accept: an answered frame shows it has been sent.
    await bob.request({"action": "keepAlive", "id": 0})
    opened = [e for e in fired if e[0] == "connection_opened"]
    assert [(e[1], e[2]["user_id"]) for e in opened] == [
        (RealtimeConsumer, alice_id),
        (RealtimeConsumer, bob_id),
    ]
    alice_cid = opened[0][2]["cid"]
    fired.clear()

    await alice.join("one")
    await alice.join("one", 2)  # already there: nothing happens
    await alice.join("two", 3)
    await bob.join("two")
    assert (await alice.receive())["#code"] == "USER_JOINED"
    await alice.request({"action": "broadcast", "rid": "two", "content": {"n": 1}, "id": 4})
    assert (await alice.receive())["#message"] == {"n": 1}
    assert (await bob.receive())["#message"] == {"n": 1}
    await alice.request({"action": "sendMessage", "uid": bob_id, "content": "psst", "id": 5})
    assert (await bob.receive())["#private"] == "psst"
    await alice.join(None, 6)
    assert (await bob.receive())["#code"] == "USER_LEFT"
    await alice.close()
    await bob.close()

    assert [(name, args) for name, _, args in fired] == [
        ("group_joined", {"user_id": alice_id, "cid": alice_cid, "group": "one"}),
        ("group_left", {"user_id": alice_id, "cid": alice_cid, "group": "one",
                        "reason": "switched"}),
        ("group_joined", {"user_id": alice_id, "cid": alice_cid, "group": "two"}),
        ("group_joined", {"user_id": bob_id, "cid": fired[3][2]["cid"], "group": "two"}),
        (
            "message_sent",
            {"user_id": alice_id, "cid": alice_cid, "recipient": "two", "private": False,
             "content": {"n": 1}},
        ),
        (
            "message_sent",
            {"user_id": alice_id, "cid": alice_cid, "recipient": bob_id, "private": True,
             "content": "psst"},
        ),
        ("group_left", {"user_id": alice_id, "cid": alice_cid, "group": "two", "reason": "left"}),
        ("connection_closed", {"user_id": alice_id, "cid": alice_cid, "group": None}),
        ("group_left", {"user_id": bob_id, "cid": fired[3][2]["cid"], "group": "two",
                        "reason": "disconnected"}),
        ("connection_closed", {"user_id": bob_id, "cid": fired[3][2]["cid"], "group": "two"}),
    ]  # fmt: skip
    assert {sender for _, sender, _ in fired} == {RealtimeConsumer}


async def test_connections_of_a_dead_process_fire_once_when_reaped(users, connect, fired):
    alice = await connect(users.alice)  # starts this process's runtime
    await in_db(server_with, "d" * 32, [("dead-1", "9", "room"), ("dead-2", "9", None)], age=3600)
    fired.clear()
    departures = await runtime.reap()
    assert len(departures) == 2
    assert await runtime.reap() == []  # nothing left to fire for
    assert sorted((name, args["cid"]) for name, _, args in fired) == [
        ("connection_closed", "dead-1"),
        ("connection_closed", "dead-2"),
        ("group_left", "dead-1"),
    ]
    assert {sender for _, sender, _ in fired} == {ServerRuntime}
    left = next(args for name, _, args in fired if name == "group_left")
    assert left == {"user_id": "9", "cid": "dead-1", "group": "room", "reason": "disconnected"}
    await alice.nothing()
