"""Test helpers for code built around skapi_channels: a room of connected users.

``Channels``' ``WebsocketCommunicator`` drives one socket; ``Realtime`` drives many,
each authenticated as a user with a real session, through the project's own ASGI
application (``settings.ASGI_APPLICATION``) in the test's process, on the real
consumer, channel layer and presence tables::

    async def test_hello(realtime):            # the pytest fixture (pytest_plugin.py)
        alice, bob = await realtime.connect_users("alice", "bob")
        await alice.join("lobby")
        await bob.join("lobby")
        await alice.expect_notice("USER_JOINED", user_id=bob.user_id)
        await alice.post("hi", "lobby")
        await bob.expect_message("hi", sender=alice.user_id)
        assert await realtime.list_users("lobby") == [alice.user_id, bob.user_id]

Every ``expect_*`` waits for the first frame that matches and keeps the others for
later calls, so frames that arrive in another order than expected (an ack before
the sender's own copy of a broadcast, a notice between two messages) do not break
a test. A wait that times out fails with what did arrive.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from django.conf import settings
from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY, get_user_model
from django.utils.module_loading import import_string

from skapi_channels import protocol
from skapi_channels.conf import conf
from skapi_channels.queries import list_groups, list_users, parse_group_query, parse_user_query

__all__ = ["ANY", "Realtime", "RealtimeClient", "RealtimeError", "session_key_for"]

PASSWORD = "realtime-test-password"


class _Any:
    def __eq__(self, other: object) -> bool:
        return True

    def __repr__(self) -> str:
        return "ANY"


ANY: Any = _Any()


class RealtimeError(AssertionError):
    """The server refused a frame: ``code`` and ``message`` are its ``#code`` and ``#error``."""

    def __init__(self, frame: dict[str, Any]) -> None:
        super().__init__(f"{frame.get('#code')}: {frame.get('#error')}")
        self.code = frame.get("#code")
        self.message = frame.get("#error")
        self.frame = frame


def session_key_for(user: Any) -> str:
    """A new session of the project's session engine in which ``user`` is logged in."""
    from importlib import import_module

    store = import_module(settings.SESSION_ENGINE).SessionStore()
    store[SESSION_KEY] = user._meta.pk.value_to_string(user)
    store[BACKEND_SESSION_KEY] = settings.AUTHENTICATION_BACKENDS[0]
    store[HASH_SESSION_KEY] = user.get_session_auth_hash()
    store.create()
    return str(store.session_key)


def default_application() -> Any:
    """The project's ASGI application, or the app's socket alone when it has none."""
    if getattr(settings, "ASGI_APPLICATION", None):
        return import_string(settings.ASGI_APPLICATION)
    from channels.routing import URLRouter

    from skapi_channels.routing import websocket_urlpatterns

    return URLRouter(websocket_urlpatterns)


