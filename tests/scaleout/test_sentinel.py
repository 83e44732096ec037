"""The fan-out layer through a Sentinel-managed master (channels-redis's Sentinel
host entry: ``master_name`` and ``sentinels``), on a private redis-server and a
private Sentinel."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from redis.asyncio import Redis

from skapi_channels.redis_fanout import RedisFanoutLayer
from tests.live_server import RedisServer, free_port, wait_for_port
from tests.scaleout.test_fanout_layer import receive

pytestmark = [pytest.mark.scaleout, pytest.mark.timeout(60)]

MASTER = "skapi-master"


@pytest.fixture
def sentinel(private_redis: RedisServer, tmp_path: Path) -> Iterator[int]:
    """A Sentinel on a free port watching ``private_redis``; yields its port."""
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed, so no Sentinel can run")
    port = free_port()
    config = tmp_path / "sentinel.conf"
    config.write_text(
        f"bind 127.0.0.1\nport {port}\ndir {tmp_path}\n"
        f"sentinel monitor {MASTER} 127.0.0.1 {private_redis.port} 1\n"
    )
    process = subprocess.Popen(
        ["redis-server", str(config), "--sentinel"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_port(port, 10, process)
        yield port
    finally:
        process.terminate()
        process.wait(10)


def through(sentinel: int) -> RedisFanoutLayer:
    hosts = [{"master_name": MASTER, "sentinels": [("127.0.0.1", sentinel)]}]
    return RedisFanoutLayer(hosts=hosts, prefix="sentinel")


async def test_the_layer_works_through_a_sentinel_host_entry(
    sentinel: int, private_redis: RedisServer
) -> None:
    a, b = through(sentinel), through(sentinel)
    try:
        here, there = await a.new_channel(), await b.new_channel()
        await a.group_add("room", here)
        await b.group_add("room", there)
        b.report_missed_to(there)
        kept = {"type": "skapi.frame", "text": '{"#message":1}', "keep": True}
        await a.group_send("room", kept)
        await b.group_send("room", {"type": "skapi.frame", "text": "{}"})
        for layer, channel in ((a, here), (b, there)):
            got = [await receive(layer, channel) for _ in range(2)]
            assert [m.get("offset") for m in got] == [1, None], got
        await a.send(there, {"type": "direct"})  # through b's own Redis channel
        assert (await receive(b, there))["type"] == "direct"
        history = await b.history_read("room", last=5)
        assert history.frames == [(1, '{"#message":1}')]
        assert await asyncio.to_thread(a.history_read_sync, "room", last=5) == history
        # Every connection went to the master the Sentinel named.
        master = Redis.from_url(private_redis.url)
        try:
            names = {client["name"] for client in await master.client_list()}
        finally:
            await master.aclose()
        assert {a.subscriber_name, b.subscriber_name, a.publisher_name} <= names
    finally:
        for layer in (a, b):
            await layer.close()
