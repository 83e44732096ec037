"""skapi_channels.redis_fanout on a real Redis. Two layer instances stand for two
server processes (each has its own subscription connection and process id)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from django.test import override_settings
from redis.asyncio import Redis
from redis.asyncio.connection import Connection

from skapi_channels.redis_fanout import REFRESH_EVERY, RedisFanoutLayer
from skapi_channels.redis_scripts import pack
from skapi_channels.runtime import runtime
from tests.scaleout.conftest import RedisServer

pytestmark = [pytest.mark.scaleout, pytest.mark.timeout(60)]


def redis_url() -> str:
    url = os.environ.get("REDIS_URL")
    if not url:
        pytest.skip("set REDIS_URL to run the channel-layer tests on Redis")
    return url


def make(url: str, prefix: str, **config: Any) -> RedisFanoutLayer:
    return RedisFanoutLayer(hosts=[url], prefix=prefix, **config)


Pairs = Callable[..., tuple[RedisFanoutLayer, RedisFanoutLayer]]


@contextlib.asynccontextmanager
async def pairs_on(url: Callable[[], str], flush: bool) -> AsyncIterator[Pairs]:
    """Makes pairs of layers (two processes) on the Redis at ``url()``, with fresh
    counters; afterwards closes them (and with ``flush``, deletes their keys)."""
    made: list[RedisFanoutLayer] = []
    prefix = "skapi-fanout-test-" + secrets.token_hex(4)

    def factory(**config: Any) -> tuple[RedisFanoutLayer, RedisFanoutLayer]:
        layers = make(url(), prefix, **config), make(url(), prefix, **config)
        made.extend(layers)
        return layers

    runtime.counters.clear()
    try:
        yield factory
    finally:
        if made and flush:
            await made[0].flush()
        for layer in made:
            await layer.close()
        runtime.counters.clear()


@pytest.fixture
async def pair() -> AsyncIterator[Pairs]:
    async with pairs_on(redis_url, flush=True) as factory:
        yield factory


@pytest.fixture
async def private_pair(private_redis: RedisServer) -> AsyncIterator[Pairs]:
    """Pairs on a Redis of the test's own, which it may stop and start."""
    async with pairs_on(lambda: private_redis.url, flush=False) as factory:
        yield factory


async def receive(layer: RedisFanoutLayer, channel: str, timeout: float = 5) -> dict[str, Any]:
    return await asyncio.wait_for(layer.receive(channel), timeout)


async def test_a_group_message_reaches_members_in_both_processes_in_order(pair: Any) -> None:
    a, b = pair()
    here, there, other = await a.new_channel(), await b.new_channel(), await b.new_channel()
    for layer, channel in ((a, here), (b, there), (b, other)):
        await layer.group_add("room", channel)
    for number in range(20):
        await a.group_send("room", {"type": "skapi.frame", "n": number})
    for layer, channel in ((a, here), (b, there), (b, other)):
        assert [(await receive(layer, channel))["n"] for _ in range(20)] == list(range(20))
    # One subscription per process and group, whatever the number of members.
    assert b.groups["room"].keys() == {there, other}


async def test_a_message_published_after_group_add_returns_is_never_missed(pair: Any) -> None:
    a, b = pair()
    for number in range(30):
        channel = await b.new_channel()
        await b.group_add(f"fresh-{number}", channel)  # returns once Redis confirmed
        await a.group_send(f"fresh-{number}", {"type": "skapi.frame", "n": number})
        assert (await receive(b, channel))["n"] == number


async def test_send_reaches_a_channel_of_another_process(pair: Any) -> None:
    a, b = pair()
    channel = await b.new_channel()
    await a.send(channel, {"type": "first"})
    await a.send(channel, {"type": "second"})
    assert (await receive(b, channel))["type"] == "first"
    assert (await receive(b, channel))["type"] == "second"
    mine = await a.new_channel()
    await a.send(mine, {"type": "local"})  # queued directly
    assert (await receive(a, mine))["type"] == "local"


async def test_what_was_published_before_a_discard_is_queued_before_it(pair: Any) -> None:
    a, b = pair()
    staying, leaving = await b.new_channel(), await b.new_channel()
    await b.group_add("room", staying)
    await b.group_add("room", leaving)
    for number in range(50):
        await a.group_send("room", {"type": "skapi.frame", "n": number})
    await b.group_discard("room", leaving)  # while those may still be on their way
    await b.send(leaving, {"type": "skapi.drained"})
    received = [await receive(b, leaving) for _ in range(51)]
    assert [m.get("n") for m in received] == [*range(50), None]
    await a.group_send("room", {"type": "skapi.frame", "n": "after"})
    assert [(await receive(b, staying))["n"] for _ in range(51)][-1] == "after"
    assert b.channels[leaving].messages == type(b.channels[leaving].messages)()


