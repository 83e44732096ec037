"""The scale-out set-up against the embedded default: ``bench/run.py`` several times,
the runs interleaved, medians reported.

    .venv/bin/python bench/scaleout.py            # 3 rounds (about 10 minutes)
    .venv/bin/python bench/scaleout.py --rounds 1

Each round runs, one after the other on fresh servers:

- fan-out, N = 200 receivers and 8 senders (10 messages in flight each): embedded
  and Redis + PostgreSQL on one process;
- private messages, 20 pairs with 2 in flight each (a load where the embedded p50
  stays under 100 ms), and 50 pairs with 5 in flight (the suite's default);
- fan-out, N = 500, 1 sender: embedded, one process and two processes on Redis +
  PostgreSQL (receivers spread over both), with each process's CPU seconds per
  1,000 deliveries it made.

Writes ``scaleout.md`` and ``scaleout.json`` into ``bench/results/`` (or ``--out``)
and prints the table.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench.suite import run_suite  # noqa: E402

EMB, RED, TWO = "app/embedded/daphne", "app/redis+pg/daphne", "app/redis+pg/daphne-x2"

RUNS: dict[str, list[str]] = {
    "fanout200x8": ["--scenario", "fanout", "--n", "200", "--senders", "8",
                    "--target", EMB, "--target", RED],
    "private20x2": ["--scenario", "private", "--pairs", "20", "--private-window", "2",
                    "--target", EMB, "--target", RED],
    "private50x5": ["--scenario", "private", "--pairs", "50", "--private-window", "5",
                    "--target", EMB, "--target", RED],
    "fanout500": ["--scenario", "fanout", "--n", "500", "--target", EMB, "--target", RED,
                  "--target", TWO],
}  # fmt: skip


def figures(name: str, data: dict[str, Any]) -> dict[str, Any]:
    res = data["results"]
    out: dict[str, Any] = {}
    for target in (EMB, RED, TWO):
        r = res.get(target) or {}
        if name.startswith("fanout"):
            rows = r.get("fanout") or []
            if rows:
                out[target] = {
                    "deliveries_per_s": rows[0]["deliveries_per_s"],
                    "p50_ms": rows[0]["p50_ms"],
                    "lost": rows[0]["lost"],
                    "cpu_s_per_1000": rows[0].get("cpu_s_per_1000"),
                }
        elif r.get("private"):
            p = r["private"]
            out[target] = {
                "msgs_per_s": p["deliveries_per_s"],
                "p50_ms": p["p50_ms"],
                "p99_ms": p["p99_ms"],
                "lost": p["lost"],
            }
    return out


def median(values: list[Any]) -> Any:
    values = [v for v in values if v is not None]
    return round(statistics.median(values), 4) if values else None


def combine(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """Per run and target, the median of each figure over the rounds."""
    out: dict[str, Any] = {}
    for name in RUNS:
        for target in (EMB, RED, TWO):
            got = [r[name][target] for r in rounds if target in r.get(name, {})]
            if not got:
                continue
            row: dict[str, Any] = {"rounds": len(got)}
            for key in got[0]:
                if key == "cpu_s_per_1000":
                    per_process = [g[key] or [] for g in got]
                    row[key] = [
                        median([p[i] if i < len(p) else None for p in per_process])
                        for i in range(max(len(p) for p in per_process))
                    ]
                elif key == "lost":
                    row[key] = sum(g[key] for g in got)
                else:
                    row[key] = median([g[key] for g in got])
            out.setdefault(name, {})[target] = row
    return out


def ratio(a: Any, b: Any) -> float | None:
    return round(a / b, 2) if a and b else None


def report(med: dict[str, Any], meta: dict[str, Any]) -> tuple[str, list[dict[str, Any]]]:
    f, p1, p2, w = (med.get(k, {}) for k in ("fanout200x8", "private20x2", "private50x5", "fanout500"))
    g = lambda d, t, k: (d.get(t) or {}).get(k)  # noqa: E731
    lines = [
        "# Scale-out layer against the embedded default",
        "",
        f"Written by `bench/scaleout.py`, {meta['started']} UTC, {meta['rounds']} round(s)"
        f" ({meta['duration_s']:.0f} s); medians over the rounds. Machine: 2 cores shared"
        f" with other work (load average {meta['load_start']} at the start,"
        f" {meta['load_end']} at the end). Servers: daphne; embedded = SQLite +"
        " `LocalChannelLayer`; Redis+PG = PostgreSQL + `RedisFanoutLayer`.",
        "",
        "| path | fan-out deliveries/s (200 receivers, 8 senders) | private msgs/s"
        " (50 pairs × 5) | private p50 ms | private msgs/s (20 pairs × 2) | p50 ms |",
        "|---|---|---|---|---|---|",
    ]
    for target, label in ((EMB, "embedded (SQLite)"), (RED, "Redis + PostgreSQL")):
        lines.append(
            f"| {label} | {g(f, target, 'deliveries_per_s')} | {g(p2, target, 'msgs_per_s')} | "
            f"{g(p2, target, 'p50_ms')} | {g(p1, target, 'msgs_per_s')} | "
            f"{g(p1, target, 'p50_ms')} |"
        )
    lines += [
        "",
        "| fan-out N = 500, 1 sender | deliveries/s | p50 ms | CPU s / 1,000 deliveries"
        " (per process) | lost |",
        "|---|---|---|---|---|",
    ]
    for target in (EMB, RED, TWO):
        if target in w:
            lines.append(
                f"| {target} | {g(w, target, 'deliveries_per_s')} | {g(w, target, 'p50_ms')} | "
                f"{', '.join(str(c) for c in g(w, target, 'cpu_s_per_1000') or [])} | "
                f"{g(w, target, 'lost')} |"
            )
    targets: list[dict[str, Any]] = []

    def add(name: str, value: Any, goal: str, met: bool | None) -> None:
        targets.append({"name": name, "measured": value, "goal": goal, "met": met})

    r = ratio(g(f, RED, "deliveries_per_s"), g(f, EMB, "deliveries_per_s"))
    add("fan-out (200 × 8): Redis+PG × embedded", r, "≥ 0.8", None if r is None else r >= 0.8)
    for label, d in (("20 pairs × 2", p1), ("50 pairs × 5", p2)):
        r = ratio(g(d, RED, "msgs_per_s"), g(d, EMB, "msgs_per_s"))
        add(f"private ({label}): Redis+PG × embedded", r, "≥ 0.7", None if r is None else r >= 0.7)
        emb_p50, red_p50 = g(d, EMB, "p50_ms"), g(d, RED, "p50_ms")
        if emb_p50 is not None and red_p50 is not None:
            add(
                f"private ({label}) p50 ms on Redis+PG (embedded {emb_p50})",
                red_p50,
                "< 100 where embedded < 100",
                None if emb_p50 >= 100 else red_p50 < 100,
            )
    r = ratio(g(w, TWO, "deliveries_per_s"), g(w, RED, "deliveries_per_s"))
    add("fan-out N=500: 2 processes × 1 process", r, "≥ 0.9", None if r is None else r >= 0.9)
    base = (g(w, EMB, "cpu_s_per_1000") or [None])[0]
    for target in (RED, TWO):
        cpus = [c for c in g(w, target, "cpu_s_per_1000") or [] if c is not None]
        r = ratio(max(cpus), base) if cpus else None
        add(
            f"fan-out N=500: CPU s / 1,000 deliveries, {target} worst process × embedded",
            r,
            "≤ 1.25",
            None if r is None else r <= 1.25,
        )
    lines += ["", "| target | measured | goal | met |", "|---|---|---|---|"]
    for t in targets:
        met = "–" if t["met"] is None else ("yes" if t["met"] else "no")
        lines.append(f"| {t['name']} | {t['measured']} | {t['goal']} | {met} |")
    return "\n".join(lines) + "\n", targets


def paired(rounds: list[dict[str, Any]]) -> str:
    """The ratios of each round (the two set-ups measured minutes apart, under the
    same load on the machine), and their median: steadier than a ratio of medians
    when the machine's load changes between rounds."""

    def per_round(name: str, a: str, b: str, key: str) -> list[float | None]:
        out = []
        for r in rounds:
            x, y = (r.get(name) or {}).get(a) or {}, (r.get(name) or {}).get(b) or {}
            out.append(ratio(x.get(key), y.get(key)))
        return out

    def cpu(name: str, a: str) -> list[float | None]:
        out = []
        for r in rounds:
            x, y = (r.get(name) or {}).get(a) or {}, (r.get(name) or {}).get(EMB) or {}
            mine = [c for c in x.get("cpu_s_per_1000") or [] if c is not None]
            base = (y.get("cpu_s_per_1000") or [None])[0]
            out.append(ratio(max(mine), base) if mine else None)
        return out

    rows = [
        ("fan-out (200 × 8): Redis+PG × embedded", per_round("fanout200x8", RED, EMB, "deliveries_per_s"), "≥ 0.8"),
        ("private (20 pairs × 2): Redis+PG × embedded", per_round("private20x2", RED, EMB, "msgs_per_s"), "≥ 0.7"),
        ("private (50 pairs × 5): Redis+PG × embedded", per_round("private50x5", RED, EMB, "msgs_per_s"), "≥ 0.7"),
        ("fan-out N=500: 2 processes × 1 process", per_round("fanout500", TWO, RED, "deliveries_per_s"), "≥ 0.9"),
        ("fan-out N=500: CPU s / 1,000, Redis+PG worst process × embedded", cpu("fanout500", RED), "≤ 1.25"),
        ("fan-out N=500: CPU s / 1,000, 2 processes, worst × embedded", cpu("fanout500", TWO), "≤ 1.25"),
    ]  # fmt: skip
    lines = [
        "",
        "Ratios within each round (same minutes, same load), and their median:",
        "",
        "| ratio | per round | median | goal |",
        "|---|---|---|---|",
    ]
    for label, values, goal in rows:
        lines.append(
            f"| {label} | {', '.join('–' if v is None else str(v) for v in values)} | "
            f"{median(values)} | {goal} |"
        )
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--runs", default=",".join(RUNS), help="which runs (comma-separated)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    parser.add_argument("--report", type=Path, help="only write the report of this scaleout.json")
    args = parser.parse_args()
    if args.report:
        data = json.loads(args.report.read_text())
        text, _ = report(data["medians"], data["meta"])
        text += paired(data["rounds"])
        print(text)
        (args.out / "scaleout.md").write_text(text)
        return 0
    work = Path(os.environ.get("SKAPI_BENCH_WORK", tempfile.mkdtemp(prefix="scaleout-")))
    started = time.time()
    meta: dict[str, Any] = {
        "started": time.strftime("%Y-%m-%dT%H:%M", time.gmtime(started)),
        "rounds": args.rounds,
        "load_start": [round(x, 2) for x in os.getloadavg()],
    }
    rounds: list[dict[str, Any]] = []
    for number in range(args.rounds):
        got: dict[str, Any] = {}
        for name in args.runs.split(","):
            print(f"round {number + 1}: {name} ...", file=sys.stderr, flush=True)
            try:
                got[name] = figures(name, run_suite(RUNS[name], work / f"r{number}" / name))
            except (OSError, ValueError, subprocess.SubprocessError) as error:
                print(f"  failed: {error}", file=sys.stderr)
            print(f"  {json.dumps(got.get(name))}", file=sys.stderr, flush=True)
        rounds.append(got)
    meta["duration_s"] = time.time() - started
    meta["load_end"] = [round(x, 2) for x in os.getloadavg()]
    med = combine(rounds)
    text, targets = report(med, meta)
    text += paired(rounds)
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "scaleout.md").write_text(text)
    (args.out / "scaleout.json").write_text(
        json.dumps({"meta": meta, "rounds": rounds, "medians": med, "targets": targets}, indent=1)
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
