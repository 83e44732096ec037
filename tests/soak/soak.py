"""Soak test: a real daphne process under steady traffic and churn, on loopback.

    python tests/soak/soak.py --seconds 180 --connections 200
    DATABASE_URL=postgres://… REDIS_URL=redis://… python tests/soak/soak.py --processes 2
    … --processes 2 --restart-redis-at 60   # a private redis-server, restarted empty

Starts daphne on 127.0.0.1 (a free port) with a temporary SQLite database (with
``--processes``: that many daphne processes on a fresh PostgreSQL database named by
``DATABASE_URL``'s server and on Redis, clients spread over them), opens
``--connections`` sockets for at least 20 users spread over 20 groups, and for
``--seconds`` keeps every connection busy: group broadcasts and private messages
carrying per-sender sequence numbers, random joins, leaves and
disconnect/reconnects. Then it checks:

- every message was delivered at most once to each receiver, and in order per sender;
- every message owed to a receiver (a member from before it was sent until after it
  was acked, docs/protocol.md section 10) reached it, or the receiver was told it missed
  messages (MISSED_MESSAGES, or a close with 4009);
- the presence counters equal a fresh count of the rows, the rows equal the
  clients' own view, and no row is left after every client closed;
- the server's RSS, sampled every second, did not keep growing.

With ``--restart-redis-at`` the Redis the processes share is stopped that many
seconds into the traffic and started empty a second later: every delivery lost
with it must be told (``lost`` stays 0; ``missing_before_told`` and
``missed_notified`` show how many were lost and how many were told). Apart:
``lost_in_flight_at_stop``, untold losses of messages acked from half a second
before the stop until the Redis process exited, which that Redis published but
never wrote to the subscribers (their numbering died with it, so nothing is left to
count them).

It prints its figures and exits 1 on any loss, duplicate, disorder, unexpected
error or presence mismatch. Every loop is bounded; the server is killed at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.live_server import RedisServer  # noqa: E402

GROUPS = 20
MAX_PER_USER = 10  # the server's default MAX_CONNECTIONS_PER_USER
PER_USER = 5  # connections per user we open: headroom for reconnect races
ACK_TIMEOUT = 10.0
OVERRIDES = {
    # Steady traffic from one address is not abuse here.
    "HANDSHAKES_PER_MINUTE": 1_000_000,
    "GROUPS_CREATED_PER_MINUTE": 1_000_000,
}

CREATE_USERS = """
import json, sys
import django
django.setup()
from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY, get_user_model
from django.contrib.sessions.backends.db import SessionStore
out = []
for i in range(int(sys.argv[1])):
    user = get_user_model().objects.create_user(f"soak{i}", password="soak-password-1")
    session = SessionStore()
    session[SESSION_KEY] = str(user.pk)
    session[BACKEND_SESSION_KEY] = "django.contrib.auth.backends.ModelBackend"
    session[HASH_SESSION_KEY] = user.get_session_auth_hash()
    session.create()
    out.append([str(user.pk), session.session_key])
