"""What refusing costs, and how fast the server closes what it must close, on a real
daphne process (the embedded default: SQLite and the in-process layer).

    .venv/bin/python bench/refusals.py [--seconds 10] [--out bench/results/refusals.json]

Scenarios:

- ``id_scan``: the CPU the consumer spends finding the id of a frame it refuses
  before parsing it (in this process).
- ``keepalive``: another user's keepAlive round trip (one in flight, every 60 ms),
  alone and while four sockets send 1 MiB frames of ``[`` as fast as they can
  (each refused as too large, then rate-limited); also a listing request's time.
- ``flood_close``: a socket sending 150 keepAlives a second until the server
  closes it (4008): how long that takes and how many frames were answered.
- ``revocation``: a logout made through the site (in-process) and a deactivation
  written straight into the database by another process: how long until the
  user's socket is closed (4001).

Every socket logs in through the login form (a session cookie), so the script runs
against older versions of the app too. Servers are started and stopped here.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sqlite3
import statistics
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from websockets.asyncio.client import connect  # noqa: E402
from websockets.exceptions import ConnectionClosed  # noqa: E402

from tests.live_http import Browser  # noqa: E402
from tests.live_server import Server  # noqa: E402

WORK = Path(os.environ.get("SKAPI_BENCH_WORK", "/tmp/skapi_bench"))
NESTED = "[" * (1024 * 1024)


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def summary(values: list[float]) -> dict[str, Any]:
    if not values:
        return {"count": 0}
    return {
        "count": len(values),
        "median_ms": round(statistics.median(values) * 1000, 2),
        "p95_ms": round(percentile(values, 0.95) * 1000, 2),
        "max_ms": round(max(values) * 1000, 2),
    }


def ws_uri(server: Server) -> str:
    return f"ws://127.0.0.1:{server.port}/ws/realtime/"


def cookie(session_key: str) -> dict[str, str]:
    return {"Cookie": f"sessionid={session_key}", "Origin": "http://127.0.0.1"}


async def drain(socket: Any) -> None:
    with contextlib.suppress(ConnectionClosed):
        async for _ in socket:
            pass


async def flooder(server: Server, session_key: str, stop: asyncio.Event, sent: list[int]) -> None:
    """Send 1 MiB nested frames as fast as the socket takes them; reconnect if closed."""
    while not stop.is_set():
        try:
            async with connect(
                ws_uri(server), additional_headers=cookie(session_key), max_size=None,
                compression=None, write_limit=2**20,
            ) as socket:
                reader = asyncio.create_task(drain(socket))
                while not stop.is_set() and not reader.done():
                    await socket.send(NESTED)
                    sent[0] += 1
                reader.cancel()
        except (ConnectionClosed, OSError):
            await asyncio.sleep(0.05)


async def keepalive_rtts(server: Server, session_key: str, seconds: float) -> list[float]:
    rtts: list[float] = []
    async with connect(ws_uri(server), additional_headers=cookie(session_key)) as socket:
        deadline = time.monotonic() + seconds
        number = 0
        while time.monotonic() < deadline:
            number += 1
            started = time.monotonic()
            await socket.send(json.dumps({"action": "keepAlive", "id": number}))
            while True:  # its ack (or, should it come to that, its error)
                answer = json.loads(await socket.recv())
                if answer.get("#ack", answer.get("#id")) == number:
                    break
            rtts.append(time.monotonic() - started)
            await asyncio.sleep(0.06)  # under the sustained rate of 20 a second
    return rtts


def listing_time(browser: Browser) -> float:
    request = urllib.request.Request(
        browser.server.url + "/realtime/groups/",
        data=b"{}",
        headers={"Content-Type": "application/json", "X-CSRFToken": browser.cookie("csrftoken"),
                 "Referer": browser.server.url + "/"},
    )
    started = time.monotonic()
    with browser.opener.open(request, timeout=30) as response:
        response.read()
    return time.monotonic() - started


async def listing_times(browser: Browser, seconds: float) -> list[float]:
    times: list[float] = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        times.append(await asyncio.to_thread(listing_time, browser))
        await asyncio.sleep(0.25)
    return times


async def keepalive(server: Server, seconds: float) -> dict[str, Any]:
    alice, bob = Browser(server), Browser(server)
    alice_key = await asyncio.to_thread(alice.log_in, "alice")
    bob_key = await asyncio.to_thread(bob.log_in, "bob")
    alone = await keepalive_rtts(server, bob_key, seconds / 2)
    stop, sent = asyncio.Event(), [0]
    floods = [asyncio.create_task(flooder(server, alice_key, stop, sent)) for _ in range(4)]
    await asyncio.sleep(1)  # the flood under way
    started = time.monotonic()
    flooded, listings = await asyncio.gather(
        keepalive_rtts(server, bob_key, seconds), listing_times(bob, seconds)
    )
    elapsed = time.monotonic() - started + 1
    stop.set()
    for task in floods:
        task.cancel()
    await asyncio.gather(*floods, return_exceptions=True)
    return {
        "keepalive_alone": summary(alone),
        "keepalive_under_flood": summary(flooded),
        "listing_under_flood": summary(listings),
        "flood_frames_sent": sent[0],
        "flood_frames_per_second": round(sent[0] / elapsed, 1),
    }


async def flood_close(server: Server, limit: float = 30) -> dict[str, Any]:
    key = await asyncio.to_thread(Browser(server).log_in, "alice")
    answered = 0
    sent = 0
    async with connect(ws_uri(server), additional_headers=cookie(key)) as socket:

        async def count() -> None:
            nonlocal answered
            with contextlib.suppress(ConnectionClosed):
                async for _ in socket:
                    answered += 1

        reader = asyncio.create_task(count())
        started = time.monotonic()
        while not reader.done() and time.monotonic() - started < limit:
            while sent < (time.monotonic() - started) * 150:
                with contextlib.suppress(ConnectionClosed):
                    await socket.send(json.dumps({"action": "keepAlive", "id": sent}))
                sent += 1
            await asyncio.sleep(1 / 150)
        took = time.monotonic() - started
        reader.cancel()
        await asyncio.gather(reader, return_exceptions=True)
        code = socket.close_code
    return {
        "close_code": code,
        "seconds_to_close": round(took, 2) if code == 4008 else None,
        "frames_sent": sent,
        "frames_answered": answered,
    }


async def time_to_close(socket: Any, limit: float) -> float | None:
    started = time.monotonic()
    with contextlib.suppress(ConnectionClosed, TimeoutError):
        async with asyncio.timeout(limit):
            async for _ in socket:
                pass
    if socket.close_code != 4001:
        return None
    return round(time.monotonic() - started, 3)


async def revocation(server: Server) -> dict[str, Any]:
    browser = Browser(server)
    key = await asyncio.to_thread(browser.log_in, "alice")
    async with connect(ws_uri(server), additional_headers=cookie(key)) as socket:
        await socket.send('{"action": "keepAlive", "id": 1}')
        await socket.recv()
        started = time.monotonic()
        await asyncio.to_thread(browser.log_out)
        closing = await time_to_close(socket, 10)
        logout = None if closing is None else round(time.monotonic() - started, 3)
    key = await asyncio.to_thread(Browser(server).log_in, "bob")
    async with connect(ws_uri(server), additional_headers=cookie(key)) as socket:
        await socket.send('{"action": "keepAlive", "id": 1}')
        await socket.recv()
        started = time.monotonic()
        with sqlite3.connect(server.workdir / "db.sqlite3") as db:
            db.execute("UPDATE auth_user SET is_active = 0 WHERE username = 'bob'")
        closing = await time_to_close(socket, 40)
        elsewhere = None if closing is None else round(time.monotonic() - started, 3)
    return {"logout_in_a_server_process_s": logout, "deactivated_by_another_process_s": elsewhere}


def id_scan() -> dict[str, Any]:
    """Milliseconds of CPU ``protocol.id_of_unparsed`` takes on frames it refuses
    (in this process, no server)."""
    from skapi_channels.protocol import id_of_unparsed

    cases = {
        "1 MiB of [": "[" * 1_048_576,
        '1 MiB {"content": [[[...': '{"content": ' + "[" * 1_048_564,
        "40 KiB object, id last": '{"action":"broadcast","rid":"R","content":"'
        + "x" * 40_000
        + '","id":9}',
    }
    results: dict[str, Any] = {}
    for name, text in cases.items():
        started, runs = time.perf_counter(), 0
        while runs < 3 or time.perf_counter() - started < 0.5:
            found = id_of_unparsed(text)
            runs += 1
        took = (time.perf_counter() - started) / runs
        results[name] = {"ms": round(took * 1000, 3), "id": found, "runs": runs}
    return results


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--scenario", action="append", default=None)
    args = parser.parse_args()
    scenarios = args.scenario or ["id_scan", "keepalive", "flood_close", "revocation"]
    results: dict[str, Any] = {"load_average_start": os.getloadavg()}
    if "id_scan" in scenarios:
        scenarios.remove("id_scan")
        os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")
        results["id_scan"] = id_scan()
        print("id_scan", json.dumps(results["id_scan"]), flush=True)
    for name in scenarios:
        workdir = WORK / f"refusals-{name}"
        workdir.mkdir(parents=True, exist_ok=True)
        for stale in workdir.glob("db.sqlite3*"):
            stale.unlink()
        server = Server(workdir)
        server.prepare()
        server.start()
        try:
            if name == "keepalive":
                results[name] = await keepalive(server, args.seconds)
            elif name == "flood_close":
                results[name] = await flood_close(server)
            else:
                results[name] = await revocation(server)
        finally:
            server.stop()
        print(name, json.dumps(results[name]), flush=True)
    results["load_average_end"] = os.getloadavg()
    if args.out:
        args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    asyncio.run(main())
