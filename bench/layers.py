"""Measure the channels-redis layers the way skapi_channels uses them.

Two receiver processes (each like one daphne process with ``--receivers`` open
connections) and one sender process share one Redis. Scenarios:

- fanout: group broadcasts to one group holding every receiver (2 x receivers);
- private: messages to single-member groups (a user's group), round robin, from
  ``--concurrency`` sender tasks at once;
- burst: like private, but the receivers start reading only after the sender has
  finished, so the queues must hold everything (what capacity and expiry do);
- restart: private messages paced at about ``--restart-rate`` a second, on a private
  redis-server that is stopped for a second and started empty in the middle (how
  much each layer loses, and counts, when Redis restarts). Receivers and sender
  carry on after errors, and put their channels back in their groups when the
  layer says it lost them (as skapi_channels' runtime does: on reconnecting, and
  every half second).

For each layer it prints the deliveries per second (counted until the last receiver
got its last message) and how many deliveries were lost. Bounded: fixed message
counts and a deadline per scenario.

    REDIS_URL=redis://127.0.0.1:6379/0 .venv/bin/python bench/layers.py
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import multiprocessing as mp
import os
import shutil
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from multiprocessing.synchronize import Event
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.live_server import RedisServer  # noqa: E402

LAYERS = {
    "core": "channels_redis.core.RedisChannelLayer",
    "skapi": "skapi_channels.layers.RedisChannelLayer",
    "pubsub": "channels_redis.pubsub.RedisPubSubChannelLayer",
}
IDLE_AFTER = 2.0  # a receiver reports once nothing came for this long
DEADLINE = 60.0  # and in any case after this long


def make_layer(kind: str, url: str, prefix: str, capacity: int) -> Any:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")
    import django

    django.setup()  # the skapi layer counts drops into the runtime's counters
    from django.utils.module_loading import import_string

    cls = import_string(LAYERS[kind])
    if kind == "pubsub":
        return cls(hosts=[url], prefix=prefix)
    return cls(hosts=[url], prefix=prefix, capacity=capacity, expiry=60)


@dataclass
class Scenario:
    name: str
    messages: int
    fanout: bool
    read_late: bool
    rate: float = 0.0  # messages a second; 0 sends as fast as it can


def receiver(
    kind: str,
    url: str,
    prefix: str,
    capacity: int,
    scenario: Scenario,
    index: int,
    receivers: int,
    ready: Any,
    go: Event,
    sent: Event,
    results: Any,
) -> None:
    async def main() -> None:
        layer = make_layer(kind, url, prefix, capacity)
        channels = [await layer.new_channel() for _ in range(receivers)]
        if hasattr(layer, "state_lost"):
            await layer.state_lost()  # records the epoch
        for number, channel in enumerate(channels):
            group = "fanout" if scenario.fanout else f"user-{index}-{number}"
            await layer.group_add(group, channel)
        ready.put(index)
        await asyncio.to_thread(go.wait, 30)
        if scenario.read_late:
            await asyncio.to_thread(sent.wait, DEADLINE)
        counts = [0] * len(channels)
        last = [0.0]

        async def consume(number: int, channel: str) -> None:
            while True:
                try:
                    await layer.receive(channel)
                except Exception:
                    await asyncio.sleep(0.1)  # a stock layer raises while Redis is down
                    continue
                counts[number] += 1
                last[0] = time.time()

        reconnected = asyncio.Event()
        if hasattr(layer, "skapi_on_reconnect"):
            layer.skapi_on_reconnect = reconnected.set

        async def resync() -> None:
            state_lost = getattr(layer, "state_lost", None)
            while state_lost is not None:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(reconnected.wait(), 0.5)
                reconnected.clear()
                try:
                    if await state_lost():
                        for number, channel in enumerate(channels):
                            await layer.group_add(f"user-{index}-{number}", channel)
                except Exception:
                    pass

        tasks = [asyncio.create_task(consume(n, c)) for n, c in enumerate(channels)]
        tasks.append(asyncio.create_task(resync()))
        started = time.monotonic()
        seen = -1
        while time.monotonic() - started < DEADLINE:
            await asyncio.sleep(IDLE_AFTER)
            if sum(counts) == seen and sent.is_set():
                break
            seen = sum(counts)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        dropped = 0
        if kind == "skapi":
            from skapi_channels.runtime import runtime

            dropped = runtime.counters["dropped"]
        results.put((index, sum(counts), last[0], dropped))

    asyncio.run(main())


def sender(
    kind: str,
    url: str,
    prefix: str,
    capacity: int,
    scenario: Scenario,
    receivers: int,
    concurrency: int,
    go: Event,
    sent: Event,
    results: Any,
) -> None:
    async def main() -> None:
        layer = make_layer(kind, url, prefix, capacity)
        payload = {"type": "skapi.frame", "text": '{"#message": "' + "x" * 200 + '"}'}
        targets = (
            ["fanout"]
            if scenario.fanout
            else [f"user-{i}-{n}" for i in range(2) for n in range(receivers)]
        )
        await asyncio.to_thread(go.wait, 30)
        started = time.time()
        counter = iter(range(scenario.messages))

        errors = 0

        async def work() -> None:
            nonlocal errors
            for number in counter:
                if scenario.rate:
                    delay = started + number / scenario.rate - time.time()
                    if delay > 0:
                        await asyncio.sleep(delay)
                try:
                    await layer.group_send(targets[number % len(targets)], payload)
                except Exception:
                    errors += 1  # a stock layer raises while Redis is down

        await asyncio.gather(*(work() for _ in range(concurrency)))
        finished = time.time()
        dropped = errors
        if kind == "skapi":
            from skapi_channels.runtime import runtime

            dropped = runtime.counters["dropped"]
        sent.set()
        results.put(("sender", started, finished, dropped))

    asyncio.run(main())


async def flush(url: str, prefix: str) -> None:
    """Delete the run's keys (and pub/sub has none)."""
    from redis.asyncio import Redis

    redis = Redis.from_url(url)
    async for key in redis.scan_iter(match=f"{prefix}*"):
        await redis.delete(key)
    await redis.aclose()


