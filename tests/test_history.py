"""History and recovery (docs/protocol.md §11) through the real consumer: offsets, epochs,
joinRoom with since / last, resume, the replay/live hand-over, retention."""

from __future__ import annotations

import asyncio
import secrets
from typing import Any
from unittest import mock

import pytest
from channels.layers import get_channel_layer
from django.test import override_settings

from skapi_channels.history import Cursor, Slice
from skapi_channels.local_layer import LocalChannelLayer
from skapi_channels.protocol import FrameError, parse_frame
from tests.conftest import Client, in_db
from tests.held_replay import HOLD, HeldLocalLayer


def room() -> str:
    """A group name of the test's own: the layer's streams outlive a test."""
    return "hist-" + secrets.token_hex(4)


async def say(client: Client, group: str, content: Any, frame_id: int) -> None:
    """Broadcast and read the ack (and the sender's own copy) off ``client``."""
    await client.send({"action": "broadcast", "rid": group, "content": content, "id": frame_id})
    seen = [await client.receive(), await client.receive()]
    assert {"#ack": frame_id} in seen, seen


async def frames_until_ack(client: Client, frame_id: Any) -> tuple[list[dict[str, Any]], dict]:
    frames: list[dict[str, Any]] = []
    while True:
        frame = await client.receive(5)
        if frame.get("#ack") == frame_id or ("#error" in frame and frame["#id"] == frame_id):
            return frames, frame
        frames.append(frame)


# Offsets and the join ack.


async def test_messages_carry_offsets_and_the_join_ack_says_where_the_stream_is(users, connect):
    a, b = await connect(users.alice), await connect(users.bob)
    group = room()
    first = await a.join(group)
    assert first["#offset"] == 0 and isinstance(first["#epoch"], str) and first["#epoch"]
    await b.join(group)
    await a.receive()  # bob joined: notices carry no offset
    for n in range(1, 4):
        await say(a, group, f"m{n}", n + 10)
        assert (await b.receive())["#offset"] == n
    c = await connect(users.carol)
    ack = await c.join(group)
    assert ack == {"#ack": 1, "#epoch": first["#epoch"], "#offset": 3}
    notice = await a.receive()
    assert notice["#code"] == "USER_JOINED" and "#offset" not in notice


async def test_join_with_last_replays_the_latest_before_the_ack(users, connect):
    a = await connect(users.alice)
    group = room()
    await a.join(group)
    for n in range(1, 6):
        await say(a, group, {"n": n}, n + 10)
    b = await connect(users.bob)
    await b.send({"action": "joinRoom", "rid": group, "last": 2, "id": "j"})
    replay, ack = await frames_until_ack(b, "j")
    assert [f["#message"] for f in replay] == [{"n": 4}, {"n": 5}]
    assert [f["#offset"] for f in replay] == [4, 5]
    for frame in replay:
        assert frame["#replay"] is True
        assert frame["#user_id"] == str(users.alice.pk) and frame["#srid"] == group
        assert isinstance(frame["#scid"], str)
    assert ack["#offset"] == 5 and "#recovered" not in ack
    await a.receive()  # bob joined
    # Joining the group one is in changes nothing, and says where one stands.
    assert (await a.join(group, 99))["#offset"] == 5
    await say(a, group, "live", 20)
    live = await b.receive()
    assert live["#offset"] == 6 and "#replay" not in live
    await b.nothing()


async def test_join_with_since_replays_every_later_message(users, connect):
    a = await connect(users.alice)
    group = room()
    epoch = (await a.join(group))["#epoch"]
    for n in range(1, 6):
        await say(a, group, n, n + 10)
    b = await connect(users.bob)
    since = {"offset": 2, "epoch": epoch}
    await b.send({"action": "joinRoom", "rid": group, "since": since, "id": 3})
    replay, ack = await frames_until_ack(b, 3)
    assert [(f["#message"], f["#offset"], f["#replay"]) for f in replay] == [
        (3, 3, True),
        (4, 4, True),
        (5, 5, True),
    ]
    assert ack == {"#ack": 3, "#recovered": True, "#epoch": epoch, "#offset": 5}
    # Already up to date: recovered, nothing replayed.
    c = await connect(users.carol)
    since = {"offset": 5, "epoch": epoch}
    await c.send({"action": "joinRoom", "rid": group, "since": since, "id": 4})
    replay, ack = await frames_until_ack(c, 4)
    assert replay == [] and ack["#recovered"] is True and ack["#offset"] == 5