class RealtimeClient:
    """One connected socket of one user, with awaitable helpers."""

    def __init__(self, communicator: WebsocketCommunicator, user: Any, user_id: str) -> None:
        self.communicator = communicator
        self.user = user
        self.user_id = user_id
        self.group: str | None = None
        self.closed = False
        self.close_code: int | None = None
        self.received: list[dict[str, Any]] = []  # arrived, not yet taken by expect_*
        self._next_id = 0

    def __repr__(self) -> str:
        return f"<RealtimeClient user_id={self.user_id!r} group={self.group!r}>"

    # Sending.

    async def send(self, frame: dict[str, Any] | str) -> None:
        """Send a frame as it is (a dict is encoded as JSON); nothing is awaited."""
        text = frame if isinstance(frame, str) else json.dumps(frame)
        await self.communicator.send_to(text_data=text)

    async def request(self, frame: dict[str, Any], timeout: float = 5) -> dict[str, Any]:
        """Send ``frame`` with a fresh id and return its ack; raise ``RealtimeError``
        when the server refuses it. Other frames arriving meanwhile are kept."""
        self._next_id += 1
        frame_id = f"t{self._next_id}"
        await self.send({**frame, "id": frame_id})
        answer = await self._take(
            lambda f: f.get("#ack") == frame_id or ("#error" in f and f.get("#id") == frame_id),
            timeout,
            f"the answer to {frame!r}",
        )
        if "#error" in answer:
            raise RealtimeError(answer)
        return answer

    async def join(self, group: str | None, timeout: float = 5) -> dict[str, Any]:
        """Join ``group`` (``None`` leaves), once the server has acked it."""
        answer = await self.request({"action": "joinRoom", "rid": group}, timeout)
        self.group = group
        return answer

    async def leave(self, timeout: float = 5) -> dict[str, Any]:
        return await self.join(None, timeout)

    async def broadcast(self, content: Any, group: str | None = None) -> dict[str, Any]:
        return await self.request(
            {"action": "broadcast", "rid": group or self.group, "content": content}
        )

    async def send_private(self, user_id: str, content: Any) -> dict[str, Any]:
        return await self.request({"action": "sendMessage", "uid": str(user_id), "content": content})

    async def post(self, content: Any, recipient: str) -> dict[str, Any]:
        """As the JS client's ``postRealtime``: to the joined group when ``recipient``
        is that group, otherwise a private message to that user_id."""
        if recipient == self.group:
            return await self.broadcast(content)
        return await self.send_private(recipient, content)

    async def keep_alive(self) -> dict[str, Any]:
        return await self.request({"action": "keepAlive"})

    # Receiving.

    async def receive(self, timeout: float = 5) -> dict[str, Any]:
        """The next frame not yet taken, in arrival order."""
        return await self._take(lambda frame: True, timeout, "any frame")

    async def expect_message(
        self, content: Any = ANY, *, sender: str | None = None, group: str | None = None,
        timeout: float = 5,
    ) -> dict[str, Any]:
        """The first group message with ``content`` (from ``sender``, in ``group``)."""
        return await self._take(
            lambda f: "#message" in f
            and content == f["#message"]
            and (sender is None or f.get("#user_id") == sender)
            and (group is None or f.get("#srid") == group),
            timeout,
            f"a message {content!r}" + (f" from {sender!r}" if sender else ""),
        )

    async def expect_private(
        self, content: Any = ANY, *, sender: str | None = None, timeout: float = 5
    ) -> dict[str, Any]:
        """The first private message with ``content`` (from ``sender``)."""
        return await self._take(
            lambda f: "#private" in f
            and content == f["#private"]
            and (sender is None or f.get("#user_id") == sender),
            timeout,
            f"a private message {content!r}" + (f" from {sender!r}" if sender else ""),
        )

    async def expect_notice(
        self, code: str | None = None, *, user_id: str | None = None, timeout: float = 5
    ) -> dict[str, Any]:
        """The first notice with ``code`` (``USER_JOINED``, ``USER_LEFT``,
        ``USER_DISCONNECTED``, ``SERVER_NOTICE``) about ``user_id``."""
        return await self._take(
            lambda f: "#notice" in f
            and (code is None or f.get("#code") == code)
            and (user_id is None or f.get("#user_id") == user_id),
            timeout,
            f"a notice {code or ''}" + (f" about {user_id!r}" if user_id else ""),
        )

    async def expect_error(self, code: str | None = None, timeout: float = 5) -> dict[str, Any]:
        """The first error frame (with ``code``), such as ``MISSED_MESSAGES``."""
        return await self._take(
            lambda f: "#error" in f and (code is None or f.get("#code") == code),
            timeout,
            f"an error {code or ''}",
        )

    async def expect_nothing(self, timeout: float = 0.2) -> None:
        """Nothing arrives within ``timeout`` seconds (and nothing is waiting)."""
        assert not self.received, f"{self} has frames waiting: {self.received}"
        if not self.closed:
            try:
                frame = await self._read(timeout)
            except TimeoutError:
                return
            if frame is not None:
                self.received.append(frame)
            raise AssertionError(f"{self} received {frame or 'a close'}")

    async def expect_close(self, timeout: float = 5) -> int | None:
        """Wait for the server to close the socket; its close code."""
        deadline = asyncio.get_running_loop().time() + timeout
        while not self.closed:
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                raise AssertionError(f"{self} was not closed within {timeout} s")
            frame = await self._read(left)
            if frame is not None:
                self.received.append(frame)
        return self.close_code

    async def close(self) -> None:
        if not self.closed:
            self.closed = True
            await self.communicator.disconnect()

    async def _read(self, timeout: float) -> dict[str, Any] | None:
        """One frame from the socket; None when it closed. Unlike the communicator's
        ``receive_output``, a timeout leaves the application running."""
        try:
            output = await asyncio.wait_for(self.communicator.output_queue.get(), timeout)
        except TimeoutError:
            if self.communicator.future.done():
                self.communicator.future.result()  # the application's own exception
            raise
        if output["type"] == "websocket.close":
            self.closed = True
            self.close_code = output.get("code")
            return None
        return protocol.loads(output["text"])

    async def _take(
        self, matches: Callable[[dict[str, Any]], bool], timeout: float, what: str
    ) -> dict[str, Any]:
        for index, frame in enumerate(self.received):
            if matches(frame):
                return self.received.pop(index)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not self.closed:
            left = deadline - loop.time()
            if left <= 0:
                break
            try:
                frame = await self._read(left)
            except TimeoutError:
                break
            if frame is None:
                break
            if matches(frame):
                return frame
            self.received.append(frame)
        state = f"closed with {self.close_code}" if self.closed else f"not within {timeout} s"
        raise AssertionError(f"{self} expected {what}, {state}; received {self.received}")


