"""Fixtures for driving the real consumer with WebsocketCommunicator."""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import hypothesis
import pytest
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY, get_user_model
from django.contrib.sessions.backends.db import SessionStore
from django.db import connections
from django.db.backends import utils as db_utils

from skapi_channels import presence
from skapi_channels.limits import _limiters
from skapi_channels.runtime import runtime
from tests.asgi import application

# The fixtures the app ships for projects' tests (``realtime``).
pytest_plugins = ["skapi_channels.pytest_plugin"]

# CI runs the property tests on a fixed sequence of examples, so that a run is
# repeatable; elsewhere each run draws new ones (--hypothesis-seed replays one).
hypothesis.settings.register_profile("ci", derandomize=True)
if os.environ.get("CI"):
    hypothesis.settings.load_profile("ci")

ORIGIN = b"http://localhost"


def session_key_for(user: Any) -> str:
    session = SessionStore()
    session[SESSION_KEY] = str(user.pk)
    session[BACKEND_SESSION_KEY] = "django.contrib.auth.backends.ModelBackend"
    session[HASH_SESSION_KEY] = user.get_session_auth_hash()
    session.create()
    return session.session_key or ""


class Client:
    """A WebSocket client of the real ASGI application."""

    def __init__(self, communicator: WebsocketCommunicator) -> None:
        self.communicator = communicator
        self.cid: str | None = None
        self.closed = False

    async def send(self, frame: dict[str, Any] | str) -> None:
        text = frame if isinstance(frame, str) else json.dumps(frame)
        await self.communicator.send_to(text_data=text)

    async def send_bytes(self, data: bytes) -> None:
        await self.communicator.send_to(bytes_data=data)

    async def receive(self, timeout: float = 2) -> dict[str, Any]:
        output = await self.communicator.receive_output(timeout)
        if output["type"] == "websocket.close":
            self.closed = True
            raise AssertionError(f"socket closed with {output.get('code')}")
        return json.loads(output["text"])

    async def receive_close(self, timeout: float = 2) -> int | None:
        output = await self.communicator.receive_output(timeout)
        assert output["type"] == "websocket.close", output
        self.closed = True
        return output.get("code")

    async def request(self, frame: dict[str, Any], timeout: float = 2) -> dict[str, Any]:
        """Send a frame with an id and return the ack or error answering it,
        asserting that nothing else arrives first."""
        await self.send(frame)
        answer = await self.receive(timeout)
        assert answer.get("#ack", answer.get("#id")) == frame.get("id"), answer
        return answer

    async def join(self, group: str | None, frame_id: int = 1, **fields: Any) -> dict[str, Any]:
        """Join (or leave) and return the ack; a join's ack also says where the
        group's stream stands (``#epoch``, ``#offset``) while history is on."""
        frame = {"action": "joinRoom", "rid": group, "id": frame_id, **fields}
        answer = await self.request(frame)
        assert answer.get("#ack") == frame_id, answer
        assert set(answer) <= {"#ack", "#epoch", "#offset", "#recovered"}, answer
        return answer

    async def nothing(self, timeout: float = 0.2) -> None:
        assert await self.communicator.receive_nothing(timeout), "unexpected frame"

    async def close(self) -> None:
        if not self.closed:
            await self.communicator.disconnect()
            self.closed = True


@pytest.fixture
def db_queries() -> Iterator[list[str]]:
    """Every SQL statement run while the test runs, on any thread."""
    statements: list[str] = []
    original = db_utils.CursorWrapper._execute

    def counting(self: Any, sql: str, params: Any, *args: Any) -> Any:
        statements.append(sql)
        return original(self, sql, params, *args)

    db_utils.CursorWrapper._execute = counting  # type: ignore[method-assign]
    try:
        yield statements
    finally:
        db_utils.CursorWrapper._execute = original  # type: ignore[method-assign]


@pytest.fixture
def make_user(transactional_db: None) -> Callable[..., Any]:
    def make(username: str, **fields: Any) -> Any:
        return get_user_model().objects.create_user(username, password="pw-12345678", **fields)

    return make


@pytest.fixture
def users(make_user: Callable[..., Any]) -> Any:
    """alice, bob and carol, made before the test's event loop starts."""
    from types import SimpleNamespace

    return SimpleNamespace(**{name: make_user(name) for name in ("alice", "bob", "carol")})


@pytest.fixture
async def connect(transactional_db: None) -> AsyncIterator[Callable[..., Any]]:
    """``await connect(user)``: an accepted Client; closed after the test."""
    clients: list[Client] = []
    _limiters.clear()  # every test starts with fresh handshake and creation budgets

    async def open_socket(
        user: Any = None,
        *,
        path: str = "/ws/realtime/",
        origin: bytes | None = ORIGIN,
        accept: bool = True,
    ) -> Client:
        headers = []
        if user is not None:
            key = await database_sync_to_async(session_key_for)(user)
            headers.append((b"cookie", f"sessionid={key}".encode()))
        if origin is not None:
            headers.append((b"origin", origin))
        communicator = WebsocketCommunicator(application, path, headers=headers)
        connected, code = await communicator.connect(timeout=5)
        client = Client(communicator)
        clients.append(client)
        if accept:
            assert connected, f"handshake refused ({code})"
        else:
            assert not connected, "handshake accepted"
            client.closed = True
        return client

    yield open_socket
    for client in clients:
        await client.close()
    await runtime.stop()
    presence._known_users.clear()
    # The database thread keeps its connection between tests; close it so that the
    # test database can be dropped at the end of the run.
    await database_sync_to_async(connections.close_all)()


@pytest.fixture
def presence_is_true() -> Callable[[], None]:
    """Assert the counters equal a fresh count of the connection rows."""
    from collections import defaultdict

    from skapi_channels.models import Connection, GroupMembership, OnlineUser, RealtimeGroup

    def check() -> None:
        users: dict[str, set[str]] = defaultdict(set)
        per_pair: dict[tuple[str, str], int] = defaultdict(int)
        per_user: dict[str, int] = defaultdict(int)
        for group, user in Connection.objects.values_list("group_name", "user_id"):
            per_user[user] += 1
            if group is not None:
                users[group].add(user)
                per_pair[(group, user)] += 1
        assert dict(RealtimeGroup.objects.values_list("name", "number_of_users")) == {
            group: len(members) for group, members in users.items()
        }
        assert {
            (m.group_name, m.user_id): m.connections for m in GroupMembership.objects.all()
        } == dict(per_pair)
        assert dict(OnlineUser.objects.values_list("user_id", "connections")) == dict(per_user)

    return check


async def in_db(function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    return await database_sync_to_async(function)(*args, **kwargs)
