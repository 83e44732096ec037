"""History and recovery (docs/protocol.md §11) on Redis: the fan-out layer's kept streams
shared by two processes, and real daphne processes with a member on each."""

from __future__ import annotations

import asyncio
import json
import secrets
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.test import override_settings
from websockets.asyncio.client import connect

from skapi_channels import api
from skapi_channels.addressing import group_address, user_address
from skapi_channels.protocol import frame_event
from skapi_channels.redis_fanout import RedisFanoutLayer
from skapi_channels.redis_scripts import HISTORY_LUA
from tests.held_replay import HOLD
from tests.scaleout.conftest import Deployment, NamedLayer, token
from tests.scaleout.test_fanout_layer import pair, receive, redis_url  # noqa: F401  (fixture)

pytestmark = [pytest.mark.scaleout, pytest.mark.timeout(90)]


def frame(n: int) -> dict[str, Any]:
    return {"type": "skapi.frame", "text": f'{{"#message":{n}}}', "rid": "room", "keep": True}


async def test_offsets_and_history_are_the_same_in_both_processes(pair: Any) -> None:  # noqa: F811
    a, b = pair()
    here, there = await a.new_channel(), await b.new_channel()
    await a.group_add("room", here)
    await b.group_add("room", there)
    start = await b.history_read("room")
    assert (start.latest, start.frames) == (0, [])
    for n in range(1, 6):
        await (a if n % 2 else b).group_send("room", frame(n))
    await a.group_send("room", {"type": "skapi.frame", "text": "{}", "rid": "room"})  # not kept
    for layer, channel in ((a, here), (b, there)):
        got = [await receive(layer, channel) for _ in range(6)]
        assert [m.get("offset") for m in got] == [1, 2, 3, 4, 5, None]
        assert {m["epoch"] for m in got[:5]} == {start.epoch}
    for layer in (a, b):
        kept = await layer.history_read("room", since=2)
        assert (kept.epoch, kept.latest, kept.complete) == (start.epoch, 5, True)
        assert kept.frames == [(n, f'{{"#message":{n}}}') for n in (3, 4, 5)]
    assert [o for o, _ in (await a.history_read("room", last=2)).frames] == [4, 5]


async def test_size_ttl_and_a_lost_store(pair: Any) -> None:  # noqa: F811
    a, b = pair()
    with override_settings(SKAPI_CHANNELS={"HISTORY_SIZE": 3, "HISTORY_TTL": 1}):
        for n in range(1, 6):
            await a.group_send("room", frame(n))
        kept = await b.history_read("room", since=1)
        assert (kept.latest, kept.complete, kept.frames) == (5, False, [])
        assert [o for o, _ in (await b.history_read("room", since=2)).frames] == [3, 4, 5]
        await asyncio.sleep(1.2)
        assert (await b.history_read("room", since=4)).complete is False
        assert (await b.history_read("room", last=3)).frames == []
    before = await a.history_read("room")
    await a.flush()  # Redis lost the stream
    after = await b.history_read("room", since=before.latest)
    assert after.epoch != before.epoch and after.latest == 0 and not after.complete


async def test_a_read_fetches_only_the_entries_it_answers(pair: Any) -> None:  # noqa: F811
    # A join asks for no history (last=0): a busy group's kept messages must not
    # travel and be decoded on every join.
    a, _ = pair()
    for n in range(1, 41):
        await a.group_send("room", frame(n))

    async def entries(since: int | None = None, last: int | None = None) -> int:
        keys, args = a._history_call("room", since, last)
        _, latest, items = await a.redis.eval(HISTORY_LUA, len(keys), *keys, *args)
        assert int(latest) == 40
        return len(items)

    assert await entries(last=0) == 0
    assert await entries() == 0
    assert await entries(last=5) == 5
    assert await entries(last=500) == 40
    assert await entries(since=37) == 3
    assert await entries(since=40) == 0
    assert await entries(since=41) == 0
    assert await entries(since=0) == 40
    kept = await a.history_read("room", since=37)
    assert ([o for o, _ in kept.frames], kept.complete) == ([38, 39, 40], True)


def test_sync_history_reads_keep_their_connections() -> None:
    """api.history / api.private_history from sync code (a WSGI view, a management
    command) on the Redis layer: 20 reads in a row use one connection, 20 reads from 4
    threads at most 4, and they stay open across calls (not a pool per call)."""
    named = NamedLayer(redis_url())

    with override_settings(CHANNEL_LAYERS=named.layers):
        layer = get_channel_layer()
        assert isinstance(layer, RedisFanoutLayer)

        async def seed() -> None:
            await layer.group_send(group_address("lobby"), frame_event('{"#message":1}', keep=True))
            await layer.group_send(user_address("7"), frame_event('{"#private":2}', keep=True))
            await layer.close()

        try:
            async_to_sync(seed)()
            assert named.all_closed()
            for _ in range(10):
                assert [m["#message"] for m in api.history("lobby", last=5).messages] == [1]
                assert [m["#private"] for m in api.private_history("7", last=5).messages] == [2]
            assert named.connections() == 1
            with ThreadPoolExecutor(4) as threads:
                answers = list(threads.map(lambda _: api.history("lobby", since=0), range(20)))
            assert {(a.offset, a.recovered, len(a.messages)) for a in answers} == {(1, True, 1)}
            assert 1 <= named.connections() <= 4
        finally:
            async_to_sync(layer.close)()
    try:
        assert named.all_closed()
    finally:
        named.close()


