"""Real deployments for the multi-process tests: daphne processes sharing Redis and
a fresh PostgreSQL database.

``DATABASE_URL`` names a PostgreSQL server (any database on it: the fixture creates
and drops its own); ``REDIS_URL`` a Redis server (each run uses its own key prefix).
Without both, every test here is skipped.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections import defaultdict
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest
import redis as redis_sync
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from tests.live_server import RedisServer, free_port, wait_for_port

ROOT = Path(__file__).resolve().parents[2]
SECRET_KEY = "scaleout-tests-" + "k" * 40
# Fast liveness so a kill -9 is cleaned up in about 3 s.
FAST = {"HEARTBEAT_INTERVAL": 0.5, "DEAD_AFTER": 2.0, "REAP_INTERVAL": 0.5}
REAP_BOUND = FAST["DEAD_AFTER"] + 2 * FAST["REAP_INTERVAL"] + FAST["HEARTBEAT_INTERVAL"] + 1.0
USERS = 12

TABLES = SimpleNamespace(
    server="skapi_channels_serverprocess",
    connection="skapi_channels_connection",
    membership="skapi_channels_groupmembership",
    group="skapi_channels_realtimegroup",
    online="skapi_channels_onlineuser",
)


def services() -> tuple[str, str]:
    database_url = os.environ.get("DATABASE_URL", "")
    redis_url = os.environ.get("REDIS_URL", "")
    if not database_url or not redis_url:
        pytest.skip("set DATABASE_URL (PostgreSQL) and REDIS_URL to run the scale-out tests")
    if urlsplit(database_url).scheme not in {"postgres", "postgresql", "pgsql"}:
        pytest.skip("the scale-out tests need DATABASE_URL to name PostgreSQL")
    return database_url, redis_url


def with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, "/" + name, parts.query, parts.fragment))


class Database:
    """A fresh PostgreSQL database, migrated, with users u0..u11."""

    def __init__(self, server_url: str) -> None:
        import psycopg

        self.name = "skapi_scaleout_" + secrets.token_hex(4)
        self.server_url = server_url
        self.url = with_database(server_url, self.name)
        with psycopg.connect(
            server_url.replace("postgres://", "postgresql://", 1), autocommit=True
        ) as conn:
            conn.execute(f'CREATE DATABASE "{self.name}"')

    def dsn(self) -> str:
        return self.url.replace("postgres://", "postgresql://", 1)

    def drop(self) -> None:
        import psycopg

        with psycopg.connect(
            self.server_url.replace("postgres://", "postgresql://", 1), autocommit=True
        ) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')

    def query(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        import psycopg

        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            cursor = conn.execute(sql, params)
            return list(cursor.fetchall()) if cursor.description is not None else []

    def assert_counts_true(self) -> None:
        """The counts equal a fresh count of the connection rows."""
        users: dict[str, set[str]] = defaultdict(set)
        per_pair: dict[tuple[str, str], int] = defaultdict(int)
        per_user: dict[str, int] = defaultdict(int)
        for group, user in self.query(f"SELECT group_name, user_id FROM {TABLES.connection}"):
            per_user[user] += 1
            if group is not None:
                users[group].add(user)
                per_pair[(group, user)] += 1
        groups = dict(self.query(f"SELECT name, number_of_users FROM {TABLES.group}"))
        assert groups == {g: len(members) for g, members in users.items()}
        pairs = {
            (g, u): n
            for g, u, n in self.query(
                f"SELECT group_name, user_id, connections FROM {TABLES.membership}"
            )
        }
        assert pairs == dict(per_pair)
        online = dict(self.query(f"SELECT user_id, connections FROM {TABLES.online}"))
        assert online == dict(per_user)


def run_manage(env: dict[str, str], *args: str) -> str:
    result = subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def base_env(
    database_url: str,
    redis_url: str,
    prefix: str,
    liveness: dict[str, float] = FAST,
    capacity: int | None = None,
    layer_backend: str | None = None,
) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST")}
    env.update(
        DJANGO_SETTINGS_MODULE="project.settings",
        DJANGO_SECRET_KEY=SECRET_KEY,
        DJANGO_DEBUG="0",
        DATABASE_URL=database_url,
        REDIS_URL=redis_url,
        CHANNEL_LAYER_PREFIX=prefix,
        SKAPI_CHANNELS_JSON=json.dumps(liveness),
        PYTHONUNBUFFERED="1",
    )
    if capacity is not None:
        env["CHANNEL_LAYER_CAPACITY"] = str(capacity)
    if layer_backend is not None:
        env["CHANNEL_LAYER_BACKEND"] = layer_backend
    return env


@pytest.fixture(scope="session")
def database() -> Iterator[Database]:
    database_url, redis_url = services()
    db = Database(database_url)
    try:
        env = base_env(db.url, redis_url, "unused")
        run_manage(env, "migrate", "--no-input", "-v", "0")
        run_manage(
            env,
            "shell",
            "-c",
            "from django.contrib.auth import get_user_model as g; "
            + f"[g().objects.create_user(f'u{{i}}', password='pw-12345678') for i in range({USERS})]; "
            # A password hash the tests know, so they can sign tokens carrying its auth hash.
            + f"g().objects.update(password={FIXED_PASSWORD!r})",
        )
        yield db
    finally:
        db.drop()


@dataclass
class Server:
    """One daphne process of the deployment."""

    name: str
    port: int
    env: dict[str, str]
    log: Path
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "daphne",
                    "-b",
                    "127.0.0.1",
                    "-p",
                    str(self.port),
                    "project.asgi:application",
                ],
                cwd=ROOT,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        wait_for_port(self.port, 30, self.process)

    def signal(self, number: int) -> None:
        assert self.process is not None
        self.process.send_signal(number)

    def wait(self, timeout: float) -> int:
        assert self.process is not None
        return self.process.wait(timeout)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)

    def post(self, path: str, body: dict[str, Any], user: int) -> dict[str, Any]:
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.port}{path}",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json", "Authorization": f"Bearer {token(user)}"},
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            answer: dict[str, Any] = json.loads(response.read())
        return answer

    async def apost(self, path: str, body: dict[str, Any], user: int) -> dict[str, Any]:
        return await asyncio.to_thread(self.post, path, body, user)


# Every user's password field: tokens carry the auth hash derived from it.
FIXED_PASSWORD = "!scaleout-users-log-in-with-tokens"


def token(user: int) -> str:
    """A handshake token for user u<user> (its pk is user + 1), signed with the
    deployment's SECRET_KEY without touching any presence table."""
    from django.contrib.auth import get_user_model
    from django.test import override_settings

    from skapi_channels.tokens import issue_token

    with override_settings(SECRET_KEY=SECRET_KEY):
        value, _ = issue_token(get_user_model()(pk=user + 1, password=FIXED_PASSWORD))
    return value


