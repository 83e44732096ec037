"""skapi_channels.layers on a real Redis: drops are counted, outages are waited out,
lost state is noticed."""

from __future__ import annotations

import asyncio
import os
import secrets
from collections.abc import AsyncIterator

import pytest
from channels.exceptions import ChannelFull

from skapi_channels.layers import RedisChannelLayer
from skapi_channels.runtime import runtime
from tests.scaleout.conftest import RedisServer

pytestmark = [pytest.mark.scaleout, pytest.mark.timeout(60)]


def redis_url() -> str:
    url = os.environ.get("REDIS_URL")
    if not url:
        pytest.skip("set REDIS_URL to run the channel-layer tests on Redis")
    return url


@pytest.fixture
async def layer() -> AsyncIterator[RedisChannelLayer]:
    layer = RedisChannelLayer(
        hosts=[redis_url()], prefix="skapi-layer-test-" + secrets.token_hex(4), capacity=2
    )
    runtime.counters.clear()
    yield layer
    await layer.flush()
    await layer.close_pools()
    runtime.counters.clear()


async def test_group_send_counts_each_receiver_that_missed(layer: RedisChannelLayer) -> None:
    first, second = await layer.new_channel(), await layer.new_channel()
    for channel in (first, second):
        await layer.group_add("room", channel)
    for number in range(3):
        await layer.group_send("room", {"type": "skapi.frame", "n": number})
    # Both channels share their process's queue (capacity 2): the third message
    # is dropped for both receivers.
    assert runtime.counters["dropped"] == 2
    assert runtime.counters["dropped_channel_full"] == 2
    received = [await layer.receive(first) for _ in range(2)]
    assert [m["n"] for m in received] == [0, 1]


async def test_receivers_that_missed_messages_are_told(layer: RedisChannelLayer) -> None:
    layer.missed_poll = 0.05
    first, second, silent = [await layer.new_channel() for _ in range(3)]
    for channel in (first, second, silent):
        await layer.group_add("room", channel)
    layer.report_missed_to(first)
    layer.report_missed_to(second)
    for number in range(4):
        await layer.group_send("room", {"type": "skapi.frame", "n": number})
    await asyncio.sleep(0.3)
    for channel in (first, second):
        events = [await asyncio.wait_for(layer.receive(channel), 5) for _ in range(3)]
        assert sorted(str(e.get("n", e.get("count"))) + e["type"] for e in events) == [
            "0skapi.frame",
            "1skapi.frame",
            "2skapi.missed",
        ]
    assert runtime.counters["dropped"] == 6  # two messages for three receivers


async def test_collecting_missed_counts_survives_errors_and_stops_on_close(
    layer: RedisChannelLayer, caplog: pytest.LogCaptureFixture
) -> None:
    layer.missed_poll = 0.02
    rounds = {"failed": 0, "done": 0}
    collect = layer._collect_missed_once

    async def flaky() -> None:
        if rounds["failed"] < 2:
            rounds["failed"] += 1
            raise KeyError("a bug in one round")
        rounds["done"] += 1
        await collect()

    layer._collect_missed_once = flaky  # type: ignore[method-assign]
    layer.report_missed_to(await layer.new_channel())
    task = layer._missed_task
    assert task is not None
    for _ in range(200):
        if rounds["done"]:
            break
        await asyncio.sleep(0.02)
    assert rounds["failed"] == 2 and rounds["done"] >= 1 and not task.done()
    assert caplog.text.count("Collecting missed counts failed") == 2
    await layer.close_pools()
    assert task.cancelled() and layer._missed_task is None


async def test_send_to_a_full_channel_raises_and_counts(layer: RedisChannelLayer) -> None:
    channel = await layer.new_channel()
    await layer.send(channel, {"type": "x"})
    await layer.send(channel, {"type": "x"})
    with pytest.raises(ChannelFull):
        await layer.send(channel, {"type": "x"})
    assert runtime.counters["dropped"] == 1


async def test_state_lost_notices_a_flushed_redis(layer: RedisChannelLayer) -> None:
    assert not await layer.state_lost()  # records the epoch
    assert not await layer.state_lost()
    await layer.flush()  # what a restart without persistence leaves
    assert await layer.state_lost()
    assert not await layer.state_lost()


async def test_receive_waits_out_a_redis_restart(private_redis: RedisServer) -> None:
    layer = RedisChannelLayer(hosts=[private_redis.url], prefix="skapi-layer-test", retry_for=10)
    channel = await layer.new_channel()
    await layer.send(channel, {"type": "before"})
    assert (await layer.receive(channel))["type"] == "before"
    receiving = asyncio.create_task(layer.receive(channel))
    await asyncio.sleep(0.2)
    private_redis.stop()
    await asyncio.sleep(1)
    assert not receiving.done(), "receive gave up while Redis was down"
    private_redis.start()
    await layer.send(channel, {"type": "after"})
    assert (await asyncio.wait_for(receiving, 10))["type"] == "after"
    await layer.close_pools()


async def test_group_send_while_redis_is_down_is_counted(private_redis: RedisServer) -> None:
    layer = RedisChannelLayer(hosts=[private_redis.url], prefix="skapi-layer-test", retry_for=0.3)
    runtime.counters.clear()
    channel = await layer.new_channel()
    await layer.group_add("room", channel)
    private_redis.stop()
    await layer.group_send("room", {"type": "lost"})  # neither raises nor hangs
    assert runtime.counters["dropped_redis_down"] == 1
    await layer.group_add("other", channel)
    assert layer.groups_unsure
    private_redis.start()
    assert await layer.state_lost()
    await layer.close_pools()
    runtime.counters.clear()