# Real processes.


class Socket:
    """A socket to one server (``server``: its index) as user u<user> (user_id
    ``user + 1``), keeping every frame."""

    def __init__(self, deployment: Deployment, server: int, user: int) -> None:
        self.url = f"ws://127.0.0.1:{deployment.servers[server].port}/ws/realtime/?token={token(user)}"
        self.frames: list[dict[str, Any]] = []
        self.arrived = asyncio.Event()

    async def __aenter__(self) -> Socket:
        self.ws = await connect(self.url)
        self.reader = asyncio.create_task(self._read())
        return self

    async def __aexit__(self, *exc: Any) -> None:
        self.reader.cancel()
        await self.ws.close()

    async def _read(self) -> None:
        async for text in self.ws:
            self.frames.append(json.loads(text))
            self.arrived.set()

    async def send(self, frame: dict[str, Any]) -> None:
        await self.ws.send(json.dumps(frame))

    async def until(self, predicate: Any, timeout: float = 10) -> dict[str, Any]:
        async with asyncio.timeout(timeout):
            while True:
                for item in self.frames:
                    if predicate(item):
                        return item
                self.arrived.clear()
                await self.arrived.wait()

    async def answer(self, frame_id: Any) -> dict[str, Any]:
        return await self.until(lambda f: f.get("#ack", f.get("#id", object())) == frame_id)


@pytest.mark.parametrize("layer_backend", ["tests.held_replay.HeldRedisLayer"])
async def test_two_processes_replay_the_same_stream_without_gap_or_duplicate(
    deployment: Deployment,
) -> None:
    """Members on two processes talk while a member of the second process joins
    with since again and again: every offset after since arrives once, in order.

    The servers' layer (tests/held_replay.py) holds each replaying history read
    until ``HOLD`` messages have been queued live for the joining member after its
    subscription: the replay covers them too, and the consumer must drop those live
    copies."""
    group = "hist-" + secrets.token_hex(3)
    async with (
        Socket(deployment, 0, 1) as alice,
        Socket(deployment, 1, 2) as bob,
    ):
        await alice.send({"action": "joinRoom", "rid": group, "id": "j"})
        epoch = (await alice.answer("j"))["#epoch"]
        await bob.send({"action": "joinRoom", "rid": group, "id": "j"})
        assert (await bob.answer("j"))["#epoch"] == epoch
        stop = asyncio.Event()

        async def talk(socket: Socket) -> None:
            while not stop.is_set():
                await socket.send({"action": "broadcast", "rid": group, "content": "x"})
                await asyncio.sleep(0.07)  # within the default 20 frames a second

        talkers = [asyncio.create_task(talk(s)) for s in (alice, bob)]
        since = 0
        try:
            for attempt in range(4):
                await asyncio.sleep(0.1)
                async with Socket(deployment, 1, 3) as carol:
                    since_frame = {"offset": since, "epoch": epoch}
                    await carol.send(
                        {"action": "joinRoom", "rid": group, "since": since_frame, "id": "c"}
                    )
                    ack = await carol.answer("c")
                    assert ack["#recovered"] is True, ack
                    index = carol.frames.index(ack)
                    replay = [f["#offset"] for f in carol.frames[:index] if "#message" in f]
                    assert replay == list(range(since + 1, ack["#offset"] + 1)), attempt
                    assert len(replay) >= HOLD, attempt
                    target = ack["#offset"] + 10
                    await carol.until(
                        lambda f, target=target: "#message" in f and f["#offset"] >= target
                    )
                    live = [f for f in carol.frames[index + 1 :] if "#message" in f]
                    assert all("#replay" not in f for f in live)
                    offsets = [f["#offset"] for f in live]
                    assert offsets == list(range(ack["#offset"] + 1, ack["#offset"] + 1 + len(offsets)))
                    since = ack["#offset"]
        finally:
            stop.set()
            await asyncio.gather(*talkers)
        # Both members got the same offsets for the same messages.
        seen_a = [f["#offset"] for f in alice.frames if "#message" in f]
        seen_b = [f["#offset"] for f in bob.frames if "#message" in f]
        assert seen_a == seen_b == list(range(1, len(seen_a) + 1))
    held = deployment.servers[1].log.read_text().count("Held a history read")
    assert held == 4


async def test_private_stream_resumes_across_processes(deployment: Deployment) -> None:
    async with Socket(deployment, 0, 4) as dave:
        await dave.send({"action": "resume", "id": "r"})
        start = await dave.answer("r")
    async with Socket(deployment, 1, 5) as erin:
        for n in range(3):
            await erin.send({"action": "sendMessage", "uid": "5", "content": n, "id": n})
            await erin.answer(n)
    async with Socket(deployment, 1, 4) as dave:
        since = {"offset": start["#offset"], "epoch": start["#epoch"]}
        await dave.send({"action": "resume", "since": since, "id": "r2"})
        ack = await dave.answer("r2")
        replay = [f for f in dave.frames if "#private" in f]
        assert [(f["#private"], f["#replay"]) for f in replay] == [(0, True), (1, True), (2, True)]
        assert ack["#recovered"] is True and ack["#offset"] == start["#offset"] + 3