print(json.dumps(out))
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def rss_kib(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def cpu_seconds(pid: int) -> float:
    """User and system CPU time of a process so far."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def percentile(values: list[float], fraction: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(1000 * ordered[min(len(ordered) - 1, int(fraction * len(ordered)))], 1)


# Bookkeeping.


@dataclass
class Sent:
    sender: str  # sender incarnation key
    seq: int
    private: bool
    target: str  # group name or user_id
    sent_at: float
    acked_at: float | None = None


@dataclass
class Incarnation:
    """One socket from handshake to close."""

    key: str
    user_id: str
    opened_at: float
    closed_at: float = float("inf")
    # (group, joined: join ack time, left: time the leave or close was sent)
    memberships: list[list[Any]] = field(default_factory=list)
    received: dict[str, list[int]] = field(default_factory=lambda: defaultdict(list))
    missed: int = 0
    closed_4009: bool = False


class Stats:
    def __init__(self) -> None:
        self.sent: dict[tuple[str, int], Sent] = {}
        self.incarnations: dict[str, Incarnation] = {}
        self.errors: list[str] = []
        self.joins = 0
        self.leaves = 0
        self.reconnects = 0
        self.refused_handshakes = 0
        self.notices = 0
        self.latencies: list[float] = []
        # When the private Redis was stopped (--restart-redis-at), on this clock.
        self.redis_stopped_at: float | None = None
        self.redis_gone_at: float | None = None  # its process had exited


class Conn:
    """One client slot: a sequence of incarnations of one user's socket."""

    def __init__(self, slot: int, user_id: str, session: str, url: str, stats: Stats) -> None:
        self.slot = slot
        self.user_id = user_id
        self.session = session
        self.url = url
        self.stats = stats
        self.socket: ClientConnection | None = None
        self.current: Incarnation | None = None
        self.generation = 0
        self.seq = 0
        self.group: str | None = None
        self.next_id = 0
        self.pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self.reader: asyncio.Task[None] | None = None
        self.fence = asyncio.Event()
        self.fence_seq = -1

    async def open(self, deadline: float) -> None:
        while True:
            try:
                self.socket = await connect(
                    self.url,
                    additional_headers={"Cookie": f"sessionid={self.session}"},
                    open_timeout=10,
                    max_size=2**20,
                    max_queue=None,
                    ping_interval=None,
                )
                break
            except InvalidStatus:
                # The row of the socket just closed may not be gone yet (10 per user).
                self.stats.refused_handshakes += 1
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.2)
        self.generation += 1
        key = f"{self.slot}.{self.generation}"
        self.current = Incarnation(key, self.user_id, time.monotonic())
        self.stats.incarnations[key] = self.current
        self.seq = 0
        self.group = None
        self.reader = asyncio.create_task(self.read(self.socket, self.current))

    async def read(self, sock: ClientConnection, me: Incarnation) -> None:
        try:
            async for text in sock:
                frame = json.loads(text)
                if "#ack" in frame:
                    future = self.pending.pop(frame["#ack"], None)
                    if future is not None and not future.done():
                        future.set_result(frame)
                elif "#message" in frame or "#private" in frame:
                    content = frame.get("#message", frame.get("#private"))
                    sender, seq = content["s"], content["n"]
                    owner = self.stats.incarnations[sender].user_id
                    if frame["#user_id"] != owner:
                        self.stats.errors.append(f"{me.key}: spoofed sender {frame}")
                    if "#private" in frame and content["to"] != me.user_id:
                        self.stats.errors.append(f"{me.key}: got another user's private {frame}")
                    me.received[sender].append(seq)
                    self.stats.latencies.append(time.monotonic() - content["t"])
                    if sender == me.key and seq == self.fence_seq:
                        self.fence.set()
                elif "#notice" in frame:
                    self.stats.notices += 1
                elif frame.get("#code") == "MISSED_MESSAGES":
                    me.missed += int(frame["#missed"])
                else:
                    self.stats.errors.append(f"{me.key}: unexpected {frame}")
                    future = self.pending.pop(frame.get("#id"), None)
                    if future is not None and not future.done():
                        future.set_result(frame)
        except ConnectionClosed as closed:
            if closed.rcvd is not None and closed.rcvd.code == 4009:
                me.closed_4009 = True
            elif closed.rcvd is not None and closed.rcvd.code not in (1000, 1001):
                self.stats.errors.append(f"{me.key}: closed by the server with {closed.rcvd.code}")
        finally:
            for future in self.pending.values():
                if not future.done():
                    future.cancel()
            self.pending.clear()

    async def request(self, frame: dict[str, Any]) -> dict[str, Any] | None:
        """Send a frame with an id; its answer, or None when the socket went away."""
        assert self.socket is not None
        self.next_id += 1
        frame["id"] = self.next_id
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.pending[self.next_id] = future
        try:
            await self.socket.send(json.dumps(frame))
            return await asyncio.wait_for(future, ACK_TIMEOUT)
        except (ConnectionClosed, asyncio.CancelledError):
            return None
        except TimeoutError:
            self.stats.errors.append(f"{self.current and self.current.key}: no answer to {frame}")
            return None

    async def join(self, group: str | None) -> None:
        me = self.current
        assert me is not None
        now = time.monotonic()
        if self.group is not None:
            me.memberships[-1][2] = now  # left from the moment the leave is sent
        answer = await self.request({"action": "joinRoom", "rid": group})
        if answer is None:
            return
        if "#ack" not in answer:
            self.stats.errors.append(f"{me.key}: join refused {answer}")
            return
        self.group = group
        if group is None:
            self.stats.leaves += 1
        else:
            self.stats.joins += 1
            me.memberships.append([group, time.monotonic(), float("inf")])

    async def message(self, users: list[str], fence: bool = False) -> None:
        me = self.current
        assert me is not None
        self.seq += 1
        private = self.group is None or random.random() < 0.3
        target = random.choice(users or [self.user_id]) if private else self.group
        if fence:  # a message this socket receives itself
            self.fence.clear()
            self.fence_seq = self.seq
            private = self.group is None
            target = self.group if self.group is not None else self.user_id
        assert target is not None
        content = {
            "s": me.key,
            "n": self.seq,
            "to": target if private else None,
            "t": time.monotonic(),
        }
        if private:
            frame = {"action": "sendMessage", "uid": target, "content": content}
        else:
            frame = {"action": "broadcast", "rid": target, "content": content}
        record = Sent(me.key, self.seq, private, target, time.monotonic())
        self.stats.sent[(me.key, self.seq)] = record
        answer = await self.request(frame)
        if answer is not None and "#ack" in answer:
            record.acked_at = time.monotonic()

    async def close(self) -> None:
        """Close the socket, once what was sent to it before has arrived.

        A client that closes cannot read what was queued for it, so it first sends
        a message to itself and waits for it: every message acked before that one
        was sent is queued before it. It is owed what was acked until then."""
        me = self.current
        if me is None or self.socket is None:
            return
        now = time.monotonic()
        if self.reader is not None and not self.reader.done():
            told = me.missed
            await self.message([], fence=True)
            try:
                await asyncio.wait_for(self.fence.wait(), ACK_TIMEOUT)
            except TimeoutError:
                # Lost and told (a Redis restart) is what docs/protocol.md §10 allows.
                if not self.reader.done() and me.missed == told:
                    self.stats.errors.append(f"{me.key}: its message to itself did not arrive")
        me.closed_at = now
        if self.group is not None:
            me.memberships[-1][2] = now
        await self.socket.close()
        if self.reader is not None:
            await asyncio.wait_for(self.reader, 10)
        self.socket = None
        self.current = None

    async def run(self, stop_at: float, users: list[str], interval: float) -> None:
        """Steady traffic and churn until ``stop_at``."""
        while time.monotonic() < stop_at:
            await asyncio.sleep(random.uniform(0.5, 1.5) * interval)
            if self.socket is None or (self.reader is not None and self.reader.done()):
                # Closed by the server (4009 when too far behind): come back.
                await self.close()
                await self.open(time.monotonic() + 30)
            roll = random.random()
            if roll < 0.01:
                await self.close()
                self.stats.reconnects += 1
                await self.open(time.monotonic() + 30)
                await self.join(f"group-{random.randrange(GROUPS)}")
            elif roll < 0.03:
                await self.join(None)
            elif roll < 0.08 or self.group is None:
                await self.join(f"group-{random.randrange(GROUPS)}")
            else:
                await self.message(users)


