"""The consumer's receive loop: every message handled once, in arrival order, one
at a time; what ends it ends it cleanly."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from channels.exceptions import StopConsumer

from skapi_channels.receive_loop import BURST, dispatch_as_they_come


async def test_messages_of_both_sources_are_handled_in_arrival_order_one_at_a_time():
    client: asyncio.Queue[Any] = asyncio.Queue()
    layer: asyncio.Queue[Any] = asyncio.Queue()
    handled: list[Any] = []
    busy = [False]

    async def dispatch(message: Any) -> None:
        assert not busy[0], "two messages handled at once"
        busy[0] = True
        await asyncio.sleep(0)  # a handler that awaits: others arrive meanwhile
        handled.append(message)
        busy[0] = False
        if message == "stop":
            raise StopConsumer

    loop = asyncio.ensure_future(dispatch_as_they_come([client.get, layer.get], dispatch))
    order = ["c1", "l1", "l2", "c2", "l3", "c3"]
    for message in order:
        (client if message[0] == "c" else layer).put_nowait(message)
        await asyncio.sleep(0.01)
    layer.put_nowait("l4")  # both ready before the loop runs again
    client.put_nowait("c4")
    await asyncio.sleep(0.01)
    client.put_nowait("stop")
    with pytest.raises(StopConsumer):
        await asyncio.wait_for(loop, 5)
    assert handled == [*order, "l4", "c4", "stop"]


async def test_the_pending_receives_are_cancelled_when_it_ends():
    cancelled: list[str] = []

    def source(name: str, messages: list[Any]) -> Any:
        async def receive() -> Any:
            if messages:
                return messages.pop(0)
            try:
                await asyncio.sleep(60)
            except asyncio.CancelledError:
                cancelled.append(name)
                raise

        return receive

    async def dispatch(message: Any) -> None:
        raise RuntimeError(message)

    with pytest.raises(RuntimeError, match="boom"):
        await asyncio.wait_for(
            dispatch_as_they_come([source("client", ["boom"]), source("layer", [])], dispatch), 5
        )
    assert cancelled == ["layer"]


async def test_a_source_that_fails_ends_it_with_its_error():
    async def broken() -> Any:
        raise ConnectionError("layer gone")

    async def quiet() -> Any:
        await asyncio.sleep(60)

    async def dispatch(message: Any) -> None:
        raise AssertionError("nothing to handle")

    with pytest.raises(ConnectionError):
        await asyncio.wait_for(dispatch_as_they_come([quiet, broken], dispatch), 5)


async def test_cancelling_it_cancels_the_pending_receives():
    started = asyncio.Event()
    cancelled: list[bool] = []

    async def receive() -> Any:
        started.set()
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            cancelled.append(True)
            raise

    async def dispatch(message: Any) -> None:
        pass

    loop = asyncio.ensure_future(dispatch_as_they_come([receive], dispatch))
    await started.wait()
    loop.cancel()
    with pytest.raises(asyncio.CancelledError):
        await loop
    assert cancelled == [True]


async def test_a_burst_queued_behind_a_message_is_taken_without_waiting_but_bounded():
    """Messages a source already holds are handled after its message at once, up to
    BURST; a message of the other source then gets its turn before the rest."""
    client: asyncio.Queue[Any] = asyncio.Queue()
    layer: asyncio.Queue[Any] = asyncio.Queue()
    handled: list[Any] = []
    receives = [0]

    async def layer_receive() -> Any:
        receives[0] += 1
        return await layer.get()

    def layer_take() -> Any:
        return None if layer.empty() else layer.get_nowait()

    async def dispatch(message: Any) -> None:
        handled.append(message)
        if message == "c1":
            for n in range(BURST + 5):
                layer.put_nowait(f"l{n}")
        if message == "stop":
            raise StopConsumer

    loop = asyncio.ensure_future(
        dispatch_as_they_come([client.get, layer_receive], dispatch, [None, layer_take])
    )
    client.put_nowait("c1")
    await asyncio.sleep(0.01)
    assert handled == ["c1", *(f"l{n}" for n in range(BURST + 5))]
    assert receives[0] == 3  # the first, one after BURST + 1 messages, the pending one
    layer.put_nowait("l-a")
    layer.put_nowait("l-b")
    await asyncio.sleep(0)
    client.put_nowait("c2")
    await asyncio.sleep(0.01)
    client.put_nowait("stop")
    with pytest.raises(StopConsumer):
        await asyncio.wait_for(loop, 5)
    assert handled[-4:] == ["l-a", "l-b", "c2", "stop"]
