"""What keeping history costs (docs/protocol.md section 11): fan-out and private
throughput with history on (the default, 100 messages per stream) against history
off (``HISTORY_SIZE`` 0), in one run, the two interleaved; and the memory a kept
message takes.

    .venv/bin/python bench/history.py              # 3 rounds, embedded
    .venv/bin/python bench/history.py --redis      # also Redis + PostgreSQL

Each round runs ``bench/run.py`` on fresh servers for: fan-out to 200 receivers
from 4 senders (10 in flight each), and private messages between 50 pairs (5 in
flight each); on and off one after the other, in alternating order (embedded
first, then Redis). Medians over
the rounds. Memory: the embedded layer's kept messages measured with tracemalloc
in this process, and Redis's ``used_memory`` before and after filling streams.

Writes ``history.md`` and ``history.json`` into ``bench/results/`` (or ``--out``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench.suite import run_suite  # noqa: E402

EMB, RED = "app/embedded/daphne", "app/redis+pg/daphne"
OFF = "+nohistory"
FRAME = (
    '{"#message":{"text":"a chat line of about sixty characters, typical of a room"},'
    '"#user_id":"1234","#scid":"Xq3vJ8pQ2mL0aB7cD9eF1g","#srid":"HelloWorld"}'
)


def throughput(results: dict[str, Any], target: str, scenario: str) -> float | None:
    r = results.get(target) or {}
    if scenario == "fanout":
        rows = r.get("fanout") or []
        return rows[0]["deliveries_per_s"] if rows else None
    return (r.get("private") or {}).get("deliveries_per_s")


SCENARIOS = (
    ("fanout", ["--n", "200", "--senders", "4"]),
    ("private", ["--pairs", "50", "--private-window", "5"]),
)


def rounds(count: int, bases: list[str], work: Path) -> dict[str, dict[str, list[float]]]:
    """Throughput per scenario and target, one value a round; embedded first, and
    what is measured so far kept in ``partial.json``."""
    seen: dict[str, dict[str, list[float]]] = {}
    for number in range(count):
        for base in bases:
            for scenario, extra in SCENARIOS:
                order = [base, base + OFF] if number % 2 == 0 else [base + OFF, base]
                for target in order:
                    print(f"round {number + 1}: {scenario} {target}", file=sys.stderr, flush=True)
                    out = work / f"r{number}-{scenario}-{target.replace('/', '_')}"
                    got = run_suite(["--scenario", scenario, *extra, "--target", target], out)["results"]
                    value = throughput(got, target, scenario)
                    print(f"  {value}", file=sys.stderr, flush=True)
                    if value is not None:
                        seen.setdefault(scenario, {}).setdefault(target, []).append(value)
                    (work / "partial.json").write_text(json.dumps(seen))
    return seen


def embedded_memory(streams: int = 200, size: int = 100) -> dict[str, float]:
    """Bytes per kept message in the in-process layer (a full stream of ``size``)."""
    import django

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")
    django.setup()
    from skapi_channels.local_layer import LocalChannelLayer

    layer = LocalChannelLayer()

    async def fill() -> None:
        for stream in range(streams):
            for n in range(size):
                # A distinct text per message, as a real one (the frame is built per send).
                text = FRAME.replace("HelloWorld", f"room-{stream}-{n:04d}"[:10])
                await layer.group_send(f"g{stream}", {"type": "skapi.frame", "text": text, "keep": True})

    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    asyncio.run(fill())
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    kept = layer.history_stats()["messages"]
    return {
        "messages": kept,
        "frame_chars": len(FRAME),
        "bytes_per_message": round((after - before) / kept, 1),
    }


def redis_memory(url: str = "redis://127.0.0.1:6379/5", streams: int = 200, size: int = 100) -> Any:
    """Bytes per kept message in Redis: ``MEMORY USAGE`` of the streams' history
    lists (this run's keys only; the server may be shared)."""
    import django

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")
    django.setup()
    from redis import Redis

    from skapi_channels.redis_fanout import RedisFanoutLayer

    prefix = f"histbench{os.getpid()}"
    try:
        client = Redis.from_url(url)
        client.ping()
    except Exception as error:  # noqa: BLE001 - any failure means "not measured"
        return f"not measured: {error}"
    layer = RedisFanoutLayer(hosts=[url], prefix=prefix)

    async def fill() -> None:
        for stream in range(streams):
            for n in range(size):
                text = FRAME.replace("HelloWorld", f"room-{stream}-{n:04d}"[:10])
                await layer.group_send(f"g{stream}", {"type": "skapi.frame", "text": text, "keep": True})
        await layer.close()

    asyncio.run(fill())
    used = 0
    keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
    for key in keys:
        if key.endswith(b"#h"):
            used += int(client.memory_usage(key, samples=0) or 0)
    for key in keys:
        client.delete(key)
    client.close()
    return {"messages": streams * size, "bytes_per_message": round(used / (streams * size), 1)}


def median(values: list[float]) -> float | None:
    return round(statistics.median(values), 1) if values else None


def report(seen: dict[str, Any], memory: dict[str, Any], meta: dict[str, Any], bases: list[str]) -> str:
    lines = [
        "# History on against history off",
        "",
        f"Written by `bench/history.py`, {meta['started']} UTC, {meta['rounds']} round(s),"
        f" {meta['duration_s']:.0f} s; medians over the rounds, on and off interleaved."
        " Machine: 2 cores shared with other work (load average"
        f" {meta['load_start']} at the start, {meta['load_end']} at the end).",
        "",
        "| path | scenario | history on | history off | cost |",
        "|---|---|---|---|---|",
    ]
    for base in bases:
        for scenario, label in (
            ("fanout", "fan-out deliveries/s (200 receivers, 4 senders)"),
            ("private", "private msgs/s (50 pairs × 5)"),
        ):
            on = median(seen.get(scenario, {}).get(base, []))
            off = median(seen.get(scenario, {}).get(base + OFF, []))
            cost = f"{(1 - on / off) * 100:.1f} %" if on and off else "–"
            lines.append(f"| {base} | {label} | {on} | {off} | {cost} |")
    lines += ["", "Memory per kept message (a frame of "
              f"{memory['embedded']['frame_chars']} characters):", ""]
    lines.append(f"- embedded layer (tracemalloc): {memory['embedded']['bytes_per_message']} bytes")
    if "redis" in memory:
        r = memory["redis"]
        lines.append(
            "- Redis (used_memory): "
            + (f"{r['bytes_per_message']} bytes" if isinstance(r, dict) else str(r))
        )
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--redis", action="store_true", help="also Redis + PostgreSQL")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args()
    work = Path(os.environ.get("SKAPI_BENCH_WORK", tempfile.mkdtemp(prefix="history-")))
    bases = [EMB, RED] if args.redis else [EMB]
    started = time.time()
    meta: dict[str, Any] = {
        "started": time.strftime("%Y-%m-%dT%H:%M", time.gmtime(started)),
        "rounds": args.rounds,
        "load_start": [round(x, 2) for x in os.getloadavg()],
    }
    seen = rounds(args.rounds, bases, work)
    memory: dict[str, Any] = {"embedded": embedded_memory()}
    if args.redis:
        memory["redis"] = redis_memory()
    meta["duration_s"] = time.time() - started
    meta["load_end"] = [round(x, 2) for x in os.getloadavg()]
    text = report(seen, memory, meta, bases)
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "history.md").write_text(text)
    (args.out / "history.json").write_text(
        json.dumps({"meta": meta, "throughput": seen, "memory": memory}, indent=1)
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