async def test_the_last_member_leaving_unsubscribes(pair: Any) -> None:
    a, b = pair()
    channel = await b.new_channel()
    await b.group_add("room", channel)
    redis = Redis.from_url(redis_url())
    try:
        key = b.channel_key("room")
        assert (await redis.pubsub_numsub(key))[0][1] == 1
        await b.group_discard("room", channel)
        for _ in range(50):
            if (await redis.pubsub_numsub(key))[0][1] == 0:
                break
            await asyncio.sleep(0.05)
        assert (await redis.pubsub_numsub(key))[0][1] == 0
    finally:
        await redis.aclose()


async def test_a_gap_in_the_numbering_is_told_to_the_members_that_asked(pair: Any) -> None:
    a, b = pair()
    told, silent = await b.new_channel(), await b.new_channel()
    for channel in (told, silent):
        await b.group_add("room", channel)
    b.report_missed_to(told)
    await a.group_send("room", {"type": "skapi.frame", "n": 1})
    assert (await receive(b, told))["n"] == 1
    # Three messages that never reached b (as when its connection dropped).
    redis = Redis.from_url(redis_url())
    try:
        await redis.hincrby(a.counter_key(a.channel_key("room")), "n", 3)
    finally:
        await redis.aclose()
    await a.group_send("room", {"type": "skapi.frame", "n": 5})
    assert await receive(b, told) == {"type": "skapi.missed", "count": 3}
    assert (await receive(b, told))["n"] == 5
    assert [(await receive(b, silent))["n"] for _ in range(2)] == [1, 5]
    assert runtime.counters["dropped"] == 6  # three messages, two members


async def test_a_dropped_subscription_connection_is_told_without_a_next_message(
    pair: Any,
) -> None:
    a, b = pair()
    channel = await told_member(b)
    await a.group_send("room", {"type": "skapi.frame", "n": 0})
    assert (await receive(b, channel))["n"] == 0
    redis = Redis.from_url(redis_url())
    try:
        # Redis disconnects b's subscriber (what it does to one that falls behind);
        # messages published before b subscribes again never reach it.
        await kill_clients(redis, b.subscriber_name)
        for number in range(1, 4):
            await a.group_send("room", {"type": "skapi.frame", "n": number})
    finally:
        await redis.aclose()
    events = []
    while True:
        event = await receive(b, channel, 10)
        events.append(event)
        if sum(e.get("count", 0) for e in events) + len([e for e in events if "n" in e]) >= 3:
            break
    delivered = [e["n"] for e in events if "n" in e]
    missed = sum(e.get("count", 0) for e in events)
    assert delivered == sorted(delivered) and missed + len(delivered) == 3, events


def hold_reconnection(layer: RedisFanoutLayer) -> asyncio.Event:
    """Hold ``layer``'s subscriber between connecting again and subscribing, until
    the event returned is set (as when it connects while messages are published)."""
    release = asyncio.Event()
    epoch = layer.epoch

    async def held() -> bytes:
        await release.wait()
        return await epoch()

    layer.epoch = held  # type: ignore[method-assign]
    return release


async def told_member(layer: RedisFanoutLayer, group: str = "room") -> str:
    """A new channel of ``layer`` in ``group``, told what it misses."""
    channel = await layer.new_channel()
    await layer.group_add(group, channel)
    layer.report_missed_to(channel)
    return channel


async def kill_clients(redis: Redis, name: str) -> int:
    """Disconnect the Redis clients named ``name``; answers how many there were."""
    killed = 0
    for client in await redis.client_list():
        if client["name"] == name:
            killed += await redis.client_kill_filter(_id=client["id"])
    return killed


async def kill_subscriber(redis: Redis, layer: RedisFanoutLayer) -> None:
    await kill_clients(redis, layer.subscriber_name)
    for _ in range(100):
        if layer._subscriber is not None and layer._subscriber.connection is None:
            return
        await asyncio.sleep(0.02)
    raise AssertionError("the subscription connection did not drop")


async def test_a_member_leaving_while_the_subscription_is_down_is_told_its_gap_first(
    private_redis: RedisServer, private_pair: Pairs
) -> None:
    """Redis restarts; a message is published before the receiving process has
    subscribed again, and a member leaves the group then: it is told the gap before
    its leave takes effect (its drain marker comes after the tell)."""
    a, b = private_pair()
    leaver, staying = await b.new_channel(), await b.new_channel()
    for channel in (leaver, staying):
        await b.group_add("room", channel)
        b.report_missed_to(channel)
    await a.group_send("room", {"type": "skapi.frame", "n": 0})
    for channel in (leaver, staying):
        assert (await receive(b, channel))["n"] == 0
    release = hold_reconnection(b)
    private_redis.stop()
    private_redis.start()
    await a.group_send("room", {"type": "skapi.frame", "n": 1, "text": "{}", "keep": True})
    leaving = asyncio.create_task(b.group_discard("room", leaver))
    await asyncio.sleep(0.3)
    assert not leaving.done(), "the leave did not wait for the gap to be told"
    release.set()
    await asyncio.wait_for(leaving, 10)
    await b.send(leaver, {"type": "skapi.drained"})
    assert await receive(b, leaver) == {"type": "skapi.missed", "count": 1}
    assert (await receive(b, leaver))["type"] == "skapi.drained"
    assert await receive(b, staying) == {"type": "skapi.missed", "count": 1}


