"""Sends from sync code (``skapi_channels.api`` in a WSGI view, a management command,
a Celery task) on the fan-out layer: through the layer's blocking connections, not
a new event loop and new connections per call. A second layer, in an event loop of
its own thread, stands for a server process with a connected member."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import pytest
from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.test import override_settings

from skapi_channels import api
from skapi_channels.addressing import group_address, user_address
from skapi_channels.layer_abilities import SendsSync
from skapi_channels.protocol import EVENT_CLOSE, loads
from skapi_channels.redis_fanout import RedisFanoutLayer
from skapi_channels.runtime import runtime
from tests.scaleout.conftest import NamedLayer, RedisServer
from tests.scaleout.test_fanout_layer import make, redis_url

pytestmark = [pytest.mark.scaleout, pytest.mark.timeout(60)]

T = TypeVar("T")


class Process:
    """A fan-out layer running in an event loop of its own thread: another server
    process, receiving while the test's thread sends."""

    def __init__(self, url: str, prefix: str, **config: Any) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.layer = make(url, prefix, **config)

    def run(self, coroutine: Coroutine[Any, Any, T], timeout: float = 15) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def member(self, *groups: str) -> str:
        async def join() -> str:
            channel = await self.layer.new_channel()
            for group in groups:
                await self.layer.group_add(group, channel)
            self.layer.report_missed_to(channel)
            return channel

        return self.run(join())

    def receive(self, channel: str, count: int) -> list[dict[str, Any]]:
        async def take() -> list[dict[str, Any]]:
            return [await self.layer.receive(channel) for _ in range(count)]

        return self.run(take())

    def stop(self) -> None:
        self.run(self.layer.close())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join()
        self.loop.close()


def frame(event: dict[str, Any]) -> tuple[Any, ...]:
    """What a member got: (kind, content, sender, offset) of a frame, or the event type."""
    if "text" not in event:
        return (event["type"],)
    decoded = loads(event["text"])
    kind = next(key for key in ("#message", "#private", "#notice") if key in decoded)
    return kind, decoded[kind], decoded.get("#user_id"), event.get("offset")


def test_sync_sends_keep_one_connection_and_reach_another_process_in_order() -> None:
    """20 api.broadcast and 20 api.send_to_user calls in a row from sync code use one
    connection, which stays open across calls (not a new event loop and connections
    per call); a member in another process gets them all, in order, with their
    offsets; the sends of each of 4 threads keep their order too."""
    named = NamedLayer(redis_url())

    other = Process(named.url, named.name)
    runtime.counters.clear()
    with override_settings(CHANNEL_LAYERS=named.layers):
        layer = get_channel_layer()
        assert isinstance(layer, RedisFanoutLayer) and isinstance(layer, SendsSync)
        try:
            member = other.member(group_address("lobby"), user_address("7"))
            for n in range(20):
                api.broadcast("lobby", n)
            for n in range(20):
                api.send_to_user("7", n, sender="9")
            assert named.connections() == 1
            api.send_notice("lobby", "Closing soon.")
            api.disconnect_user("7")
            got = [frame(event) for event in other.receive(member, 42)]
            assert got == [
                *[("#message", n, None, n + 1) for n in range(20)],
                *[("#private", n, "9", n + 1) for n in range(20)],
                ("#notice", "Closing soon.", None, None),
                (EVENT_CLOSE,),
            ]
            assert runtime.counters["server_messages"] == 41
            assert runtime.counters["dropped"] == 0

            def send_ten(sender: int) -> None:
                for n in range(10):
                    api.broadcast("lobby", n, sender=str(sender))

            with ThreadPoolExecutor(4) as threads:
                list(threads.map(send_ten, range(4)))
            assert 1 <= named.connections() <= 4
            got = [frame(event) for event in other.receive(member, 40)]
            assert [offset for *_, offset in got] == list(range(21, 61))
            for sender in map(str, range(4)):
                assert [content for _, content, by, _ in got if by == sender] == list(range(10))

            layer.send_sync(member, {"type": "skapi.test", "n": 1})  # one channel of it
            assert other.receive(member, 1) == [{"type": "skapi.test", "n": 1}]
            assert 1 <= named.connections() <= 4
        finally:
            async_to_sync(layer.close)()
            other.stop()
            runtime.counters.clear()
    try:
        assert named.all_closed()
    finally:
        named.close()


def test_a_sync_send_given_up_during_an_outage_is_told_once_redis_is_back(
    private_redis: RedisServer,
) -> None:
    sender = make(private_redis.url, "outage", retry_for=0.3)
    other = Process(private_redis.url, "outage", retry_for=0.3)
    runtime.counters.clear()
    try:
        member = other.member("room")
        sender.group_send_sync("room", {"type": "skapi.frame", "n": 0})
        assert other.receive(member, 1) == [{"type": "skapi.frame", "n": 0}]
        private_redis.stop()
        sender.group_send_sync("room", {"type": "skapi.frame", "n": "lost"})  # neither raises nor hangs
        assert runtime.counters["dropped_redis_down"] == 1
        private_redis.start()
        assert other.receive(member, 1) == [{"type": "skapi.missed", "count": 1}]
        sender.group_send_sync("room", {"type": "skapi.frame", "n": "after"})
        assert other.receive(member, 1) == [{"type": "skapi.frame", "n": "after"}]
    finally:
        async_to_sync(sender.close)()
        other.stop()
        runtime.counters.clear()