class Realtime:
    """Connects users to the app's consumer in this process and closes them after.

    ``application`` defaults to the project's ``ASGI_APPLICATION``; ``origin`` is
    the ``Origin`` header of the handshakes (none by default: a non-browser client).
    """

    def __init__(self, application: Any = None, origin: str | None = None) -> None:
        self._application = application
        self.origin = origin
        self.clients: list[RealtimeClient] = []

    @property
    def application(self) -> Any:
        if self._application is None:
            self._application = default_application()
        return self._application

    async def user(self, username: str, **fields: Any) -> Any:
        """The user called ``username``, created (with ``fields``) if there is none."""

        def get_or_create() -> Any:
            model = get_user_model()
            found = model._default_manager.filter(**{model.USERNAME_FIELD: username}).first()
            if found is not None:
                return found
            return model._default_manager.create_user(username, password=PASSWORD, **fields)

        return await database_sync_to_async(get_or_create)()

    async def connect(
        self, user: Any, *, path: str | None = None, accept: bool = True
    ) -> RealtimeClient:
        """A socket of ``user`` (a user, or a username to get or create), logged in
        with a session of its own. ``accept=False`` expects the handshake refused."""
        if isinstance(user, str):
            user = await self.user(user)
        key = await database_sync_to_async(session_key_for)(user)
        headers = [(b"cookie", f"{settings.SESSION_COOKIE_NAME}={key}".encode())]
        if self.origin is not None:
            headers.append((b"origin", self.origin.encode()))
        communicator = WebsocketCommunicator(
            self.application, path or "/" + conf.WEBSOCKET_PATH, headers=headers
        )
        connected, code = await communicator.connect(timeout=10)
        user_id = str(await database_sync_to_async(conf.USER_ID_FUNCTION)(user))
        client = RealtimeClient(communicator, user, user_id)
        if accept:
            assert connected, f"the handshake of {user_id!r} was refused ({code})"
            self.clients.append(client)
        else:
            assert not connected, f"the handshake of {user_id!r} was accepted"
            client.closed = True
        return client

    async def connect_users(self, *users: Any) -> list[RealtimeClient]:
        """One socket for each of ``users`` (users or usernames), in order."""
        return [await self.connect(user) for user in users]

    async def list_groups(self, **body: Any) -> list[dict[str, Any]]:
        """``getRealtimeGroups``: the groups' ``list`` for a request body
        (``searchFor``, ``value``, ``condition``, ...), first page."""
        page = await database_sync_to_async(lambda: list_groups(parse_group_query(body)))()
        return page.items

    async def list_users(self, group: str, **body: Any) -> list[str]:
        """``getRealtimeUsers``: the user_ids connected to ``group``, one per
        connection, in the listing's order (first page)."""
        page = await database_sync_to_async(
            lambda: list_users(parse_user_query({"group": group, **body}))
        )()
        return [item["user_id"] for item in page.items]

    async def close(self) -> None:
        """Close every socket, then stop this process's realtime runtime."""
        for client in self.clients:
            await client.close()
        self.clients.clear()
        from django.db import connections

        from skapi_channels import presence
        from skapi_channels.limits import _limiters
        from skapi_channels.runtime import runtime

        await runtime.stop()
        known = getattr(presence, "_known_users", None)
        if known is not None:
            known.clear()
        _limiters.clear()
        # The database thread keeps its connection between tests; close it so the
        # test database can be dropped at the end of the run.
        await database_sync_to_async(connections.close_all)()


def _live_server_setup(set_database_connection: Callable[[], None]) -> None:
    """In the forked server process: the test database, and none of the parent's
    threads and loop-bound state: asgiref's executor for thread-sensitive calls (its
    worker thread stayed in the parent), channel layers, this process's runtime."""
    from concurrent.futures import ThreadPoolExecutor

    from asgiref.sync import SyncToAsync
    from channels.layers import channel_layers

    from skapi_channels.runtime import runtime

    set_database_connection()
    SyncToAsync.single_thread_executor = ThreadPoolExecutor(max_workers=1)
    channel_layers.backends = {}
    runtime.__init__()  # type: ignore[misc]  # a fresh identity and no tasks


class LiveServer:
    """The project's ASGI application served by daphne in a child process, on the
    test database, for clients outside the test's process (a browser, a mobile
    client's test suite, ``websockets``). Needs a file-backed test database."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.host = host
        self.port = 0
        self._process: Any = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def ws_url(self) -> str:
        """The socket's URL: ``ws://host:port/ws/realtime/``."""
        return f"ws://{self.host}:{self.port}/{conf.WEBSOCKET_PATH}"

    def start(self, timeout: float = 30) -> None:
        from functools import partial

        from channels.testing.live import make_application, set_database_connection
        from daphne.testing import DaphneProcess
        from django.db import connections

        for connection in connections.all():
            if connection.vendor == "sqlite" and connection.is_in_memory_db():
                raise RuntimeError(
                    "The live server needs a file-backed test database: set "
                    "DATABASES['default']['TEST']['NAME'] to a file path."
                )
        self._process = DaphneProcess(
            self.host,
            partial(make_application, static_wrapper=None),
            setup=partial(_live_server_setup, set_database_connection),
        )
        self._process.start()
        if not self._process.ready.wait(timeout):
            self.stop()
            raise RuntimeError(f"daphne did not start within {timeout} s")
        self.port = self._process.port.value

    def stop(self) -> None:
        if self._process is not None:
            self._process.terminate()
            self._process.join(15)
            self._process = None

    def cookie_for(self, user: Any) -> str:
        """A ``Cookie`` header value that logs ``user`` in (a new session)."""
        return f"{settings.SESSION_COOKIE_NAME}={session_key_for(user)}"