async def test_an_epoch_mismatch_replays_nothing(users, connect):
    a = await connect(users.alice)
    group = room()
    epoch = (await a.join(group))["#epoch"]
    await say(a, group, "x", 2)
    b = await connect(users.bob)
    since = {"offset": 0, "epoch": "not-" + epoch}
    await b.send({"action": "joinRoom", "rid": group, "since": since, "id": 3})
    replay, ack = await frames_until_ack(b, 3)
    assert replay == []
    assert ack == {"#ack": 3, "#recovered": False, "#epoch": epoch, "#offset": 1}


async def test_since_beyond_the_latest_is_not_recovered(users, connect):
    a = await connect(users.alice)
    group = room()
    epoch = (await a.join(group))["#epoch"]
    await say(a, group, "x", 2)
    b = await connect(users.bob)
    await b.send({"action": "joinRoom", "rid": group, "since": {"offset": 9, "epoch": epoch}, "id": 3})
    replay, ack = await frames_until_ack(b, 3)
    assert replay == [] and ack["#recovered"] is False and ack["#offset"] == 1


@override_settings(SKAPI_CHANNELS={"HISTORY_SIZE": 3})
async def test_since_older_than_what_is_kept_is_not_recovered(users, connect):
    a = await connect(users.alice)
    group = room()
    epoch = (await a.join(group))["#epoch"]
    for n in range(1, 7):
        await say(a, group, n, n + 10)
    b = await connect(users.bob)
    await b.send({"action": "joinRoom", "rid": group, "since": {"offset": 2, "epoch": epoch}, "id": 3})
    replay, ack = await frames_until_ack(b, 3)
    assert replay == [] and ack == {"#ack": 3, "#recovered": False, "#epoch": epoch, "#offset": 6}
    # The oldest kept is 4: since 3 still has everything after it.
    c = await connect(users.carol)
    await c.send({"action": "joinRoom", "rid": group, "since": {"offset": 3, "epoch": epoch}, "id": 4})
    replay, ack = await frames_until_ack(c, 4)
    assert [f["#offset"] for f in replay] == [4, 5, 6] and ack["#recovered"] is True
    # last is bounded by HISTORY_SIZE.
    answer = await c.request({"action": "joinRoom", "rid": group, "last": 4, "id": 5})
    assert answer["#code"] == "INVALID_PARAMETER" and answer["#id"] == 5


@override_settings(SKAPI_CHANNELS={"HISTORY_TTL": 0.3})
async def test_expired_messages_are_not_replayed(users, connect):
    a = await connect(users.alice)
    group = room()
    epoch = (await a.join(group))["#epoch"]
    await say(a, group, "old", 2)
    await asyncio.sleep(0.5)
    await say(a, group, "new", 3)
    b = await connect(users.bob)
    await b.send({"action": "joinRoom", "rid": group, "since": {"offset": 0, "epoch": epoch}, "id": 4})
    replay, ack = await frames_until_ack(b, 4)
    assert replay == [] and ack["#recovered"] is False
    await b.send({"action": "joinRoom", "rid": group, "last": 10, "id": 5})
    replay, ack = await frames_until_ack(b, 5)
    assert [f["#message"] for f in replay] == ["new"]


@pytest.mark.parametrize(
    ("fields", "problem"),
    [
        ({"since": {"offset": 0, "epoch": "e"}, "last": 1}, "not both"),
        ({"since": 5}, "since must be an object"),
        ({"since": {"offset": -1, "epoch": "e"}}, "since.offset"),
        ({"since": {"offset": 1.5, "epoch": "e"}}, "since.offset"),
        ({"since": {"offset": True, "epoch": "e"}}, "since.offset"),
        ({"since": {"offset": 1}}, "since.epoch"),
        ({"since": {"offset": 1, "epoch": 7}}, "since.epoch"),
        ({"last": 0}, "last must be"),
        ({"last": 101}, "last must be"),
        ({"last": "3"}, "last must be"),
        ({"last": None}, "last must be"),
    ],
)
async def test_bad_since_or_last_is_refused_and_changes_nothing(
    users, connect, presence_is_true, fields, problem
):
    a = await connect(users.alice)
    group = room()
    await a.join(group)
    answer = await a.request({"action": "joinRoom", "rid": room(), "id": 2, **fields})
    assert answer["#code"] == "INVALID_PARAMETER" and answer["#id"] == 2
    assert problem in answer["#error"]
    # Still in the first group, socket open.
    await say(a, group, "still here", 3)
    await in_db(presence_is_true)