async def test_a_dropped_connection_is_told_for_a_group_that_had_no_message_yet(
    pair: Any,
) -> None:
    """A group joined (no message since) whose subscription drops while messages are
    published: the counters read when it subscribed say what was missed."""
    a, b = pair()
    channel = await told_member(b)
    name = b.channel_key("room")
    for _ in range(100):
        if b._subscriber is not None and name in b._subscriber.floor:
            break
        await asyncio.sleep(0.02)
    release = hold_reconnection(b)
    redis = Redis.from_url(redis_url())
    try:
        await kill_subscriber(redis, b)
        await a.group_send("room", {"type": "skapi.frame", "n": 1})
        await a.group_send("room", {"type": "skapi.frame", "n": 2, "text": "{}", "keep": True})
    finally:
        await redis.aclose()
    release.set()
    assert await receive(b, channel, 10) == {"type": "skapi.missed", "count": 2}
    await a.group_send("room", {"type": "skapi.frame", "n": 3})
    assert (await receive(b, channel))["n"] == 3


async def test_a_dropped_publishing_connection_is_made_again_and_the_send_retried(
    pair: Any,
) -> None:
    a, b = pair()
    channel = await told_member(b)
    await a.group_send("room", {"type": "skapi.frame", "n": 0})
    assert (await receive(b, channel))["n"] == 0
    assert a._publisher is not None
    before = a._publisher.connection
    redis = Redis.from_url(redis_url())
    try:
        assert await kill_clients(redis, a.publisher_name) == 1
    finally:
        await redis.aclose()
    for number in (1, 2):
        await a.group_send("room", {"type": "skapi.frame", "n": number})
    assert [await receive(b, channel) for _ in range(2)] == [
        {"type": "skapi.frame", "n": 1},
        {"type": "skapi.frame", "n": 2},
    ]
    assert runtime.counters["dropped"] == 0
    assert a._publisher.connection not in (None, before)

async def test_a_slow_receiver_is_told_what_its_full_queue_lost(pair: Any) -> None:
    a, b = pair(capacity=2)
    channel = await told_member(b)
    for number in range(5):
        await a.group_send("room", {"type": "skapi.frame", "n": number})
    barrier = b._subscriber.barrier() if b._subscriber else None
    if barrier is not None:
        await barrier
    events = [await receive(b, channel) for _ in range(3)]
    assert events[0] == {"type": "skapi.missed", "count": 3}
    assert [e["n"] for e in events[1:]] == [0, 1]


async def test_commands_per_broadcast_do_not_grow_with_the_group(
    private_redis: RedisServer, private_pair: Pairs
) -> None:
    """One broadcast to 1,000 members spread over 2 processes costs at most
    2 x processes + 2 Redis commands (INFO commandstats), whether it is kept for
    history or not. Counted in the steady state: not the first message of its
    stream, nor the first in a minute that refreshes the keys' expiries."""
    layers = list(private_pair())
    channels = []
    for layer in layers:
        for _ in range(500):
            channel = await layer.new_channel()
            channels.append((layer, channel))
            await layer.group_add("big", channel)
    redis = Redis.from_url(private_redis.url)
    counted: dict[bool, dict[str, int]] = {}
    try:
        for keep in (False, True):
            for n in ("warm-up", "counted"):
                if n == "counted":
                    before = await redis.info("commandstats")
                message = {"type": "skapi.frame", "n": n, "text": "{}", "keep": keep}
                await layers[1].group_send("big", message)
                for layer, channel in channels:
                    got = await receive(layer, channel)
                    assert got["n"] == n and ("offset" in got) is keep, got
            after = await redis.info("commandstats")
            calls = {
                name: after[name]["calls"] - before.get(name, {}).get("calls", 0)
                for name in after
                if after[name]["calls"] != before.get(name, {}).get("calls", 0)
            }
            calls["cmdstat_info"] = calls.get("cmdstat_info", 1) - 1  # the first INFO itself
            counted[keep] = calls
    finally:
        await redis.aclose()
    print(f"Redis commands for one broadcast to 1,000 members over 2 processes: {counted}")
    for keep, calls in counted.items():
        assert sum(calls.values()) <= 2 * len(layers) + 2, (keep, calls)
    assert "cmdstat_rpush" in counted[True] and "cmdstat_rpush" not in counted[False]