def private_redis() -> RedisServer:
    """A redis-server of the bench's own on a free port, to restart."""
    return RedisServer(Path(tempfile.mkdtemp(prefix="bench-redis-")))


def run(
    kind: str,
    url: str,
    scenario: Scenario,
    receivers: int,
    concurrency: int,
    capacity: int,
    restart: RedisServer | None = None,
) -> dict[str, Any]:
    context = mp.get_context("spawn")
    prefix = f"bench-{uuid.uuid4().hex[:8]}"
    ready, results = context.Queue(), context.Queue()
    go, sent = context.Event(), context.Event()
    common = (kind, url, prefix, capacity, scenario)
    procs = [
        context.Process(target=receiver, args=(*common, i, receivers, ready, go, sent, results))
        for i in range(2)
    ]
    procs.append(
        context.Process(target=sender, args=(*common, receivers, concurrency, go, sent, results))
    )
    for proc in procs:
        proc.start()
    for _ in range(2):
        ready.get(timeout=60)
    time.sleep(0.5)  # pub/sub subscriptions settle
    go.set()
    if restart is not None:
        time.sleep(scenario.messages / scenario.rate / 3)
        restart.stop()
        time.sleep(1.0)
        restart.start()
    answers = [results.get(timeout=DEADLINE + 30) for _ in range(3)]
    for proc in procs:
        proc.join(30)
        if proc.is_alive():
            proc.kill()
    if restart is None:
        asyncio.run(flush(url, prefix))
    sender_answer = next(a for a in answers if a[0] == "sender")
    started, finished, sender_dropped = sender_answer[1:]
    got = [a for a in answers if a[0] != "sender"]
    delivered = sum(a[1] for a in got)
    last = max((a[2] for a in got), default=finished)
    per_message = 2 * receivers if scenario.fanout else 1
    expected = scenario.messages * per_message
    elapsed = max(last, finished) - started
    return {
        "layer": kind,
        "scenario": scenario.name,
        "messages": scenario.messages,
        "expected": expected,
        "delivered": delivered,
        "lost": expected - delivered,
        "counted_drops": sender_dropped + sum(a[3] for a in got),
        "send_s": round(finished - started, 2),
        "elapsed_s": round(elapsed, 2),
        "deliveries_per_s": round(delivered / elapsed) if elapsed > 0 else 0,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", default="core,skapi,pubsub")
    parser.add_argument("--receivers", type=int, default=50, help="connections per process")
    parser.add_argument("--fanout-messages", type=int, default=500)
    parser.add_argument("--private-messages", type=int, default=5000)
    parser.add_argument("--burst-messages", type=int, default=12000)
    parser.add_argument("--concurrency", type=int, default=20)
    parser.add_argument("--capacity", type=int, default=5000)
    parser.add_argument("--restart-messages", type=int, default=3000)
    parser.add_argument("--restart-rate", type=float, default=500.0)
    parser.add_argument("--scenarios", default="fanout,private,burst,restart")
    args = parser.parse_args()
    url = os.environ.get("REDIS_URL")
    if not url:
        parser.error("set REDIS_URL")
    scenarios = [
        Scenario("fanout", args.fanout_messages, fanout=True, read_late=False),
        Scenario("private", args.private_messages, fanout=False, read_late=False),
        Scenario("burst", args.burst_messages, fanout=False, read_late=True),
        Scenario(
            "restart",
            args.restart_messages,
            fanout=False,
            read_late=False,
            rate=args.restart_rate,
        ),
    ]
    wanted = set(args.scenarios.split(","))
    scenarios = [scenario for scenario in scenarios if scenario.name in wanted]
    header = (
        f"{'layer':7} {'scenario':8} {'msgs':>6} {'expected':>9} {'delivered':>9} "
        f"{'lost':>6} {'counted':>7} {'send s':>7} {'total s':>7} {'deliv/s':>8}"
    )
    print(header, flush=True)
    for scenario in scenarios:
        for kind in args.layers.split(","):
            restart = None
            if scenario.name == "restart":
                if shutil.which("redis-server") is None:
                    print("restart: skipped, no redis-server to start", flush=True)
                    break
                restart = private_redis()
                restart.start()
            try:
                r = run(
                    kind,
                    restart.url if restart else url,
                    scenario,
                    args.receivers,
                    args.concurrency,
                    args.capacity,
                    restart,
                )
            finally:
                if restart is not None:
                    restart.stop()
            print(
                f"{r['layer']:7} {r['scenario']:8} {r['messages']:>6} {r['expected']:>9} "
                f"{r['delivered']:>9} {r['lost']:>6} {r['counted_drops']:>7} "
                f"{r['send_s']:>7} {r['elapsed_s']:>7} {r['deliveries_per_s']:>8}",
                flush=True,
            )


if __name__ == "__main__":
    main()