@override_settings(SKAPI_CHANNELS={"HISTORY_SIZE": 0})
async def test_history_off_adds_no_offsets_and_recovers_nothing(users, connect):
    a, b = await connect(users.alice), await connect(users.bob)
    group = room()
    assert await a.join(group) == {"#ack": 1}
    await say(a, group, "x", 2)
    await a.send({"action": "sendMessage", "uid": str(users.bob.pk), "content": "p", "id": 3})
    assert await a.receive() == {"#ack": 3}
    assert "#offset" not in await b.receive()
    await b.send({"action": "joinRoom", "rid": group, "since": {"offset": 0, "epoch": "e"}, "id": 4})
    assert await b.receive() == {"#ack": 4, "#recovered": False}
    await b.send({"action": "joinRoom", "rid": room(), "last": 5, "id": 5})
    assert await b.receive() == {"#ack": 5}
    assert await b.request({"action": "resume", "id": 6}) == {"#ack": 6}
    answer = await b.request({"action": "resume", "since": {"offset": 0, "epoch": "e"}, "id": 7})
    assert answer == {"#ack": 7, "#recovered": False}


# The private stream.


async def test_resume_replays_private_messages_missed_while_away(users, connect):
    a, b = await connect(users.alice), await connect(users.bob)
    bob = str(users.bob.pk)
    start = await b.request({"action": "resume", "id": 1})
    assert set(start) == {"#ack", "#epoch", "#offset"}
    for n in range(1, 4):
        await a.send({"action": "sendMessage", "uid": bob, "content": n, "id": n})
        assert await a.receive() == {"#ack": n}
        frame = await b.receive()
        assert frame["#private"] == n and frame["#offset"] == start["#offset"] + n
    await b.close()  # away
    for n in range(4, 7):
        await a.send({"action": "sendMessage", "uid": bob, "content": n, "id": n})
        assert await a.receive() == {"#ack": n}
    back = await connect(users.bob)
    since = {"offset": start["#offset"] + 3, "epoch": start["#epoch"]}
    await back.send({"action": "resume", "since": since, "id": "r"})
    replay, ack = await frames_until_ack(back, "r")
    assert [(f["#private"], f["#replay"], f["#srid"]) for f in replay] == [
        (4, True, None),
        (5, True, None),
        (6, True, None),
    ]
    assert ack == {
        "#ack": "r",
        "#recovered": True,
        "#epoch": start["#epoch"],
        "#offset": start["#offset"] + 6,
    }
    await back.nothing()


async def test_resume_does_not_repeat_what_arrived_live(users, connect):
    """A private message that came live after the handshake is not replayed again;
    one sent before it is."""
    a = await connect(users.alice)
    bob = str(users.bob.pk)
    probe = await connect(users.bob)
    start = await probe.request({"action": "resume", "id": 1})
    await a.send({"action": "sendMessage", "uid": bob, "content": "before", "id": 1})
    assert await a.receive() == {"#ack": 1}
    b = await connect(users.bob)
    await a.send({"action": "sendMessage", "uid": bob, "content": "after", "id": 2})
    assert await a.receive() == {"#ack": 2}
    assert (await b.receive())["#private"] == "after"
    since = {"offset": start["#offset"], "epoch": start["#epoch"]}
    await b.send({"action": "resume", "since": since, "id": "r"})
    replay, ack = await frames_until_ack(b, "r")
    assert [f["#private"] for f in replay] == ["before"]
    assert ack["#recovered"] is True and ack["#offset"] == start["#offset"] + 2


async def test_resume_with_a_stale_epoch_replays_nothing(users, connect):
    b = await connect(users.bob)
    start = await b.request({"action": "resume", "id": 1})
    answer = await b.request(
        {"action": "resume", "since": {"offset": 0, "epoch": start["#epoch"] + "x"}, "id": 2}
    )
    assert answer == {
        "#ack": 2,
        "#recovered": False,
        "#epoch": start["#epoch"],
        "#offset": start["#offset"],
    }


# The hand-over between replay and live frames.


HELD_LAYER = {"default": {"BACKEND": "tests.held_replay.HeldLocalLayer", "CONFIG": {"capacity": 1000}}}


