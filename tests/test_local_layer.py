"""The in-process channel layer: the channel-layer contract, and no silent drops."""

from __future__ import annotations

import asyncio

import pytest
from channels.exceptions import ChannelFull

from skapi_channels.local_layer import LocalChannelLayer
from skapi_channels.runtime import runtime


async def test_send_receive_in_order():
    layer = LocalChannelLayer()
    name = await layer.new_channel()
    for number in range(3):
        await layer.send(name, {"type": "t", "n": number})
    assert [(await layer.receive(name))["n"] for _ in range(3)] == [0, 1, 2]


async def test_receive_waits_for_a_message():
    layer = LocalChannelLayer()
    name = await layer.new_channel()
    waiting = asyncio.create_task(layer.receive(name))
    await asyncio.sleep(0)
    assert not waiting.done()
    await layer.send(name, {"type": "t"})
    assert await asyncio.wait_for(waiting, 1) == {"type": "t"}


async def test_group_send_reaches_members_only_with_copies():
    layer = LocalChannelLayer()
    a, b, c = [await layer.new_channel() for _ in range(3)]
    await layer.group_add("g", a)
    await layer.group_add("g", b)
    await layer.group_discard("g", b)
    await layer.group_add("h", c)
    message = {"type": "t", "text": "x"}
    await layer.group_send("g", message)
    received = await layer.receive(a)
    assert received == message and received is not message
    assert layer.channels[b].messages == type(layer.channels[b].messages)()
    assert not layer.channels[c].messages
    await layer.group_discard("g", a)
    assert "g" not in layer.groups


async def test_send_to_a_full_channel_raises():
    layer = LocalChannelLayer(capacity=2)
    name = await layer.new_channel()
    await layer.send(name, {"type": "t"})
    await layer.send(name, {"type": "t"})
    with pytest.raises(ChannelFull):
        await layer.send(name, {"type": "t"})


async def test_group_overflow_is_counted_and_reported_before_the_next_message():
    layer = LocalChannelLayer(capacity=2)
    name = await layer.new_channel()
    layer.report_missed_to(name)
    await layer.group_add("g", name)
    before = runtime.counters["dropped"]
    for number in range(5):
        await layer.group_send("g", {"type": "t", "n": number})
    assert runtime.counters["dropped"] - before == 3
    assert layer.dropped == 3
    assert await layer.receive(name) == {"type": "skapi.missed", "count": 3}
    assert (await layer.receive(name))["n"] == 0


async def test_a_cancelled_receiver_is_forgotten_with_its_groups():
    layer = LocalChannelLayer()
    name = await layer.new_channel()
    await layer.group_add("g", name)
    receiving = asyncio.create_task(layer.receive(name))
    await asyncio.sleep(0)
    receiving.cancel()
    with pytest.raises(asyncio.CancelledError):
        await receiving
    assert name not in layer.channels and "g" not in layer.groups


async def test_flush():
    layer = LocalChannelLayer()
    name = await layer.new_channel()
    await layer.group_add("g", name)
    await layer.flush()
    assert layer.channels == {} and layer.groups == {}


async def test_receive_nowait_answers_what_receive_would_without_waiting():
    layer = LocalChannelLayer(capacity=1)
    layer.report_missed_to("c!1")
    await layer.group_add("g", "c!1")
    assert layer.receive_nowait("c!1") is None  # nothing queued
    await layer.group_send("g", {"type": "m", "n": 1})
    await layer.group_send("g", {"type": "m", "n": 2})  # over capacity: missed
    assert layer.receive_nowait("c!1") == {"type": "skapi.missed", "count": 1}
    assert layer.receive_nowait("c!1") == {"type": "m", "n": 1}
    assert layer.receive_nowait("c!1") is None
    # While a receive waits, the message is its: receive_nowait takes nothing.
    waiting = asyncio.ensure_future(layer.receive("c!1"))
    await asyncio.sleep(0)
    await layer.send("c!1", {"type": "m", "n": 3})
    assert layer.receive_nowait("c!1") is None
    assert await asyncio.wait_for(waiting, 1) == {"type": "m", "n": 3}
    assert layer.receive_nowait("unknown!1") is None