class Client:
    """A WebSocket client of one server, keeping every frame it receives."""

    def __init__(self, server: Server, user: int) -> None:
        self.server = server
        self.user = user
        self.user_id = str(user + 1)
        self.socket: ClientConnection | None = None
        self.frames: list[dict[str, Any]] = []
        self.arrived = asyncio.Event()
        self.closed_with: int | None = None
        self._reader: asyncio.Task[None] | None = None
        self._next_id = 0
        self._acks: dict[Any, asyncio.Future[dict[str, Any]]] = {}

    async def open(self) -> Client:
        url = f"ws://127.0.0.1:{self.server.port}/ws/realtime/?token={token(self.user)}"
        self.socket = await connect(url, open_timeout=10, max_size=2**22)
        self._reader = asyncio.create_task(self._read())
        return self

    async def _read(self) -> None:
        assert self.socket is not None
        try:
            async for text in self.socket:
                frame = json.loads(text)
                key = frame.get("#ack", frame.get("#id"))
                waiter = self._acks.pop(key, None) if key is not None else None
                if waiter is not None and not waiter.done():
                    waiter.set_result(frame)
                else:
                    self.frames.append(frame)
                    self.arrived.set()
        except ConnectionClosed:
            pass
        finally:
            self.closed_with = self.socket.close_code if self.socket else None
            for waiter in self._acks.values():
                if not waiter.done():
                    waiter.set_exception(ConnectionError("socket closed"))
            self.arrived.set()

    async def request(self, frame: dict[str, Any], timeout: float = 10) -> dict[str, Any]:
        assert self.socket is not None
        self._next_id += 1
        frame = {**frame, "id": self._next_id}
        waiter: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._acks[self._next_id] = waiter
        await self.socket.send(json.dumps(frame))
        return await asyncio.wait_for(waiter, timeout)

    async def join(self, group: str | None) -> None:
        answer = await self.request({"action": "joinRoom", "rid": group})
        assert "#ack" in answer, answer

    async def broadcast(self, group: str, content: Any) -> None:
        answer = await self.request({"action": "broadcast", "rid": group, "content": content})
        assert "#ack" in answer, answer

    async def send_private(self, user_id: str, content: Any) -> None:
        answer = await self.request({"action": "sendMessage", "uid": user_id, "content": content})
        assert "#ack" in answer, answer

    async def wait_for(self, predicate: Any, timeout: float) -> dict[str, Any]:
        """The first kept frame matching ``predicate`` (removed from the list)."""
        deadline = time.monotonic() + timeout
        while True:
            for index, frame in enumerate(self.frames):
                if predicate(frame):
                    return self.frames.pop(index)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no matching frame in {timeout} s; got {self.frames}")
            self.arrived.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.arrived.wait(), remaining)

    async def close(self) -> None:
        if self.socket is not None:
            await self.socket.close()
        if self._reader is not None:
            await asyncio.wait_for(self._reader, 10)


@dataclass
class Deployment:
    database: Database
    redis_url: str
    servers: list[Server] = field(default_factory=list)
    clients: list[Client] = field(default_factory=list)

    async def client(self, server: Server, user: int) -> Client:
        client = await Client(server, user).open()
        self.clients.append(client)
        return client

    def server_ids(self) -> set[str]:
        return {row[0] for row in self.database.query(f"SELECT id FROM {TABLES.server}")}


