"""Bad input on the socket: an error frame, the socket stays usable, presence unchanged."""

from __future__ import annotations

import json

import pytest
from django.test import override_settings

from skapi_channels.models import Connection
from tests.conftest import in_db


def snapshot() -> list[tuple[str, str | None]]:
    return sorted(Connection.objects.values_list("user_id", "group_name"))


BAD_FRAMES = [
    # (frame text, code, sentence fragment, id the error carries)
    ("not json", "INVALID_REQUEST", "not valid JSON", None),
    ('{"action": "keepAlive"', "INVALID_REQUEST", "not valid JSON", None),
    ("[1, 2]", "INVALID_REQUEST", "must be a JSON object, not an array", None),
    ('"text"', "INVALID_REQUEST", "must be a JSON object, not a string", None),
    ("NaN", "INVALID_REQUEST", "not valid JSON", None),
    ('{"id": 1}', "INVALID_REQUEST", "no action", 1),
    ('{"action": "fly", "id": "x"}', "INVALID_REQUEST", "Unknown action 'fly'", "x"),
    ('{"action": 5, "id": 2}', "INVALID_REQUEST", "Unknown action", 2),
    ('{"action": "keepAlive", "id": 1.5}', "INVALID_PARAMETER", "id must be", None),
    ('{"action": "keepAlive", "id": true}', "INVALID_PARAMETER", "id must be", None),
    ('{"action": "keepAlive", "id": [1]}', "INVALID_PARAMETER", "id must be", None),
    (json.dumps({"action": "keepAlive", "id": "x" * 65}), "INVALID_PARAMETER", "id must be", None),
    ('{"action": "broadcast", "rid": "Room", "id": 3}', "INVALID_PARAMETER", "content", 3),
    ('{"action": "broadcast", "content": 1, "id": 3}', "INVALID_PARAMETER", "rid", 3),
    ('{"action": "broadcast", "rid": 7, "content": 1, "id": 3}', "INVALID_PARAMETER", "rid must be a string", 3),
    ('{"action": "sendMessage", "content": 1, "id": 4}', "INVALID_PARAMETER", "uid", 4),
    ('{"action": "sendMessage", "uid": 1, "content": 1, "id": 4}', "INVALID_PARAMETER", "uid must be a string", 4),
    ('{"action": "sendMessage", "uid": "1", "id": 4}', "INVALID_PARAMETER", "content", 4),
    ('{"action": "joinRoom", "rid": 12, "id": 5}', "INVALID_PARAMETER", "Group name must be a string", 5),
    (json.dumps({"action": "joinRoom", "rid": "x" * 129, "id": 5}), "INVALID_PARAMETER", "1 to 128 characters", 5),
    (json.dumps({"action": "joinRoom", "rid": "a\nb", "id": 5}), "INVALID_PARAMETER", "control characters", 5),
    (json.dumps({"action": "joinRoom", "rid": "a\x7fb", "id": 5}), "INVALID_PARAMETER", "control characters", 5),
    (json.dumps({"action": "joinRoom", "rid": "a\x85b", "id": 5}), "INVALID_PARAMETER", "control characters", 5),
    ('{"action": "joinRoom", "rid": "a\\ud800", "id": 5}', "INVALID_PARAMETER", "surrogate", 5),
]


@pytest.mark.parametrize("text,code,fragment,frame_id", BAD_FRAMES)
async def test_bad_frame_gets_an_error_and_changes_nothing(
    users, connect, presence_is_true, text, code, fragment, frame_id
):
    a, b = await connect(users.alice), await connect(users.bob)
    await a.join("Room")
    await b.join("Room")
    await a.receive()
    before = await in_db(snapshot)
    await a.send(text)
    error = await a.receive()
    assert error["#code"] == code
    assert fragment in error["#error"]
    assert error["#id"] == frame_id and "#id" in error
    assert set(error) == {"#error", "#code", "#id"}
    await b.nothing()
    assert await in_db(snapshot) == before
    await in_db(presence_is_true)
    # The socket is still usable.
    assert await a.request({"action": "keepAlive", "id": "after"}) == {"#ack": "after"}


async def test_a_128_character_group_name_is_accepted(users, connect):
    a = await connect(users.alice)
    await a.join("é" * 128)