# The server.


class Server:
    """One daphne process; ``database`` and ``redis_url`` select the scale-out set-up."""

    def __init__(
        self, workdir: Path, index: int = 0, database: str | None = None, redis_url: str = ""
    ) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.database = database
        self.env = {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "project.settings",
            "SQLITE_PATH": str(workdir / "soak.sqlite3"),
            "SKAPI_CHANNELS_JSON": json.dumps(OVERRIDES),
            "DJANGO_DEBUG": "0",
            "DJANGO_ALLOWED_HOSTS": "127.0.0.1",
            "PYTHONPATH": str(ROOT),
        }
        for name in ("DATABASE_URL", "REDIS_URL"):
            self.env.pop(name, None)
        if database is not None:
            self.env.update(
                DATABASE_URL=database, REDIS_URL=redis_url, CHANNEL_LAYER_PREFIX=workdir.name
            )
        self.process: subprocess.Popen[bytes] | None = None
        self.log = open(workdir / f"daphne-{index}.log", "wb")  # noqa: SIM115 (closed by stop)

    def prepare(self, users: int) -> list[tuple[str, str]]:
        subprocess.run(
            [sys.executable, "manage.py", "migrate", "--noinput", "-v", "0"],
            cwd=ROOT, env=self.env, check=True, timeout=120,
        )  # fmt: skip
        output = subprocess.run(
            [sys.executable, "-c", CREATE_USERS, str(users)],
            cwd=ROOT, env=self.env, check=True, timeout=120, capture_output=True,
        )  # fmt: skip
        return [tuple(pair) for pair in json.loads(output.stdout)]  # type: ignore[misc]

    def start(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(self.port),
             "project.asgi:application"],
            cwd=ROOT, env=self.env, stdout=self.log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"daphne exited with {self.process.returncode}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.1)
        raise TimeoutError("daphne does not listen")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        self.log.close()

    def query(self, sql: str) -> list[tuple[Any, ...]]:
        if self.database is not None:
            import psycopg

            with psycopg.connect(postgresql(self.database), autocommit=True) as db:
                return list(db.execute(sql).fetchall())  # type: ignore[arg-type]
        with sqlite3.connect(self.workdir / "soak.sqlite3", timeout=20) as db:
            return list(db.execute(sql))


