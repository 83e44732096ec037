"""Run the benchmark suite: skapi_channels against a bare Channels consumer and a
server written on the ``websockets`` library, in one run, on real server processes.

    .venv/bin/python bench/run.py            # the full suite (bounded by --budget, 35 minutes)
    .venv/bin/python bench/run.py --quick    # a smoke run (under 3 minutes)
    .venv/bin/python bench/run.py --scenario fanout --target app/embedded/daphne

Writes a table on stdout, and ``latest.json``, ``latest.png`` and ``README.md`` into
``bench/results/`` (or ``--out``). Every server and load-generator process is
started here, bounded in time, and stopped before the run ends.

Targets (servers): ``app/...`` is this project's ASGI application as
``project/settings.py`` configures it (embedded: SQLite and the layer the settings
select without REDIS_URL; redis+pg: PostgreSQL database ``skapi_bench`` and Redis
db 5), ``bare/...`` is ``baselines/bare_channels.py``, ``websockets`` is
``baselines/websockets_server.py``. Targets on Redis or PostgreSQL are skipped when
those are not reachable on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import platform
import resource
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
WORK = Path(os.environ.get("SKAPI_BENCH_WORK", "/tmp/skapi_bench"))
PY = sys.executable
PG_URL = "postgres://postgres@127.0.0.1:5432/skapi_bench"
REDIS_URL = "redis://127.0.0.1:6379/5"
# Benchmarks send far more than a browser would: lift the per-connection limits.
APP_OVERRIDES = {
    "RATE_PER_SECOND": 1_000_000,
    "RATE_BURST": 1_000_000,
    "MAX_CONNECTIONS_PER_USER": 100_000,
    "TOKEN_MAX_AGE": 86_400,
    "HANDSHAKES_PER_MINUTE": 1_000_000,
    "GROUPS_CREATED_PER_MINUTE": 1_000_000,
}
DAPHNE_BACKLOG = int(os.environ.get("SKAPI_BENCH_DAPHNE_BACKLOG", 2048))
SCENARIOS = ("fanout", "private", "churn", "listing", "memory", "storm", "paced", "reap")
APP_TARGETS = ("app/embedded/daphne", "app/redis+pg/daphne", "app/redis+pg/daphne-x2")

# name: kind (app or bare protocol), backend, server, processes, baseline counterpart
TARGETS: dict[str, dict[str, Any]] = {
    "app/embedded/daphne": dict(
        kind="app", backend="embedded", server="daphne", procs=1, bare="bare/inmemory/daphne"
    ),
    "app/redis+pg/daphne": dict(
        kind="app", backend="redis+pg", server="daphne", procs=1, bare="bare/redis/daphne"
    ),
    "app/redis+pg/daphne-x2": dict(
        kind="app", backend="redis+pg", server="daphne", procs=2, bare="bare/redis/daphne-x2"
    ),
    "app/embedded/uvicorn": dict(
        kind="app", backend="embedded", server="uvicorn", procs=1, bare="bare/inmemory/uvicorn"
    ),
    "bare/inmemory/daphne": dict(kind="bare", backend="inmemory", server="daphne", procs=1),
    "bare/redis/daphne": dict(kind="bare", backend="redis", server="daphne", procs=1),
    "bare/redis/daphne-x2": dict(kind="bare", backend="redis", server="daphne", procs=2),
    "bare/inmemory/uvicorn": dict(kind="bare", backend="inmemory", server="uvicorn", procs=1),
    "websockets": dict(kind="bare", backend="none", server="websockets", procs=1),
}
QUICK_TARGETS = ("app/embedded/daphne", "bare/inmemory/daphne", "websockets")
DEFAULT_TARGETS = tuple(TARGETS)
# The app with history off (docs/protocol.md section 11), for bench/history.py's
# comparison in one run; not part of the default run.
TARGETS.update(
    {
        f"{name}+nohistory": {**TARGETS[name], "overrides": {"HISTORY_SIZE": 0}}
        for name in ("app/embedded/daphne", "app/redis+pg/daphne")
    }
)
# The scale-out set-up under uvicorn, for the storm (not part of the default run).
TARGETS["app/redis+pg/uvicorn"] = dict(kind="app", backend="redis+pg", server="uvicorn", procs=1)
# Which targets run which scenario (listing is the app's alone; memory on one process).
SCENARIO_TARGETS = {
    "fanout": tuple(TARGETS),
    "private": tuple(TARGETS),
    "churn": tuple(TARGETS),
    "listing": ("app/embedded/daphne", "app/redis+pg/daphne"),
    "memory": tuple(name for name, t in TARGETS.items() if t["procs"] == 1),
    # Presence under a reconnect storm and under paced churn: the app's alone (the
    # storm also under uvicorn, whose handshakes cost less CPU than daphne's).
    "storm": (*APP_TARGETS, "app/embedded/uvicorn", "app/redis+pg/uvicorn"),
    "paced": ("app/embedded/daphne", "app/redis+pg/daphne"),
    "reap": ("app/redis+pg/daphne-x2",),
}
# The reap scenario's timers (seconds): a dead process is reaped within
# DEAD_AFTER + REAP_INTERVAL (+20 % jitter) of its last heartbeat.
REAP_TIMERS = {"HEARTBEAT_INTERVAL": 1.0, "DEAD_AFTER": 3.0, "REAP_INTERVAL": 1.0}


def plan(p: dict[str, Any], scenarios: list[str], names: list[str]) -> list[tuple[str, str, Any]]:
    """(scenario, target, N) in the order they run: the pairs the issue's targets
    compare first, the slow set-ups (N = 1000, notices growing as N squared) last,
    so that a time budget cuts the least useful part."""
    items: list[tuple[str, str, Any]] = []
    primary = {"app/embedded/daphne", "bare/inmemory/daphne", "websockets"}
    ns = p["fanout_n"]

    def fan(n: int, where: Any) -> None:
        if "fanout" in scenarios:
            items.extend(("fanout", name, n) for name in names if where(name, n))

    fan(ns[0], lambda name, n: True)
    for n in ns[1:]:
        fan(n, lambda name, n: name in primary and n <= 500)

    def rest(*chosen: str) -> None:
        for scenario in chosen:
            if scenario in scenarios:
                items.extend(
                    (scenario, name, None) for name in names if name in SCENARIO_TARGETS[scenario]
                )

    rest("private", "memory")
    for n in ns[1:]:
        fan(n, lambda name, n: name not in primary and n <= 500 and TARGETS[name]["procs"] == 1)
    rest("churn", "listing", "storm", "paced", "reap")
    for n in ns[1:]:
        fan(n, lambda name, n: name in primary and n > 500)
    return items


def params(quick: bool, n: list[int] | None, args: Any = None) -> dict[str, Any]:
    p = _params(quick, n)
    p["senders"] = getattr(args, "senders", None) or 1
    p["private_window"] = getattr(args, "private_window", None) or 5
    if getattr(args, "storm_in_flight", None):
        p["storm"]["in_flight"] = args.storm_in_flight
    if getattr(args, "pairs", None):
        p["private"]["pairs"] = args.pairs
    return p


def _params(quick: bool, n: list[int] | None) -> dict[str, Any]:
    if quick:
        return {
            "fanout_n": n or [100],
            "fanout_deliveries": 10_000,
            "private": {"pairs": 10, "messages": 100},
            "churn": {"clients": 10, "groups": 5, "seconds": 2},
            "listing_groups": [10_000],
            "listing_repeats": 5,
            "memory": 200,
            "storm": {"clients": 200, "groups": 20},
            "paced": {"clients": 20, "groups": 5, "rate": 100, "seconds": 3},
            "reap": {"clients": 200, "groups": 20},
        }
    return {
        "fanout_n": n or [100, 500, 1000],
        "fanout_deliveries": 20_000,
        "private": {"pairs": 50, "messages": 100},
        "churn": {"clients": 50, "groups": 10, "seconds": 4},
        "listing_groups": [10_000, 100_000],
        "listing_repeats": 20,
        "memory": 2000,
        "storm": {"clients": 2000, "groups": 100},
        "paced": {"clients": 50, "groups": 10, "rate": 100, "seconds": 10},
        "reap": {"clients": 2000, "groups": 100},
    }


# Processes.

_processes: list[subprocess.Popen[bytes]] = []


def _raise_nofile() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _stop(process: subprocess.Popen[bytes], grace: float = 15) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(grace)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)
    if process in _processes:
        _processes.remove(process)


@atexit.register
def _stop_all() -> None:
    for process in list(_processes):
        _stop(process, 5)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def reachable(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


def base_env() -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k
        not in (
            "DATABASE_URL",
            "REDIS_URL",
            "SQLITE_PATH",
            "DJANGO_SETTINGS_MODULE",
            "CHANNEL_LAYER_PREFIX",
            "CHANNEL_LAYER_BACKEND",
            "PYTEST_CURRENT_TEST",
        )
    }
    env.update(
        PYTHONPATH=str(ROOT),
        DJANGO_DEBUG="0",
        PYTHONUNBUFFERED="1",
        SKAPI_CHANNELS_JSON=json.dumps(APP_OVERRIDES),
    )
    return env


def app_env(backend: str) -> dict[str, str]:
    env = base_env()
    env["DJANGO_SETTINGS_MODULE"] = "project.settings"
    if backend == "embedded":
        env["SQLITE_PATH"] = str(WORK / "embedded.sqlite3")
    else:
        env.update(DATABASE_URL=PG_URL, REDIS_URL=REDIS_URL, CHANNEL_LAYER_PREFIX="skapibench")
    return env


def bare_env(backend: str) -> dict[str, str]:
    env = base_env()
    env["DJANGO_SETTINGS_MODULE"] = "bench.baselines.bare_settings"
    if backend == "redis":
        env.update(REDIS_URL=REDIS_URL, CHANNEL_LAYER_PREFIX="skapibare")
    return env


def dbtool(env: dict[str, str], *args: str, timeout: float = 600) -> str:
    done = subprocess.run(
        [PY, "-m", "bench.dbtool", *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if done.returncode:
        raise RuntimeError(f"dbtool {args}: {done.stderr[-2000:]}")
    return done.stdout.strip()


class Servers:
    """The server processes of one target, started fresh for each scenario."""

    def __init__(
        self, name: str, target: dict[str, Any], overrides: dict[str, Any] | None = None
    ) -> None:
        self.name, self.target = name, target
        self.overrides = overrides or target.get("overrides") or {}
        self.ports: list[int] = []
        self.processes: list[subprocess.Popen[bytes]] = []

    def command(self, port: int) -> list[str]:
        server = self.target["server"]
        if server == "websockets":
            return [PY, str(BENCH / "baselines" / "websockets_server.py"), "--port", str(port)]
        app = (
            "project.asgi:application"
            if self.target["kind"] == "app"
            else "bench.baselines.bare_channels:application"
        )
        if server == "daphne":
            # Twisted listens with a backlog of 50 unless told: a storm of handshakes
            # overflows it, and the kernel drops SYNs that clients resend 1 s later.
            # uvicorn's default is 2048 (docs/deployment.md).
            endpoint = f"tcp:port={port}:interface=127.0.0.1:backlog={DAPHNE_BACKLOG}"
            return [PY, "-m", "daphne", "-e", endpoint, app]
        return [
            PY,
            "-m",
            "uvicorn",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--lifespan",
            "off",
            "--log-level",
            "warning",
            "--no-access-log",
            app,
        ]

    def env(self) -> dict[str, str]:
        if self.target["kind"] == "app":
            env = app_env(self.target["backend"])
            if self.overrides:
                env["SKAPI_CHANNELS_JSON"] = json.dumps({**APP_OVERRIDES, **self.overrides})
            return env
        return bare_env(self.target["backend"])

    def __enter__(self) -> Servers:
        (WORK / "logs").mkdir(parents=True, exist_ok=True)
        for index in range(self.target["procs"]):
            port = free_port()
            log = open(WORK / "logs" / f"{self.name.replace('/', '_')}-{index}.log", "ab")
            process = subprocess.Popen(
                self.command(port),
                env=self.env(),
                cwd=ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=_raise_nofile,
            )
            log.close()
            _processes.append(process)
            self.processes.append(process)
            self.ports.append(port)
        deadline = time.monotonic() + 60
        for port, process in zip(self.ports, self.processes, strict=True):
            while not reachable(port):
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"{self.name} did not start; see {WORK / 'logs'}")
                time.sleep(0.1)
        return self

    def __exit__(self, *exc: Any) -> None:
        for process in self.processes:
            _stop(process)

    @property
    def pids(self) -> list[int]:
        return [process.pid for process in self.processes]


def loadgen(spec: dict[str, Any], timeout: float = 600) -> dict[str, Any]:
    path = WORK / "spec.json"
    path.write_text(json.dumps(spec))
    done = subprocess.run(
        [PY, str(BENCH / "loadgen.py"), str(path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        preexec_fn=_raise_nofile,
    )
    if done.returncode:
        raise RuntimeError(f"loadgen {spec['scenario']}: {done.stderr[-3000:]}")
    if done.stderr.strip():
        print(done.stderr.strip()[-1000:], file=sys.stderr)
    return json.loads(done.stdout.strip().splitlines()[-1])


# Scenarios.


def batch_figures(env: dict[str, str]) -> list[dict[str, Any]]:
    """The presence group-commit figures of the servers, once they have published
    them with a heartbeat (every 5 s by default)."""
    time.sleep(5.5)
    return json.loads(dbtool(env, "batches"))


def run_scenario(
    name: str,
    target: dict[str, Any],
    scenario: str,
    p: dict[str, Any],
    users: dict[str, list[dict[str, str]]],
    extra: Any = None,
) -> Any:
    kind = target["kind"]
    path = "/ws/realtime/" if kind == "app" else "/ws/bare/"
    env = app_env(target["backend"]) if kind == "app" else None
    if env is not None:
        dbtool(env, "reset")
    if target["backend"] in ("redis", "redis+pg"):
        import redis

        redis.Redis.from_url(REDIS_URL).flushdb()
    base = {
        "proto": kind,
        "path": path,
        "users": users.get(target["backend"], []) if kind == "app" else [],
    }
    if scenario == "fanout":
        n = extra
        with Servers(name, target) as servers:
            messages = max(20, p["fanout_deliveries"] // n)
            return loadgen(
                {
                    **base,
                    "scenario": "fanout",
                    "ports": servers.ports,
                    "pids": servers.pids,
                    "n": n,
                    "messages": max(20, messages // p["senders"]),
                    "senders": p["senders"],
                    "window": 10,
                }
            )
    if scenario == "private":
        with Servers(name, target) as servers:
            return loadgen(
                {
                    **base,
                    "scenario": "private",
                    "ports": servers.ports,
                    **p["private"],
                    "window": p["private_window"],
                }
            )
    if scenario == "churn":
        with Servers(name, target) as servers:
            spec = {**base, "scenario": "churn", "ports": servers.ports, **p["churn"]}
            spec["pids"] = servers.pids
            if env is not None:
                spec["check_cmd"] = [PY, "-m", "bench.dbtool", "check"]
                spec["check_env"] = env
            result = loadgen(spec)
            if env is not None:
                result["batches"] = batch_figures(env)
        if env is not None:
            result["after_close"] = json.loads(dbtool(env, "check"))
        return result
    if scenario in ("storm", "paced"):
        with Servers(name, target) as servers:
            spec = {**base, "scenario": scenario, "ports": servers.ports, **p[scenario]}
            spec["pids"] = servers.pids
            if scenario == "storm" and env is not None:
                spec["check_cmd"] = [PY, "-m", "bench.dbtool", "check"]
                spec["check_env"] = env
            result = loadgen(spec)
            if env is not None:
                result["batches"] = batch_figures(env)
            return result
    if scenario == "reap":
        assert env is not None
        with Servers(name, target, REAP_TIMERS) as servers:
            bound = REAP_TIMERS["DEAD_AFTER"] + REAP_TIMERS["REAP_INTERVAL"] * 1.2 + 2
            spec = {
                **base,
                "scenario": "reap",
                "ports": servers.ports,
                "pids": servers.pids,
                "bound": bound,
                "check_cmd": [PY, "-m", "bench.dbtool", "check"],
                "check_env": env,
                **p["reap"],
            }
            return loadgen(spec)
    if scenario == "memory":
        with Servers(name, target) as servers:
            return loadgen(
                {
                    **base,
                    "scenario": "memory",
                    "ports": servers.ports,
                    "pids": servers.pids,
                    "connections": p["memory"],
                }
            )
    if scenario == "listing":
        assert env is not None
        out: dict[str, Any] = {}
        populated = 0
        with Servers(name, target) as servers:
            for groups in p["listing_groups"]:
                began = time.monotonic()
                counts = json.loads(
                    dbtool(
                        env, "populate", str(populated), str(groups), "0" if populated else "3000"
                    )
                )
                populate_s = time.monotonic() - began
                populated = groups
                result = loadgen(
                    {
                        **base,
                        "scenario": "listing",
                        "ports": servers.ports,
                        "token": base["users"][0]["token"],
                        "repeats": p["listing_repeats"],
                        "cases": listing_cases(groups),
                    }
                )
                cases_file = WORK / "cases.json"
                cases_file.write_text(json.dumps(listing_cases(groups)))
                query = json.loads(
                    dbtool(env, "querytime", str(cases_file), str(p["listing_repeats"]))
                )
                for row, q in zip(result["cases"], query, strict=True):
                    row["query_only"] = {"first": q["first"], "page50": q["page50"]}
                result.update(rows=counts, populate_s=round(populate_s, 1))
                out[str(groups)] = result
        dbtool(env, "reset")
        return out
    raise ValueError(scenario)


def listing_cases(groups: int) -> list[dict[str, Any]]:
    mid, quarter, three = (f"g{groups * k // 4:07d}" for k in (2, 1, 3))
    g, n = "/realtime/groups/", "number_of_users"
    cases = [
        ("group all", g, {}),
        ("group all desc", g, {"ascending": False}),
        ("group =", g, {"value": mid}),
        ("group !=", g, {"value": mid, "condition": "!="}),
        ("group >", g, {"value": mid, "condition": ">"}),
        ("group >= (prefix)", g, {"value": "g000", "condition": ">="}),
        ("group <", g, {"value": mid, "condition": "<"}),
        ("group <= desc", g, {"value": mid, "condition": "<=", "ascending": False}),
        ("group range", g, {"value": quarter, "range": three}),
        ("users all", g, {"searchFor": n}),
        ("users all desc", g, {"searchFor": n, "ascending": False}),
        ("users = 1", g, {"searchFor": n, "value": 1}),
        ("users != 1", g, {"searchFor": n, "value": 1, "condition": "!="}),
        ("users > 1", g, {"searchFor": n, "value": 1, "condition": ">"}),
        ("users >= 2", g, {"searchFor": n, "value": 2, "condition": ">="}),
        ("users < 3", g, {"searchFor": n, "value": 3, "condition": "<"}),
        ("users <= 2 desc", g, {"searchFor": n, "value": 2, "condition": "<=", "ascending": False}),
        ("users range 2..5", g, {"searchFor": n, "value": 2, "range": 5}),
        ("getRealtimeUsers big group", "/realtime/users/", {"group": "big"}),
        ("getRealtimeUsers user_id", "/realtime/users/", {"group": "big", "user_id": "bu001500"}),
        ("getRealtimeUsers small group", "/realtime/users/", {"group": "g0000001"}),
    ]
    return [{"name": name, "path": path, "body": body} for name, path, body in cases]


# Setup.


def prepare(backends: set[str], p: dict[str, Any]) -> dict[str, list[dict[str, str]]]:
    """Databases migrated, users made and their tokens minted, once per database."""
    WORK.mkdir(parents=True, exist_ok=True)
    count = max(200, 2 * p["private"]["pairs"], p["churn"]["clients"])
    users: dict[str, list[dict[str, str]]] = {}
    for backend in backends & {"embedded", "redis+pg"}:
        env = app_env(backend)
        if backend == "redis+pg":
            import psycopg

            with psycopg.connect(
                "postgresql://postgres@127.0.0.1:5432/postgres", autocommit=True
            ) as conn:
                if not conn.execute(
                    "SELECT 1 FROM pg_database WHERE datname = 'skapi_bench'"
                ).fetchone():
                    conn.execute("CREATE DATABASE skapi_bench")
        dbtool(env, "migrate")
        dbtool(env, "reset")
        out = WORK / f"users-{backend.replace('+', '_')}.json"
        dbtool(env, "users", str(count), str(out))
        users[backend] = json.loads(out.read_text())
    return users


def machine() -> dict[str, Any]:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "load_average_start": [round(x, 2) for x in os.getloadavg()],
    }


def versions() -> dict[str, str]:
    from importlib.metadata import version

    names = ("django", "channels", "channels-redis", "daphne", "uvicorn", "websockets")
    return {name: version(name) for name in names}


# Report.


def fmt(value: Any, digits: int = 0) -> str:
    if value is None:
        return "–"
    if isinstance(value, float) or digits:
        return f"{value:,.{digits}f}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def ratio(a: Any, b: Any) -> float | None:
    return round(a / b, 2) if a and b else None


def fanout_at(results: dict[str, Any], target: str, n: int) -> dict[str, Any] | None:
    for row in results.get(target, {}).get("fanout") or []:
        if row["n"] == n:
            return row
    return None


def largest_batch(result: dict[str, Any]) -> str:
    """The largest presence batch any server process reported, or "–"."""
    sizes = [row.get("presence_largest_batch") for row in result.get("batches") or []]
    sizes = [size for size in sizes if size is not None]
    return str(max(sizes)) if sizes else "–"


def failed_why(result: dict[str, Any]) -> str:
    """How many clients failed and why (loadgen's failure_reasons), or "0"."""
    reasons = result.get("failure_reasons") or {}
    if not result.get("failures"):
        return "0"
    why = "; ".join(f"{count} {reason}" for reason, count in sorted(reasons.items()))
    return f"{result['failures']}: {why}" if why else str(result["failures"])


def tables(data: dict[str, Any]) -> str:
    res = data["results"]
    lines: list[str] = []
    if any("fanout" in r for r in res.values()):
        lines += [
            "### Fan-out: 1 sender, N receivers in one group (window of 10 messages)",
            "",
            "| target | N | deliveries/s | p50 ms | p99 ms | lost | × bare | × websockets |"
            " loadgen CPU | server CPU s / 1,000 deliveries |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for name, r in res.items():
            for row in r.get("fanout") or []:
                bare = fanout_at(res, TARGETS[name].get("bare", ""), row["n"])
                ws = fanout_at(res, "websockets", row["n"])
                lines.append(
                    f"| {name} | {row['n']} | {fmt(row['deliveries_per_s'], 0)} | "
                    f"{fmt(row['p50_ms'], 1)} | {fmt(row['p99_ms'], 1)} | {row['lost']} | "
                    f"{fmt(ratio(row['deliveries_per_s'], bare and bare['deliveries_per_s']), 2)} | "
                    f"{fmt(ratio(row['deliveries_per_s'], ws and ws['deliveries_per_s']), 2)} | "
                    f"{row.get('loadgen_cpu_share')} | "
                    f"{', '.join(fmt(c, 3) for c in row.get('cpu_s_per_1000') or []) or '–'} |"
                )
        lines.append("")
    rows = [(name, r) for name, r in res.items() if {"private", "churn", "memory"} & set(r)]
    if rows:
        lines += [
            "### Private messages, join churn, memory",
            "",
            "| target | private msg/s | p50 ms | p99 ms | lost | × bare | × websockets |"
            " churn ops/s | churn p99 ms | churn server CPU ms/join | presence check |"
            " KiB/idle conn | × bare |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for name, r in rows:
            pr, ch, me = r.get("private") or {}, r.get("churn") or {}, r.get("memory") or {}
            bare = res.get(TARGETS[name].get("bare", ""), {})
            ws = res.get("websockets", {})
            check = ch.get("presence_check")
            check_text = (
                "–"
                if check is None
                else (
                    "ok"
                    if check["ok"] and ch.get("after_close", {}).get("ok", True)
                    else "MISMATCH"
                )
            )
            lines.append(
                f"| {name} | {fmt(pr.get('deliveries_per_s'), 0)} | {fmt(pr.get('p50_ms'), 1)} |"
                f" {fmt(pr.get('p99_ms'), 1)} | {pr.get('lost', '–')} | "
                f"{fmt(ratio(pr.get('deliveries_per_s'), (bare.get('private') or {}).get('deliveries_per_s')), 2)} | "
                f"{fmt(ratio(pr.get('deliveries_per_s'), (ws.get('private') or {}).get('deliveries_per_s')), 2)} | "
                f"{fmt(ch.get('ops_per_s'), 0)} | {fmt(ch.get('p99_ms'), 1)} | "
                f"{fmt(ch.get('server_cpu_ms_per_op'), 2)} | {check_text} | "
                f"{fmt(me.get('kib_per_connection'), 1)} | "
                f"{fmt(ratio(me.get('kib_per_connection'), (bare.get('memory') or {}).get('kib_per_connection')), 2)} |"
            )
        lines.append("")
    storms = [(name, r["storm"]) for name, r in res.items() if r.get("storm")]
    if storms:
        lines += [
            "### Reconnect storm: N clients connect and join their groups at once"
            + (
                f" (at most {data['params']['storm']['in_flight']:,} handshakes in flight)"
                if data["params"]["storm"].get("in_flight")
                else " (every handshake at once)"
            ),
            "",
            "| target | clients | joined | all joined s | handshake p50 ms | p99 ms |"
            " join p50 ms | p99 ms | presence check | server CPU ms/client | largest batch |"
            " failed (why) |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for name, st in storms:
            check = st.get("presence_check")
            check_text = (
                "–"
                if check is None
                else (
                    "MISMATCH"
                    if not check["ok"]
                    # exact, but not every client got through its handshake
                    else "ok" if check.get("all_connected") else f"exact, {check['connections']:,} open"
                )
            )
            lines.append(
                f"| {name} | {st['clients']:,} | {st['joined']:,} | {fmt(st['all_joined_s'], 2)} |"
                f" {fmt(st['handshake_p50_ms'], 1)} | {fmt(st['handshake_p99_ms'], 1)} |"
                f" {fmt(st['join_p50_ms'], 1)} | {fmt(st['join_p99_ms'], 1)} | {check_text} |"
                f" {fmt(st.get('server_cpu_ms_per_op'), 2)} | {largest_batch(st)} |"
                f" {failed_why(st)} |"
            )
        lines.append("")
    reaps = [(name, r["reap"]) for name, r in res.items() if r.get("reap")]
    if reaps:
        lines += [
            "### A process killed (SIGKILL) with N connections: reaped by the other",
            "",
            "| target | connections | notices | all notices after kill s | bound s |"
            " presence check |",
            "|---|---|---|---|---|---|",
        ]
        for name, rp in reaps:
            check = rp.get("presence_check") or {}
            ok = check.get("ok") and check.get("all_reaped")
            lines.append(
                f"| {name} | {rp['clients']:,} | {rp['notices']:,} |"
                f" {fmt(rp['all_notices_s'], 2)} | {fmt(rp['bound_s'], 1)} |"
                f" {'ok' if ok else 'MISMATCH'} |"
            )
        lines.append("")
    paced = [(name, r["paced"]) for name, r in res.items() if r.get("paced")]
    if paced:
        lines += [
            "### Paced churn: joins at a fixed rate",
            "",
            "| target | clients | rate joins/s | joins | p50 ms | p99 ms | failures |"
            " server CPU ms/join |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for name, pc in paced:
            lines.append(
                f"| {name} | {pc['clients']} | {pc['rate']} | {pc['joins']} |"
                f" {fmt(pc['p50_ms'], 1)} | {fmt(pc['p99_ms'], 1)} | {pc['failures']} |"
                f" {fmt(pc.get('server_cpu_ms_per_op'), 2)} |"
            )
        lines.append("")
    for name, r in res.items():
        for groups, listing in (r.get("listing") or {}).items():
            lines += [
                f"### Listings on {name} ({'SQLite' if 'embedded' in name else 'PostgreSQL'}),"
                f" {int(groups):,} groups ({listing['rows']['connections']:,} connection rows)",
                "",
                "HTTP: POST through the server, sequential keep-alive requests; "
                "query: the same call in-process, without HTTP.",
                "",
                "| case | first page p50 ms | p99 ms | page 50 p50 ms | p99 ms |"
                " query p99 first | query p99 page 50 |",
                "|---|---|---|---|---|---|---|",
            ]
            for case in listing["cases"]:
                deep = case.get("page50") or {}
                query = case.get("query_only") or {}
                lines.append(
                    f"| {case['case']} | {fmt(case['first']['p50_ms'], 2)} | "
                    f"{fmt(case['first']['p99_ms'], 2)} | {fmt(deep.get('p50_ms'), 2)} | "
                    f"{fmt(deep.get('p99_ms'), 2)} | "
                    f"{fmt((query.get('first') or {}).get('p99_ms'), 2)} | "
                    f"{fmt((query.get('page50') or {}).get('p99_ms'), 2)} |"
                )
            lines.append("")
    if data.get("targets"):
        lines += [
            "### Targets",
            "",
            "| target | measured | goal | met |",
            "|---|---|---|---|",
        ]
        for t in data["targets"]:
            lines.append(
                f"| {t['name']} | {t['measured']} | {t['goal']} | "
                f"{'yes' if t['met'] else ('–' if t['met'] is None else 'no')} |"
            )
        lines.append("")
    return "\n".join(lines)


def targets(res: dict[str, Any], ns: list[int]) -> list[dict[str, Any]]:
    out = []
    n = 500 if 500 in ns else ns[0]

    def add(name: str, value: float | None, goal: str, met: bool | None) -> None:
        out.append(
            {
                "name": name,
                "measured": "–" if value is None else f"{value:g}",
                "goal": goal,
                "met": met,
            }
        )

    for app, label, goal in (
        ("app/embedded/daphne", "embedded", 2.0),
        ("app/redis+pg/daphne", "Redis", 1.5),
    ):
        a, b = fanout_at(res, app, n), fanout_at(res, TARGETS[app]["bare"], n)
        r = ratio(a and a["deliveries_per_s"], b and b["deliveries_per_s"])
        add(
            f"fan-out N={n} {label}: × bare Channels",
            r,
            f"≥ {goal}",
            None if r is None else r >= goal,
        )
    a = (res.get("app/embedded/daphne") or {}).get("private")
    b = (res.get("bare/inmemory/daphne") or {}).get("private")
    r = ratio(a and a["deliveries_per_s"], b and b["deliveries_per_s"])
    add("private messages × bare Channels", r, "≥ 1.5", None if r is None else r >= 1.5)
    for app, db in (("app/embedded/daphne", "SQLite"), ("app/redis+pg/daphne", "PostgreSQL")):
        listing = (res.get(app) or {}).get("listing") or {}
        if listing:
            largest = max(listing, key=int)
            worst = max(
                max(c["first"]["p99_ms"], (c.get("page50") or {}).get("p99_ms") or 0)
                for c in listing[largest]["cases"]
            )
            add(
                f"listing p99 over HTTP, worst case, {int(largest):,} groups, {db} (ms)",
                worst,
                "< 20",
                worst < 20,
            )
            query = [c.get("query_only") or {} for c in listing[largest]["cases"]]
            worst_query = max(
                max(
                    (q.get("first") or {}).get("p99_ms") or 0,
                    (q.get("page50") or {}).get("p99_ms") or 0,
                )
                for q in query
            )
            add(
                f"listing p99 in-process query, worst case, {int(largest):,} groups, {db} (ms)",
                worst_query,
                "< 20",
                worst_query < 20,
            )
    a = (res.get("app/embedded/daphne") or {}).get("memory")
    b = (res.get("bare/inmemory/daphne") or {}).get("memory")
    r = ratio(a and a["kib_per_connection"], b and b["kib_per_connection"])
    add("memory per idle connection × bare Channels", r, "≤ 1.2", None if r is None else r <= 1.2)
    for app in ("app/embedded/uvicorn",):
        a, b = fanout_at(res, app, n), fanout_at(res, "app/embedded/daphne", n)
        r = ratio(a and a["deliveries_per_s"], b and b["deliveries_per_s"])
        add(
            f"fan-out N={n}: uvicorn × daphne (app, embedded)",
            r,
            "runs",
            None if r is None else True,
        )
    scaleout_targets(res, n, add)
    for app in ("app/redis+pg/daphne", "app/embedded/daphne"):
        check = ((res.get(app) or {}).get("churn") or {}).get("presence_check")
        if check is not None:
            exact = check["ok"] and res[app]["churn"].get("after_close", {}).get("ok", True)
            add(f"presence check after churn, {app}", None, "counts = fresh count", exact)
            rate = res[app]["churn"]["ops_per_s"]
            add(f"join churn, presence exact, {app} (joins/s)", rate, "≥ 1500", exact and rate >= 1500)
    for app in APP_TARGETS:
        storm = (res.get(app) or {}).get("storm")
        if storm:
            check = storm.get("presence_check") or {}
            add(
                f"storm of {storm['clients']:,}: all joined, presence exact, {app} (s)",
                storm["all_joined_s"],
                "< 4",
                storm["all_joined_s"] < 4
                and storm["joined"] == storm["clients"]
                and bool(check.get("ok") and check.get("all_connected")),
            )
    for app in SCENARIO_TARGETS["reap"]:
        rp = (res.get(app) or {}).get("reap")
        if rp:
            check = rp.get("presence_check") or {}
            took = rp["all_notices_s"]
            add(
                f"process killed with {rp['clients']:,} connections: reaped, all notices, {app} (s)",
                took,
                f"< {rp['bound_s']:g} (DEAD_AFTER + REAP_INTERVAL + 2)",
                took is not None
                and took < rp["bound_s"]
                and rp["notices"] == rp["clients"]
                and bool(check.get("ok") and check.get("all_reaped")),
            )
    for app in ("app/embedded/daphne", "app/redis+pg/daphne"):
        paced = (res.get(app) or {}).get("paced")
        if paced and paced["p99_ms"] is not None:
            add(
                f"join ack p99 at {paced['rate']} joins/s, {app} (ms)",
                paced["p99_ms"],
                "< 20",
                paced["p99_ms"] < 20,
            )
    return out


def scaleout_targets(res: dict[str, Any], n: int, add: Any) -> None:
    """The scale-out layer against the embedded default, and two processes against one."""
    emb, red, two = "app/embedded/daphne", "app/redis+pg/daphne", "app/redis+pg/daphne-x2"
    a, b = fanout_at(res, red, n), fanout_at(res, emb, n)
    r = ratio(a and a["deliveries_per_s"], b and b["deliveries_per_s"])
    add(f"fan-out N={n}: Redis+PG × embedded", r, "≥ 0.8", None if r is None else r >= 0.8)
    a, b = (res.get(red) or {}).get("private"), (res.get(emb) or {}).get("private")
    r = ratio(a and a["deliveries_per_s"], b and b["deliveries_per_s"])
    add("private messages: Redis+PG × embedded", r, "≥ 0.7", None if r is None else r >= 0.7)
    if a and b and b["p50_ms"] is not None and b["p50_ms"] < 100:
        add("private p50 on Redis+PG (ms)", a["p50_ms"], "< 100", a["p50_ms"] < 100)
    a, b = fanout_at(res, two, n), fanout_at(res, red, n)
    r = ratio(a and a["deliveries_per_s"], b and b["deliveries_per_s"])
    add(f"fan-out N={n}: 2 processes × 1 (Redis+PG)", r, "≥ 0.9", None if r is None else r >= 0.9)
    base = fanout_at(res, emb, n)
    for name in (red, two):
        row = fanout_at(res, name, n)
        if row and base and row.get("cpu_s_per_1000") and base.get("cpu_s_per_1000"):
            worst = max(c for c in row["cpu_s_per_1000"] if c is not None)
            r = ratio(worst, base["cpu_s_per_1000"][0])
            add(
                f"fan-out N={n}: CPU s per 1,000 deliveries, {name} (worst process) × embedded",
                r,
                "≤ 1.25",
                None if r is None else r <= 1.25,
            )


def chart(data: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    for name, r in data["results"].items():
        rows = r.get("fanout") or []
        if not rows:
            continue
        style = "-" if name.startswith("app/") else "--"
        ns = [row["n"] for row in rows]
        left.plot(ns, [row["deliveries_per_s"] for row in rows], style, marker="o", label=name)
        right.plot(ns, [row["p99_ms"] for row in rows], style, marker="o", label=name)
    left.set(
        title="Fan-out throughput",
        xlabel="receivers N",
        ylabel="deliveries per second",
        yscale="log",
    )
    right.set(title="Fan-out latency p99", xlabel="receivers N", ylabel="ms", yscale="log")
    for axes in (left, right):
        axes.grid(True, alpha=0.3)
    if left.get_legend_handles_labels()[0]:
        left.legend(fontsize=7)
    fig.suptitle(
        f"skapi_channels benchmarks, {data['machine']['cpus']} cores, {data['started'][:16]} UTC"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def readme(data: dict[str, Any], table: str) -> str:
    m = data["machine"]
    return f"""# Benchmark results

Written by `bench/run.py` ({"quick" if data["quick"] else "full"} run), {data["started"][:16]} UTC,
in {data["duration_s"]:.0f} s. Raw numbers: [latest.json](latest.json); chart:
[latest.png](latest.png).

Machine: {m["cpus"]} cores ({m["cpu_model"] or "unknown CPU"}), Python {m["python"]}, {m["platform"]}.
Load average at the start {m["load_average_start"]}, at the end {m.get("load_average_end")}
(the machine is shared with other test runs; servers and load generator share the
{m["cpus"]} cores). Versions: {", ".join(f"{k} {v}" for k, v in data["versions"].items())}.
Embedded channel layer (what `project/settings.py` selects without `REDIS_URL`):
`{data.get("embedded_layer")}`.

Every figure is from real server processes on loopback, driven by one separate
load-generator process (`bench/loadgen.py`, asyncio); each server is started fresh
for each scenario. "× bare" is the ratio to the bare Channels consumer
(`bench/baselines/bare_channels.py`) on the same server, layer and process count;
"× websockets" to the server on the `websockets` library
(`bench/baselines/websockets_server.py`). "loadgen CPU" is the load generator's CPU
time over wall time: well under 1 means it did not bound the figure. Fan-out keeps
10 messages in flight; private messages 5 per pair. Memory is the RSS growth of the
server process per idle connection between 20 and {data["params"]["memory"]:,} open
sockets. The app runs with its per-connection and per-IP limits lifted
(`SKAPI_CHANNELS_JSON`: {json.dumps(data["overrides"])}).

{table}
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small, fast run (< 3 minutes)")
    parser.add_argument(
        "--scenario", action="append", choices=SCENARIOS, help="run only this scenario (repeatable)"
    )
    parser.add_argument(
        "--target", action="append", choices=list(TARGETS), help="run only this target (repeatable)"
    )
    parser.add_argument("--n", type=int, action="append", help="fan-out receivers (repeatable)")
    parser.add_argument("--senders", type=int, help="fan-out senders, each 10 in flight (1)")
    parser.add_argument("--pairs", type=int, help="private-message pairs (50; quick 10)")
    parser.add_argument("--private-window", type=int, help="private messages in flight a pair (5)")
    parser.add_argument(
        "--storm-in-flight",
        type=int,
        help="storm handshakes the load generator keeps in flight (default: all of them at once)",
    )
    parser.add_argument(
        "--budget",
        type=float,
        default=None,
        help="seconds after which the remaining items are skipped (default 150 quick, 2100 full)",
    )
    parser.add_argument(
        "--out", type=Path, default=BENCH / "results", help="where latest.json/png and README.md go"
    )
    args = parser.parse_args()
    p = params(args.quick, args.n, args)
    if args.budget is None:
        args.budget = 150 if args.quick else 2100
    scenarios = args.scenario or list(SCENARIOS)
    names = args.target or list(QUICK_TARGETS if args.quick else DEFAULT_TARGETS)
    services = {"pg": reachable(5432), "redis": reachable(6379)}
    skipped = [
        name
        for name in names
        if TARGETS[name]["backend"] in ("redis", "redis+pg")
        and not (services["pg"] and services["redis"])
    ]
    names = [name for name in names if name not in skipped]
    for name in skipped:
        print(f"skipped {name}: PostgreSQL or Redis not reachable on 127.0.0.1", file=sys.stderr)
    started = time.time()
    data: dict[str, Any] = {
        "started": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(started)),
        "quick": args.quick,
        "params": p,
        "machine": machine(),
        "versions": versions(),
        "overrides": APP_OVERRIDES,
        "results": {},
    }
    backends = {TARGETS[name]["backend"] for name in names}
    users = prepare(backends, p)
    if "embedded" in backends:
        data["embedded_layer"] = dbtool(app_env("embedded"), "layer")
    items = plan(p, scenarios, names)
    deadline = started + args.budget
    for scenario, name, extra in items:
        label = f"{name}: {scenario}" + (f" N={extra}" if extra else "")
        if time.time() > deadline:
            data.setdefault("skipped", []).append(label)
            continue
        began = time.monotonic()
        print(f"{label} ...", file=sys.stderr, flush=True)
        try:
            result = run_scenario(name, TARGETS[name], scenario, p, users, extra)
        except Exception as error:  # noqa: BLE001 - one failure must not lose the rest
            result = {"error": str(error)[-1500:]}
            print(f"  failed: {result['error']}", file=sys.stderr)
        slot = data["results"].setdefault(name, {})
        if scenario == "fanout" and "error" not in result:
            slot.setdefault("fanout", []).append(result)
            slot["fanout"].sort(key=lambda row: row["n"])
        else:
            slot[scenario if "error" not in result else f"{scenario}{extra or ''}"] = result
        data.setdefault("seconds", {})[label] = round(time.monotonic() - began)
        print(f"  {time.monotonic() - began:.0f} s", file=sys.stderr, flush=True)
    if data.get("skipped"):
        print("skipped (time budget): " + "; ".join(data["skipped"]), file=sys.stderr)
    for r in data["results"].values():  # failed scenarios stay in the JSON, not the table
        for scenario in [s for s, v in r.items() if isinstance(v, dict) and "error" in v]:
            r.setdefault("errors", {})[scenario] = r.pop(scenario)
    data["duration_s"] = round(time.time() - started, 1)
    data["machine"]["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    data["targets"] = targets(data["results"], p["fanout_n"])
    table = tables(data)
    print(table)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "latest.json").write_text(json.dumps(data, indent=1))
    chart(data, args.out / "latest.png")
    (args.out / "README.md").write_text(readme(data, table))
    print(f"wrote {args.out / 'latest.json'}, latest.png, README.md", file=sys.stderr)
    failed = [f"{name}/{s}" for name, r in data["results"].items() for s in r.get("errors", {})]
    if failed:
        print("failed: " + ", ".join(failed), file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    # SIGTERM ends the run like Ctrl-C: the atexit hook stops every server.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    sys.exit(main())