async def test_binary_frame_is_refused(users, connect):
    a = await connect(users.alice)
    await a.send_bytes(b'{"action": "keepAlive", "id": 1}')
    error = await a.receive()
    assert (error["#code"], error["#id"]) == ("INVALID_REQUEST", None)
    assert "Binary" in error["#error"]
    assert await a.request({"action": "keepAlive", "id": 2}) == {"#ack": 2}


async def test_oversize_frame_is_refused_with_its_id(users, connect, presence_is_true):
    a = await connect(users.alice)
    await a.join("Room")
    frame = {"action": "broadcast", "rid": "Room", "content": "é" * 16_400, "id": 9}
    assert len(json.dumps(frame, ensure_ascii=False).encode()) > 32_768
    await a.send(json.dumps(frame, ensure_ascii=False))
    assert await a.receive() == {
        "#error": "Frame is larger than 32768 bytes.",
        "#code": "TOO_LARGE",
        "#id": 9,
    }
    # Just under the limit passes.
    frame["content"] = "x" * 32_000
    await a.send(json.dumps(frame))
    received = [await a.receive(), await a.receive()]
    assert {"#ack": 9} in received
    await in_db(presence_is_true)


async def test_burst_past_the_rate_limit_is_refused_frame_by_frame(users, connect, presence_is_true):
    a = await connect(users.alice)
    await a.join("Room")
    for number in range(60):
        await a.send({"action": "keepAlive", "id": number})
    answers = [await a.receive() for _ in range(60)]
    acked = [answer["#ack"] for answer in answers if "#ack" in answer]
    limited = [answer for answer in answers if answer.get("#code") == "RATE_LIMITED"]
    # The join took one token of the burst of 40; a few refill while sending.
    assert 39 <= len(acked) < 45
    assert len(acked) + len(limited) == 60
    assert all(answer["#id"] is not None for answer in limited)
    assert "at most 20 a second" in limited[0]["#error"]
    assert await in_db(snapshot) == [(str(users.alice.pk), "Room")]
    await in_db(presence_is_true)


async def send_paced(client, per_second: float, seconds: float) -> int:
    """Send keepAlives with ids at about ``per_second`` (never faster) for ``seconds``."""
    import asyncio

    count = int(per_second * seconds)
    for number in range(count):
        await client.send({"action": "keepAlive", "id": number})
        await asyncio.sleep(1 / per_second)
    return count


async def send_at_least(client, per_second: float, seconds: float) -> int:
    """Send keepAlives with ids at ``per_second`` or more for ``seconds``, catching up
    when the event loop was late (a loaded machine), as a flooding client would."""
    import asyncio
    import time

    started, sent = time.monotonic(), 0
    while (elapsed := time.monotonic() - started) < seconds:
        while sent < elapsed * per_second:
            await client.send({"action": "keepAlive", "id": sent})
            sent += 1
        await asyncio.sleep(1 / per_second)
    return sent


@override_settings(SKAPI_CHANNELS={"FLOOD_CLOSE_AFTER": 1.5})
async def test_a_flooding_client_is_closed_with_4008(users, connect, presence_is_true):
    # 150 frames a second, over seven times the sustained rate: the refill between
    # frames must not forgive the flood.
    import asyncio

    a = await connect(users.alice)
    sent = await send_at_least(a, 150, 4)
    answered: list[object] = []
    while (output := await a.communicator.receive_output(5))["type"] != "websocket.close":
        answer = json.loads(output["text"])
        answered.append(answer.get("#ack", answer.get("#id")))
    assert output["code"] == 4008
    a.closed = True
    # Every frame before the close was answered in order, limited ones too; after
    # it, nothing more.
    assert answered == list(range(len(answered)))
    assert 150 < len(answered) < sent
    await a.nothing()
    await asyncio.sleep(0.1)
    await in_db(presence_is_true)


@override_settings(SKAPI_CHANNELS={"FLOOD_CLOSE_AFTER": 2.0})
async def test_a_client_at_the_sustained_rate_is_never_closed(users, connect):
    a = await connect(users.alice)
    count = await send_paced(a, 20, 3.5)
    answers = [await a.receive(5) for _ in range(count)]
    assert all("#ack" in answer or answer["#code"] == "RATE_LIMITED" for answer in answers)
    await a.request({"action": "keepAlive", "id": "still open"})