def postgresql(url: str) -> str:
    return url.replace("postgres://", "postgresql://", 1)


def fresh_database(server_url: str) -> tuple[str, Any]:
    """A new PostgreSQL database on the server of ``server_url``, and its dropper."""
    import secrets
    from urllib.parse import urlsplit, urlunsplit

    import psycopg

    name = "skapi_soak_" + secrets.token_hex(4)
    with psycopg.connect(postgresql(server_url), autocommit=True) as db:
        db.execute(f'CREATE DATABASE "{name}"')  # type: ignore[arg-type]
    parts = urlsplit(server_url)
    url = urlunsplit((parts.scheme, parts.netloc, "/" + name, parts.query, parts.fragment))

    def drop() -> None:
        with psycopg.connect(postgresql(server_url), autocommit=True) as db:
            db.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')  # type: ignore[arg-type]

    return url, drop


def presence_problems(server: Server, clients: list[Conn]) -> list[str]:
    """The counters against a fresh count of the rows, and the rows against the clients."""
    problems = []
    rows = server.query("SELECT user_id, group_name FROM skapi_channels_connection")
    users: dict[str, set[str]] = defaultdict(set)
    per_pair: dict[tuple[str, str], int] = defaultdict(int)
    per_user: dict[str, int] = defaultdict(int)
    for user, group in rows:
        per_user[user] += 1
        if group is not None:
            users[group].add(user)
            per_pair[(group, user)] += 1
    counted = dict(server.query("SELECT name, number_of_users FROM skapi_channels_realtimegroup"))
    if counted != {group: len(members) for group, members in users.items()}:
        problems.append(f"number_of_users {counted} != fresh count {dict(users)}")
    memberships = {
        (group, user): n
        for group, user, n in server.query(
            "SELECT group_name, user_id, connections FROM skapi_channels_groupmembership"
        )
    }
    if memberships != dict(per_pair):
        problems.append("group membership counts differ from a fresh count")
    if dict(server.query("SELECT user_id, connections FROM skapi_channels_onlineuser")) != dict(
        per_user
    ):
        problems.append("online user counts differ from a fresh count")

    def order(row: tuple[str, str | None]) -> tuple[str, str]:
        return (row[0], row[1] or "")

    clients_view = sorted(
        ((c.user_id, c.group) for c in clients if c.socket is not None), key=order
    )
    if sorted(rows, key=order) != clients_view:
        problems.append(f"rows ({len(rows)}) differ from the clients' view ({len(clients_view)})")
    return problems