async def test_expiries_are_set_with_a_key_and_refreshed_about_once_a_minute(pair: Any) -> None:
    a, _ = pair(group_expiry=1000)
    name = a.channel_key("room")
    counter, history = a.counter_key(name), a.history_key(name)
    kept = {"type": "skapi.frame", "text": "{}", "keep": True}
    redis = Redis.from_url(redis_url())
    try:
        with override_settings(SKAPI_CHANNELS={"HISTORY_SIZE": 4, "HISTORY_TTL": 100}):
            await a.group_send("room", kept)
            assert 1000 < await redis.ttl(counter) <= 1000 + REFRESH_EVERY
            assert 100 < await redis.ttl(history) <= 100 + REFRESH_EVERY
            await redis.expire(counter, 50)
            await redis.expire(history, 50)
            for _ in range(25):  # within the minute: no refresh; trimmed in batches
                await a.group_send("room", kept)
            assert await redis.ttl(counter) <= 50 and await redis.ttl(history) <= 50
            assert 4 < await redis.llen(history) <= 4 + 16 + 1
            assert [o for o, _ in (await a.history_read("room", last=10)).frames] == [23, 24, 25, 26]
            for key in (counter, history):
                a._refreshed[key] -= REFRESH_EVERY + 1  # a minute later
            await a.group_send("room", kept)
            assert await redis.ttl(counter) > 1000 and await redis.ttl(history) > 100
    finally:
        await redis.aclose()


async def test_a_history_left_from_an_expired_counter_is_not_read_under_the_new_epoch(
    pair: Any,
) -> None:
    a, b = pair()
    kept = {"type": "skapi.frame", "text": "{}", "keep": True}
    for _ in range(3):
        await a.group_send("room", kept)
    before = await b.history_read("room", last=10)
    assert [o for o, _ in before.frames] == [1, 2, 3]
    redis = Redis.from_url(redis_url())
    try:
        await redis.delete(a.counter_key(a.channel_key("room")))  # as when it expired
    finally:
        await redis.aclose()
    after = await b.history_read("room", last=10)
    assert after.epoch != before.epoch and (after.latest, after.frames) == (0, [])
    await a.group_send("room", kept)
    assert [o for o, _ in (await b.history_read("room", last=10)).frames] == [1]

async def test_a_redis_restart_is_survived_and_its_gap_told(
    private_redis: RedisServer, private_pair: Pairs
) -> None:
    a, b = private_pair()
    channel = await told_member(b)
    await a.group_send("room", {"type": "skapi.frame", "n": 0})
    assert (await receive(b, channel))["n"] == 0
    receiving = asyncio.create_task(b.receive(channel))
    private_redis.stop()
    await asyncio.sleep(0.5)
    assert not receiving.done(), "receive gave up while Redis was down"
    private_redis.start()  # empty: every counter starts again
    # Sent before b subscribed again, or after: delivered or told, never both.
    for number in range(1, 6):
        await a.group_send("room", {"type": "skapi.frame", "n": number})
    events = [await asyncio.wait_for(receiving, 10)]
    while sum(e.get("count", 0) for e in events) + len([e for e in events if "n" in e]) < 5:
        events.append(await receive(b, channel, 10))
    delivered = [e["n"] for e in events if "n" in e]
    missed = sum(e.get("count", 0) for e in events)
    assert delivered == sorted(delivered) and missed + len(delivered) == 5, events
    # The subscription is back: a new message arrives.
    await a.group_send("room", {"type": "skapi.frame", "n": "after"})
    assert (await receive(b, channel, 10))["n"] == "after"


async def test_a_send_given_up_during_an_outage_is_told_once_redis_is_back(
    private_redis: RedisServer, private_pair: Pairs
) -> None:
    a, b = private_pair(retry_for=0.3)
    channel = await told_member(b)
    await a.group_send("room", {"type": "skapi.frame", "n": 0})
    assert (await receive(b, channel))["n"] == 0
    private_redis.stop()
    await a.group_send("room", {"type": "skapi.frame", "n": "lost"})  # neither raises nor hangs
    assert runtime.counters["dropped"] == 1
    private_redis.start()
    assert await receive(b, channel, 15) == {"type": "skapi.missed", "count": 1}


def test_the_publisher_packs_commands_as_redis_py_does() -> None:
    command = ("EVALSHA", "ab12", 3, b"k:1", "k:2", b"\x00\r\n:payload", 86460, "1.5", 0)
    assert pack(command) == b"".join(Connection().pack_command(*command))