@override_settings(
    SKAPI_CHANNELS={"RATE_PER_SECOND": 1e6, "RATE_BURST": 10**6, "HISTORY_SIZE": 1000},
    CHANNEL_LAYERS=HELD_LAYER,
)
async def test_no_gap_and_no_duplicate_while_others_broadcast_during_the_join(users, connect):
    """Alice and Bob broadcast without pause while Carol joins with since, again
    and again: Carol gets every offset after since exactly once, in order, the
    replayed ones before the ack and the live ones after.

    The layer (tests/held_replay.py) holds each replaying history read until
    ``HOLD`` messages have been queued live for Carol after her subscription: the
    replay covers them too, and the consumer must drop those live copies."""
    layer = get_channel_layer()
    assert isinstance(layer, HeldLocalLayer)
    a, b = await connect(users.alice), await connect(users.bob)
    group = room()
    epoch = (await a.join(group))["#epoch"]
    await b.join(group)
    await a.receive()  # bob joined
    stop = asyncio.Event()

    async def talk(client: Client) -> None:
        for _ in range(3000):
            if stop.is_set():
                return
            await client.send({"action": "broadcast", "rid": group, "content": "x"})
            await asyncio.sleep(0.001)

    async def drain(client: Client) -> None:
        while True:
            # (A receive that times out would end the application: ask first.)
            if await client.communicator.receive_nothing(0.2):
                if stop.is_set():
                    return
                continue
            await client.receive()

    tasks = [asyncio.create_task(job(c)) for c in (a, b) for job in (talk, drain)]
    since = 0
    try:
        for attempt in range(6):
            c = await connect(users.carol)
            frame = {"action": "joinRoom", "rid": group, "id": "j"}
            frame["since"] = {"offset": since, "epoch": epoch}
            await c.send(frame)
            replay, ack = await frames_until_ack(c, "j")
            assert ack["#recovered"] is True, (attempt, ack)
            assert all(f.get("#replay") is True for f in replay)
            offsets = [f["#offset"] for f in replay]
            assert offsets == list(range(since + 1, ack["#offset"] + 1)), attempt
            # At least the held messages, which also reached Carol live.
            assert len(offsets) >= HOLD and layer.held_reads == attempt + 1
            live = []
            while len(live) < 20:
                frame = await c.receive(5)
                if "#message" in frame:
                    assert "#replay" not in frame
                    live.append(frame["#offset"])
            assert live == list(range(ack["#offset"] + 1, ack["#offset"] + 21)), attempt
            since = ack["#offset"]
            await c.close()
    finally:
        stop.set()
        await asyncio.gather(*tasks)


# The pieces, without a socket.


def test_parse_since_and_last():
    frame = parse_frame('{"action":"joinRoom","rid":"g","since":{"offset":3,"epoch":"e"}}', 128, 100)
    assert (frame.target, frame.since, frame.last) == ("g", (3, "e"), None)
    frame = parse_frame('{"action":"joinRoom","rid":"g","last":100}', 128, 100)
    assert frame.last == 100
    frame = parse_frame('{"action":"resume","id":4}', 128, 100)
    assert (frame.action, frame.id, frame.since) == ("resume", 4, None)
    with pytest.raises(FrameError) as refused:
        parse_frame('{"action":"resume","since":[1,"e"],"id":4}', 128, 100)
    assert (refused.value.code, refused.value.frame_id) == ("INVALID_PARAMETER", 4)
    # History off: nothing is kept, so any positive last is allowed (and replays nothing).
    assert parse_frame('{"action":"joinRoom","rid":"g","last":500}', 128, 0).last == 500


def test_cursor_drops_what_it_has_had_and_replays_the_rest():
    cursor = Cursor("e", 5)  # live delivery started after offset 5
    assert cursor.admit(6, "e") and cursor.admit(7, "e")
    assert not cursor.admit(7, "e")
    kept = Slice("e", 9, [(n, str(n)) for n in range(3, 10)])
    # 6 and 7 came live; 8 and 9 wait in the queue and are replayed now.
    assert [n for n, _ in cursor.replay(kept)] == [3, 4, 5, 8, 9]
    assert not cursor.admit(8, "e") and not cursor.admit(9, "e")
    assert cursor.admit(10, "e")
    # A new epoch: its offsets start again.
    assert cursor.admit(1, "f") and cursor.epoch == "f"