# The check.


def verify(stats: Stats) -> dict[str, int]:
    """Count deliveries against what each receiver was owed (docs/protocol.md section 10).

    A message is owed to a receiver that was a member (of the group, or open for the
    user) from before it was sent until after it was acked. ``lost_by_leavers``
    counts the owed messages missing at receivers that left the group (joinRoom)
    after the ack; they are part of ``lost``."""
    figures = dict.fromkeys(
        ["owed", "delivered", "lost", "lost_by_leavers", "duplicates", "out_of_order",
         "missed_notified", "unsent", "missing_before_told", "lost_in_flight_at_stop"],
        0,
    )  # fmt: skip
    by_group: dict[str, list[tuple[Incarnation, float, float]]] = defaultdict(list)
    by_user: dict[str, list[Incarnation]] = defaultdict(list)
    for inc in stats.incarnations.values():
        by_user[inc.user_id].append(inc)
        for group, joined, left in inc.memberships:
            by_group[group].append((inc, joined, left))
    # receiver -> sender -> {seq: whether the receiver left the group after the ack}
    owed: dict[str, dict[str, dict[int, bool]]] = defaultdict(lambda: defaultdict(dict))
    for sent in stats.sent.values():
        if sent.acked_at is None:
            continue
        if sent.private:
            for inc in by_user[sent.target]:
                if inc.opened_at < sent.sent_at and inc.closed_at > sent.acked_at:
                    owed[inc.key][sent.sender][sent.seq] = False
        else:
            for inc, joined, left in by_group[sent.target]:
                if joined < sent.sent_at and left > sent.acked_at:
                    owed[inc.key][sent.sender][sent.seq] = left < inc.closed_at
    examples: list[str] = []
    for inc in stats.incarnations.values():
        lost_here = leaving = at_stop = 0
        for sender, seqs in inc.received.items():
            figures["delivered"] += len(seqs)
            figures["duplicates"] += len(seqs) - len(set(seqs))
            figures["out_of_order"] += sum(1 for a, b in zip(seqs, seqs[1:], strict=False) if b < a)
            figures["unsent"] += sum(1 for seq in set(seqs) if (sender, seq) not in stats.sent)
        for sender, seqs in owed[inc.key].items():
            figures["owed"] += len(seqs)
            missing = set(seqs) - set(inc.received.get(sender, ()))
            lost_here += len(missing)
            if stats.redis_stopped_at is not None and stats.redis_gone_at is not None:
                # Published by a Redis that was stopping (it answers until its process
                # exits) and never wrote it out: its numbering died with it, so
                # nobody can count it.
                at_stop += sum(
                    1
                    for seq in missing
                    if stats.redis_stopped_at - 0.5
                    <= (stats.sent[(sender, seq)].acked_at or 0)
                    <= stats.redis_gone_at
                )
            leaving += sum(1 for seq in missing if seqs[seq])
            for seq in sorted(missing)[:2]:
                if len(examples) < 5:
                    examples.append(
                        f"{inc.key} (user {inc.user_id}, open {inc.opened_at:.3f} to "
                        f"{inc.closed_at:.3f}, in {inc.memberships}) lacks "
                        f"{stats.sent[(sender, seq)]}"
                    )
        figures["missed_notified"] += inc.missed
        if inc.closed_4009:
            lost_here = leaving = 0  # told: closed for falling too far behind
        figures["missing_before_told"] += lost_here
        untold = max(0, lost_here - inc.missed)
        figures["lost_in_flight_at_stop"] += min(untold, at_stop)
        figures["lost"] += untold - min(untold, at_stop)
        figures["lost_by_leavers"] += max(0, leaving - inc.missed)
    for example in examples:
        print("lost:", example, flush=True)
    return figures