def test_flood_meter_counts_seconds_at_twice_the_rate(monkeypatch):
    from skapi_channels import limits

    clock = [100.0]
    monkeypatch.setattr(limits.time, "monotonic", lambda: clock[0])
    meter = limits.FloodMeter(40, 10)

    def run(per_second: float, seconds: float) -> bool:
        flooded = False
        for _ in range(int(per_second * seconds)):
            flooded = meter.frame() or flooded
            clock[0] += 1 / per_second
        return flooded

    assert not run(39, 30)  # just under twice the rate, for long: never
    assert not run(150, 8.5)  # a flood shorter than ten seconds
    assert not run(10, 2)  # a pause forgives it
    assert run(42, 11)  # twice the rate, for ten seconds
    meter = limits.FloodMeter(40, 10)
    assert not run(150, 9.9) and run(150, 0.3)


async def test_a_slow_receiver_is_told_what_it_missed(users, connect):
    from channels.layers import get_channel_layer

    from skapi_channels.models import Connection

    a, b = await connect(users.alice), await connect(users.bob)
    await a.join("Room")
    await b.join("Room")
    await a.receive()
    # Bob's queue takes nothing, as if he read too slowly for the traffic.
    channel = await in_db(lambda: Connection.objects.get(user_id=str(users.bob.pk)).channel_name)
    state = get_channel_layer().channels[channel]
    state.capacity = 0
    await a.send({"action": "broadcast", "rid": "Room", "content": "lost", "id": 1})
    await a.send({"action": "broadcast", "rid": "Room", "content": "lost", "id": 2})
    for _ in range(4):
        await a.receive()
    state.capacity = 1000
    await a.send({"action": "broadcast", "rid": "Room", "content": "kept", "id": 3})
    missed = 0
    while "#message" not in (frame := await b.receive()):
        assert frame["#code"] == "MISSED_MESSAGES" and frame["#id"] is None
        assert frame["#error"].endswith("could not be delivered: this connection fell behind.")
        missed += frame["#missed"]
    assert frame["#message"] == "kept"
    assert missed == 2


@override_settings(SKAPI_CHANNELS={"MISSED_CLOSE_AFTER": 2})
async def test_a_receiver_too_far_behind_is_closed_with_4009(users, connect):
    from channels.layers import get_channel_layer

    from skapi_channels.models import Connection

    a, b = await connect(users.alice), await connect(users.bob)
    await a.join("Room")
    await b.join("Room")
    await a.receive()
    channel = await in_db(lambda: Connection.objects.get(user_id=str(users.bob.pk)).channel_name)
    get_channel_layer().channels[channel].capacity = 0
    for number in range(2):
        await a.send({"action": "broadcast", "rid": "Room", "content": number})
    for _ in range(2):
        assert (await b.receive())["#code"] == "MISSED_MESSAGES"
    assert await b.receive_close() == 4009


async def test_joining_new_groups_at_the_frame_rate_is_not_limited_by_default(users, connect):
    a = await connect(users.alice)
    for number in range(38):
        await a.join(f"room {number}", number)


@override_settings(SKAPI_CHANNELS={"GROUPS_CREATED_PER_MINUTE": 2})
async def test_creating_too_many_groups_a_minute_is_refused(users, connect, presence_is_true):
    a, b = await connect(users.alice), await connect(users.bob)
    await a.join("one")
    await a.join("two", 2)
    answer = await a.request({"action": "joinRoom", "rid": "three", "id": 3})
    assert answer["#code"] == "RATE_LIMITED" and answer["#id"] == 3
    assert "at most 2 new groups a minute" in answer["#error"]
    assert await in_db(snapshot) == sorted([(str(users.alice.pk), "two"), (str(users.bob.pk), None)])
    # Joining a group that exists is not creating one.
    await b.join("open")
    await a.join("open", 4)
    await in_db(presence_is_true)


@override_settings(SKAPI_CHANNELS={"HANDSHAKES_PER_MINUTE": 3})
async def test_handshakes_per_user_are_limited(users, connect):
    for _ in range(3):
        await connect(users.alice)
    await connect(users.alice, accept=False)
    await connect(users.bob)  # another user, the same address
    assert await in_db(Connection.objects.count) == 4