async def test_layer_keeps_a_bounded_counted_history_per_stream():
    layer = LocalChannelLayer()
    channel = await layer.new_channel()
    await layer.group_add("g", channel)
    with override_settings(SKAPI_CHANNELS={"HISTORY_SIZE": 3}):
        for n in range(5):
            await layer.group_send("g", {"type": "t", "text": f'{{"n":{n}}}', "keep": True})
            await layer.group_send("g", {"type": "t", "text": "{}"})  # not kept
        kept = await layer.history_read("g", last=3)
        assert [offset for offset, _ in kept.frames] == [3, 4, 5]
        assert layer.history_stats() == {"streams": 1, "messages": 3, "chars": 21}
        delivered = [await layer.receive(channel) for _ in range(10)]
        assert [m.get("offset") for m in delivered] == [1, None, 2, None, 3, None, 4, None, 5, None]
        assert {m["epoch"] for m in delivered if "epoch" in m} == {kept.epoch}
        empty = await layer.history_read("other")
        assert (empty.latest, empty.frames, empty.complete) == (0, [], True)
        assert (await layer.history_read("other")).epoch == empty.epoch


async def test_a_forgotten_stream_comes_back_with_a_new_epoch():
    layer = LocalChannelLayer()
    with override_settings(SKAPI_CHANNELS={"HISTORY_TTL": 1}):
        await layer.group_send("g", {"type": "t", "text": "{}", "keep": True})
        first = await layer.history_read("g")
        later = layer._swept_at + 5
        with mock.patch("skapi_channels.local_layer.time.monotonic", return_value=later):
            await layer.group_send("h", {"type": "t", "text": "{}", "keep": True})
        assert "g" not in layer.streams
        again = await layer.history_read("g", since=1)
        assert again.epoch != first.epoch and again.latest == 0 and not again.complete
    assert layer.history_stats()["messages"] == 1


def test_the_app_layer_keeps_history():
    from skapi_channels.history import HistoryLayer

    assert isinstance(get_channel_layer(), HistoryLayer)


# Site code.


async def test_api_reads_and_feeds_the_history(users, connect):
    from skapi_channels import api

    a = await connect(users.alice)
    group = room()
    epoch = (await a.join(group))["#epoch"]
    await say(a, group, "from alice", 2)
    await api.abroadcast(group, "from the site")
    frame = await a.receive()
    assert frame["#message"] == "from the site" and frame["#offset"] == 2
    kept = await api.ahistory(group, last=5)
    assert (kept.epoch, kept.offset, kept.recovered) == (epoch, 2, None)
    assert [(m["#message"], m["#offset"]) for m in kept.messages] == [
        ("from alice", 1),
        ("from the site", 2),
    ]
    assert (await api.ahistory(group, since=1, epoch=epoch)).messages[0]["#scid"] is None
    stale = await api.ahistory(group, since=0, epoch="old")
    assert (stale.recovered, stale.messages) == (False, [])
    where = await api.ahistory(group)
    assert (where.offset, where.messages) == (2, [])
    await api.asend_to_user(str(users.bob.pk), {"n": 1})
    private = await api.aprivate_history(str(users.bob.pk), last=1)
    assert private.messages[0]["#private"] == {"n": 1}
    with pytest.raises(ValueError):
        await api.ahistory(group, since=1, last=1)
    with pytest.raises(ValueError):
        await api.ahistory(group, last=0)


def test_api_reads_the_history_from_sync_code():
    from skapi_channels import api

    group = room()
    api.broadcast(group, "one")
    api.broadcast(group, "two")
    kept = api.history(group, last=1)
    assert (kept.offset, [m["#message"] for m in kept.messages]) == (2, ["two"])
    again = api.history(group, since=1, epoch=kept.epoch)
    assert (again.recovered, [m["#offset"] for m in again.messages]) == (True, [2])
    api.send_to_user("9", "p")
    assert api.private_history("9", last=3).messages[0]["#private"] == "p"
    with pytest.raises(ValueError):
        api.history(group, since=1, last=1)

    async def inside_a_loop() -> None:
        with pytest.raises(RuntimeError, match="await ahistory"):
            api.history(group)

    asyncio.run(inside_a_loop())


@pytest.mark.parametrize(
    ("name", "value", "ok"),
    [
        ("HISTORY_SIZE", 0, True),
        ("HISTORY_SIZE", 50, True),
        ("HISTORY_SIZE", -1, False),
        ("HISTORY_SIZE", 1.5, False),
        ("HISTORY_TTL", 0, True),
        ("HISTORY_TTL", 2.5, True),
        ("HISTORY_TTL", "300", False),
    ],
)
def test_history_settings_are_checked(name, value, ok):
    from skapi_channels.checks import check_settings

    with override_settings(SKAPI_CHANNELS={name: value}):
        ids = [error.id for error in check_settings()]
    assert ("skapi_channels.E011" not in ids) is ok