def make_servers(
    tmp_path: Path,
    database: Database,
    redis_url: str,
    count: int,
    liveness: dict[str, float] = FAST,
    capacity: int | None = None,
    layer_backend: str | None = None,
) -> list[Server]:
    prefix = "skapi-test-" + secrets.token_hex(4)
    env = base_env(database.url, redis_url, prefix, liveness, capacity, layer_backend)
    names = "ABCDEFGH"
    return [
        Server(names[i], free_port(), env, tmp_path / f"daphne-{names[i]}.log")
        for i in range(count)
    ]


def delete_keys(redis_url: str, prefix: str) -> None:
    """Remove the keys of one run from the shared Redis."""
    from redis import Redis

    redis = Redis.from_url(redis_url)
    try:
        for key in redis.scan_iter(match=f"{prefix}*", count=1000):
            redis.delete(key)
    finally:
        redis.close()


def clean_tables(database: Database) -> None:
    for table in (TABLES.connection, TABLES.membership, TABLES.group, TABLES.online, TABLES.server):
        database.query(f"DELETE FROM {table}")


async def start(deployment: Deployment) -> None:
    await asyncio.gather(*(asyncio.to_thread(server.start) for server in deployment.servers))


async def teardown(deployment: Deployment) -> None:
    for client in deployment.clients:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(client.close(), 10)
    await asyncio.gather(*(asyncio.to_thread(server.stop) for server in deployment.servers))


@pytest.fixture
def liveness() -> dict[str, float]:
    """The servers' liveness settings; a test may parametrize it."""
    return FAST


@pytest.fixture
def capacity() -> int | None:
    """The channel layer's capacity per process (None: the settings' default); a
    test may parametrize it."""
    return None


@pytest.fixture
def layer_backend() -> str | None:
    """The servers' channel layer class, a dotted path (None: the settings' default,
    the Redis fan-out layer); a test may parametrize it."""
    return None


@pytest.fixture
async def deployment(
    database: Database,
    tmp_path: Path,
    liveness: dict[str, float],
    capacity: int | None,
    layer_backend: str | None,
) -> AsyncIterator[Deployment]:
    """Two daphne processes on the shared Redis and the run's database."""
    _, redis_url = services()
    clean_tables(database)
    deployment = Deployment(
        database,
        redis_url,
        make_servers(tmp_path, database, redis_url, 2, liveness, capacity, layer_backend),
    )
    try:
        await start(deployment)
        yield deployment
    finally:
        await teardown(deployment)
        delete_keys(redis_url, deployment.servers[0].env["CHANNEL_LAYER_PREFIX"])
        for server in deployment.servers:
            print(f"--- {server.log.name}\n{server.log.read_text()[-4000:]}")
    assert_all_retired(deployment)


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[RedisServer]:
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed, so no private Redis can be restarted")
    server = RedisServer(tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
async def deployment_on_private_redis(
    database: Database, private_redis: RedisServer, tmp_path: Path
) -> AsyncIterator[tuple[Deployment, RedisServer]]:
    """Two daphne processes on a Redis of their own, so a test may restart it."""
    clean_tables(database)
    deployment = Deployment(
        database, private_redis.url, make_servers(tmp_path, database, private_redis.url, 2)
    )
    try:
        await start(deployment)
        yield deployment, private_redis
    finally:
        await teardown(deployment)
        for server in deployment.servers:
            print(f"--- {server.log.name}\n{server.log.read_text()[-4000:]}")
    assert_all_retired(deployment)


def assert_all_retired(deployment: Deployment) -> None:
    """Every process stopped with SIGTERM removed its rows (graceful shutdown)."""
    for server in deployment.servers:
        assert server.process is None or server.process.returncode in (0, -signal.SIGKILL)
    assert deployment.server_ids() == set()
    assert deployment.database.query(f"SELECT count(*) FROM {TABLES.connection}") == [(0,)]
    deployment.database.assert_counts_true()


def http_error_body(error: urllib.error.HTTPError) -> str:
    return error.read().decode(errors="replace")


class NamedLayer:
    """Settings for a fan-out layer whose every Redis connection carries one name
    (and keys one prefix), and the count of the connections open under it."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.name = "skapi-sync-test-" + secrets.token_hex(4)
        config = {"hosts": [{"address": url, "client_name": self.name}], "prefix": self.name}
        self.layers = {
            "default": {"BACKEND": "skapi_channels.redis_fanout.RedisFanoutLayer", "CONFIG": config}
        }
        self.redis = redis_sync.Redis.from_url(url)

    def connections(self) -> int:
        return sum(1 for client in self.redis.client_list() if client["name"] == self.name)

    def all_closed(self) -> bool:
        # Redis notices a closed socket a moment after the client closed it.
        for _ in range(100):
            if self.connections() == 0:
                return True
            time.sleep(0.02)
        return False

    def close(self) -> None:
        delete_keys(self.url, self.name)
        self.redis.close()