async def handshake_from(user, peer: str, forwarded: str | None = None) -> bool:
    from channels.db import database_sync_to_async
    from channels.testing import WebsocketCommunicator

    from tests.asgi import application
    from tests.conftest import ORIGIN, session_key_for

    headers = [(b"origin", ORIGIN)]
    if user is not None:
        key = await database_sync_to_async(session_key_for)(user)
        headers.append((b"cookie", f"sessionid={key}".encode()))
    if forwarded is not None:
        headers.append((b"x-forwarded-for", forwarded.encode()))
    communicator = WebsocketCommunicator(application, "/ws/realtime/", headers=headers)
    communicator.scope["client"] = (peer, 50000)
    connected, _ = await communicator.connect(timeout=5)
    await communicator.disconnect()
    return connected


@override_settings(
    SKAPI_CHANNELS={
        "REFUSED_HANDSHAKES_PER_MINUTE": 3,
        "HANDSHAKES_PER_MINUTE": 3,
        "TRUSTED_PROXIES": ["127.0.0.1"],
    }
)
async def test_refused_handshakes_lock_out_their_own_address_only(users, connect):
    # Behind the proxy, an attacker fails handshakes as fast as it can...
    for _ in range(5):
        assert not await handshake_from(None, "127.0.0.1", "203.0.113.9")
    # ...and is refused without a look, even with a login or a made-up first hop;
    assert not await handshake_from(users.alice, "127.0.0.1", "203.0.113.9")
    assert not await handshake_from(users.alice, "127.0.0.1", "10.1.1.1, 203.0.113.9")
    # while everyone else behind the same proxy still gets in.
    assert await handshake_from(users.alice, "127.0.0.1", "198.51.100.7")
    assert await handshake_from(users.bob, "127.0.0.1", "198.51.100.8, 10.0.0.2")


@override_settings(SKAPI_CHANNELS={"REFUSED_HANDSHAKES_PER_MINUTE": 2})
async def test_logged_in_handshakes_do_not_use_the_addresss_refusals(users, connect):
    for _ in range(6):
        assert await handshake_from(users.alice, "192.0.2.1")
    for _ in range(2):
        assert not await handshake_from(None, "192.0.2.1")
    assert not await handshake_from(users.alice, "192.0.2.1")
    # Untrusted peers' X-Forwarded-For is not read: it cannot pick another address.
    assert not await handshake_from(users.alice, "192.0.2.1", "198.51.100.1")


@pytest.mark.parametrize(
    "peer,forwarded,trusted,expected",
    [
        ("192.0.2.1", None, [], "192.0.2.1"),
        ("192.0.2.1", "198.51.100.1", [], "192.0.2.1"),
        ("192.0.2.1", "198.51.100.1", ["127.0.0.1"], "192.0.2.1"),
        ("127.0.0.1", "198.51.100.1", ["127.0.0.1"], "198.51.100.1"),
        ("127.0.0.1", "6.6.6.6, 198.51.100.1", ["127.0.0.1"], "198.51.100.1"),
        ("10.0.0.5", "6.6.6.6, 198.51.100.1, 10.0.0.9", ["10.0.0.0/8"], "198.51.100.1"),
        ("10.0.0.5", "10.0.0.7, 10.0.0.9", ["10.0.0.0/8"], "10.0.0.7"),
        ("127.0.0.1", None, ["127.0.0.1"], "127.0.0.1"),
        ("::1", "2001:db8::1", ["::1"], "2001:db8::1"),
        ("127.0.0.1", "garbage, 198.51.100.1", ["127.0.0.1"], "198.51.100.1"),
    ],
)
def test_the_client_address_is_the_rightmost_untrusted_hop(peer, forwarded, trusted, expected):
    from skapi_channels.client_address import client_address

    headers = [] if forwarded is None else [(b"x-forwarded-for", forwarded.encode())]
    assert client_address({"client": (peer, 1), "headers": headers}, trusted) == expected


def test_repeated_forwarded_headers_are_read_in_order():
    from skapi_channels.client_address import client_address

    scope = {
        "client": ("127.0.0.1", 1),
        "headers": [(b"x-forwarded-for", b"6.6.6.6"), (b"x-forwarded-for", b"198.51.100.1")],
    }
    assert client_address(scope, ["127.0.0.1"]) == "198.51.100.1"