async def drive(
    args: argparse.Namespace,
    servers: list[Server],
    sessions: list[tuple[str, str]],
    redis: RedisServer | None = None,
) -> int:
    stats = Stats()
    server = servers[0]
    clients = [
        Conn(
            slot,
            *sessions[slot % len(sessions)],
            f"ws://127.0.0.1:{servers[slot % len(servers)].port}/ws/realtime/",
            stats,
        )
        for slot in range(args.connections)
    ]
    users = [user_id for user_id, _ in sessions]
    pids = [s.process.pid for s in servers if s.process is not None]
    rss: list[tuple[float, int]] = []

    async def sample_rss() -> None:
        while True:
            values = [rss_kib(pid) for pid in pids]
            if None not in values:
                rss.append((time.monotonic(), sum(v for v in values if v is not None)))
            await asyncio.sleep(1)

    async def restart_redis() -> None:
        assert redis is not None
        await asyncio.sleep(args.restart_redis_at)
        print("stopping Redis", flush=True)
        stats.redis_stopped_at = time.monotonic()
        await asyncio.to_thread(redis.stop)
        stats.redis_gone_at = time.monotonic()
        await asyncio.sleep(1)
        await asyncio.to_thread(redis.start)
        print("Redis started again, empty", flush=True)

    sampler = asyncio.create_task(sample_rss())
    started = time.monotonic()
    for start in range(0, len(clients), 20):  # open in batches
        await asyncio.gather(*(c.open(time.monotonic() + 30) for c in clients[start : start + 20]))
    await asyncio.gather(*(c.join(f"group-{c.slot % GROUPS}") for c in clients))
    print(f"opened {len(clients)} connections in {time.monotonic() - started:.1f} s", flush=True)
    cpu_before = sum(cpu_seconds(pid) for pid in pids)
    stop_at = time.monotonic() + args.seconds
    interval = 1.0 / args.rate
    restarter = asyncio.create_task(restart_redis()) if redis is not None else None
    results = await asyncio.wait_for(
        asyncio.gather(*(c.run(stop_at, users, interval) for c in clients), return_exceptions=True),
        args.seconds + 120,
    )
    if restarter is not None:
        await restarter
    server_cpu = (sum(cpu_seconds(pid) for pid in pids) - cpu_before) / args.seconds
    for result in results:
        if isinstance(result, BaseException):
            stats.errors.append(f"client failed: {result!r}")
    # Let the deliveries in flight arrive: until nothing arrives for a second (at most 15 s).
    settle_deadline = time.monotonic() + 15
    last = -1
    while time.monotonic() < settle_deadline:
        total = sum(len(s) for inc in stats.incarnations.values() for s in inc.received.values())
        if total == last:
            break
        last = total
        await asyncio.sleep(1)
    print(f"traffic done; settled at {time.monotonic() - started:.1f} s", flush=True)
    problems = await asyncio.to_thread(presence_problems, server, clients)
    open_now = sum(1 for c in clients if c.socket is not None)
    await asyncio.gather(*(c.close() for c in clients), return_exceptions=True)
    # A clean close removes the row at once: nothing may be left (once the server
    # has worked through the closes).
    leftover = -1
    for _ in range(300):
        leftover = (
            await asyncio.to_thread(server.query, "SELECT COUNT(*) FROM skapi_channels_connection")
        )[0][0]
        if leftover == 0:
            break
        await asyncio.sleep(0.1)
    if leftover:
        problems.append(f"{leftover} connection rows left after every client closed")
    problems += await asyncio.to_thread(presence_problems, server, clients)
    sampler.cancel()

    figures = verify(stats)
    acked = sum(1 for sent in stats.sent.values() if sent.acked_at is not None)
    values = [value for _, value in rss]
    half = len(values) // 2
    first_peak = max(values[:half] or [0])
    second_peak = max(values[half:] or [0])
    rss_growing = len(values) > 20 and second_peak > first_peak * 1.5 + 20_000
    print(
        json.dumps(
            {
                "seconds": args.seconds,
                "processes": len(servers),
                "backend": "postgresql+redis" if server.database else "sqlite+in-process",
                "redis_restarted_at": args.restart_redis_at,
                "connections": args.connections,
                "users": len(sessions),
                "groups": GROUPS,
                "messages": len(stats.sent),
                "acked": acked,
                **figures,
                "joins": stats.joins,
                "leaves": stats.leaves,
                "reconnects": stats.reconnects,
                "refused_handshakes_retried": stats.refused_handshakes,
                "notices": stats.notices,
                "open_at_end": open_now,
                "server_cpu_percent": round(100 * server_cpu),
                "latency_ms_p50": percentile(stats.latencies, 0.5),
                "latency_ms_p99": percentile(stats.latencies, 0.99),
                "latency_ms_max": percentile(stats.latencies, 1.0),
                "rss_start_mib": round(values[0] / 1024, 1) if values else None,
                "rss_peak_first_half_mib": round(first_peak / 1024, 1),
                "rss_peak_second_half_mib": round(second_peak / 1024, 1),
                "rss_peak_mib": round(max(values or [0]) / 1024, 1),
                "rss_end_mib": round(values[-1] / 1024, 1) if values else None,
                "errors": len(stats.errors),
                "presence_problems": problems,
            },
            indent=2,
        ),
        flush=True,
    )
    for error in stats.errors[:20]:
        print("error:", error, flush=True)
    failed = (
        figures["lost"] or figures["duplicates"] or figures["out_of_order"] or figures["unsent"]
        or stats.errors or problems or rss_growing or acked == 0
    )  # fmt: skip
    if rss_growing:
        print("RSS kept growing", flush=True)
    print("FAILED" if failed else "OK", flush=True)
    return 1 if failed else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="length of the traffic phase")
    parser.add_argument("--connections", type=int, default=200)
    parser.add_argument(
        "--users", type=int, default=0, help="default: connections / 5, at least 20"
    )
    parser.add_argument(
        "--rate",
        type=float,
        default=0.5,
        help="actions (mostly messages) per connection per second",
    )
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument(
        "--processes",
        type=int,
        default=0,
        help="daphne processes on PostgreSQL (DATABASE_URL) and Redis (REDIS_URL); "
        "0: one process, embedded",
    )
    parser.add_argument(
        "--restart-redis-at",
        type=float,
        default=None,
        help="seconds into the traffic to restart a private redis-server (with --processes)",
    )
    args = parser.parse_args()
    if args.processes and not (os.environ.get("DATABASE_URL") and os.environ.get("REDIS_URL")):
        parser.error("--processes needs DATABASE_URL (PostgreSQL) and REDIS_URL")
    if args.restart_redis_at is not None and not args.processes:
        parser.error("--restart-redis-at needs --processes")
    random.seed(args.seed)
    users = args.users or max(20, -(-args.connections // PER_USER))
    if args.connections > users * MAX_PER_USER:
        parser.error(
            f"{args.connections} connections need at least {args.connections // MAX_PER_USER} users"
        )
    workdir = Path(tempfile.mkdtemp(prefix="skapi-soak-"))
    redis: RedisServer | None = None
    drop = None
    if args.processes:
        database, drop = fresh_database(os.environ["DATABASE_URL"])
        redis_url = os.environ["REDIS_URL"]
        if args.restart_redis_at is not None:
            redis = RedisServer(workdir)
            redis.start()
            redis_url = redis.url
        servers = [Server(workdir, i, database, redis_url) for i in range(args.processes)]
    else:
        servers = [Server(workdir)]
    try:
        sessions = servers[0].prepare(users)
        for server in servers:
            server.start()
        return asyncio.run(drive(args, servers, sessions, redis))
    finally:
        for server in servers:
            server.stop()
        if redis is not None:
            redis.stop()
        if drop is not None:
            drop()
        if os.environ.get("SOAK_KEEP"):
            print("kept", workdir)
        else:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
