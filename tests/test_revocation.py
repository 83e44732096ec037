"""Revocation (docs/protocol.md §13): logout, password change, deactivation and deletion close
the user's sockets with 4001; the session a password was changed in keeps its own."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from django.contrib.auth import get_user, get_user_model, logout, update_session_auth_hash
from django.contrib.auth.hashers import make_password
from django.contrib.sessions.backends.db import SessionStore
from django.test import Client as HttpClient
from django.test import RequestFactory, override_settings

from skapi_channels import revocation
from skapi_channels.models import Connection
from skapi_channels.runtime import runtime
from skapi_channels.tokens import issue_token, token_user
from tests.asgi import application
from tests.conftest import ORIGIN, Client, in_db, session_key_for


async def open_with(headers: list[tuple[bytes, bytes]], path: str = "/ws/realtime/") -> Client:
    communicator = WebsocketCommunicator(application, path, headers=[(b"origin", ORIGIN), *headers])
    connected, code = await communicator.connect(timeout=5)
    assert connected, f"handshake refused ({code})"
    return Client(communicator)


async def open_session(session_key: str) -> Client:
    return await open_with([(b"cookie", f"sessionid={session_key}".encode())])


async def open_token(user: Any) -> Client:
    token, _ = await in_db(issue_token, user)
    return await open_with([], f"/ws/realtime/?token={token}")


async def closed_within(client: Client, seconds: float) -> float:
    """The close code must arrive within ``seconds``; returns how long it took."""
    started = time.monotonic()
    while True:  # frames sent before the close (notices) come first
        left = max(0.01, seconds - (time.monotonic() - started))
        output = await client.communicator.receive_output(left)
        if output["type"] == "websocket.close":
            break
    took = time.monotonic() - started
    assert output["code"] == 4001
    # The ASGI server answers a server close with websocket.disconnect.
    await client.communicator.disconnect(code=4001)
    client.closed = True
    return took


async def still_open(client: Client) -> None:
    await client.send({"action": "keepAlive", "id": "alive"})
    while (answer := await client.receive(5)).get("#code") in NOTICES:
        pass
    assert answer == {"#ack": "alive"}


NOTICES = ("USER_JOINED", "USER_LEFT", "USER_DISCONNECTED")


@pytest.fixture
async def sockets(users, connect):
    """alice in "Room" through two sessions and a token; bob there too."""
    opened: list[Client] = []

    async def make() -> Any:
        from types import SimpleNamespace

        first = await in_db(session_key_for, users.alice)
        second = await in_db(session_key_for, users.alice)
        here = SimpleNamespace(
            first_key=first,
            first=await open_session(first),
            second=await open_session(second),
            token=await open_token(users.alice),
            bob=await connect(users.bob),
        )
        opened.extend([here.first, here.second, here.token])
        await here.bob.join("Room")
        for number, client in enumerate((here.first, here.second, here.token)):
            await client.join("Room", number)
        joins = 0
        while joins < 3:  # bob hears the three joins
            joins += (await here.bob.receive()).get("#code") == "USER_JOINED"
        return here

    yield make
    for client in opened:
        await client.close()


async def disconnects_heard(bob: Client, count: int) -> list[str]:
    heard = []
    while len(heard) < count:
        frame = await bob.receive(5)
        if frame.get("#code") == "USER_DISCONNECTED":
            heard.append(frame["#user_id"])
    return heard


async def test_logout_closes_every_socket_of_the_user(users, sockets, presence_is_true):
    here = await sockets()

    def log_out() -> None:
        log_out_session(here.first_key)

    await in_db(log_out)
    for client in (here.first, here.second, here.token):
        assert await closed_within(client, 2) < 2
    assert await disconnects_heard(here.bob, 3) == [str(users.alice.pk)] * 3
    await still_open(here.bob)
    await asyncio.sleep(0.1)
    assert await in_db(lambda: list(Connection.objects.values_list("user_id", flat=True))) == [
        str(users.bob.pk)
    ]
    await in_db(presence_is_true)


def log_out_session(session_key: str) -> None:
    """What the logout view does with the session ``session_key``."""
    request = RequestFactory().post("/logout/")
    request.session = SessionStore(session_key)
    request.user = get_user(request)
    logout(request)


def change_password_in(session_key: str, user_pk: Any) -> None:
    """What a password-change view does: save the user, then keep its own session."""
    user = get_user_model().objects.get(pk=user_pk)
    request = RequestFactory().post("/password/")
    request.session = SessionStore(session_key)
    request.user = user
    user.set_password("a-new-password-123")
    user.save()
    update_session_auth_hash(request, user)
    request.session.save()


async def test_a_password_change_keeps_only_the_session_it_was_made_in(
    users, sockets, presence_is_true
):
    here = await sockets()
    await in_db(change_password_in, here.first_key, users.alice.pk)
    # The other session and the token's socket close; the changing session's stays.
    assert await closed_within(here.second, 2) < 2
    assert await closed_within(here.token, 2) < 2
    await still_open(here.first)
    assert await disconnects_heard(here.bob, 2) == [str(users.alice.pk)] * 2
    # The sweep agrees: the kept socket now stands on the new hash.
    assert await revocation.sweep(runtime.connections) == 0
    await still_open(here.first)
    await in_db(presence_is_true)


@pytest.mark.parametrize("change", ["deactivate", "delete"])
async def test_deactivation_and_deletion_close_the_users_sockets(
    users, sockets, presence_is_true, change
):
    here = await sockets()

    def apply() -> None:
        alice = get_user_model().objects.get(pk=users.alice.pk)
        if change == "deactivate":
            alice.is_active = False
            alice.save()
        else:
            alice.delete()

    await in_db(apply)
    for client in (here.first, here.second, here.token):
        assert await closed_within(client, 2) < 2
    assert await disconnects_heard(here.bob, 3) == [str(users.alice.pk)] * 3
    await asyncio.sleep(0.1)
    await in_db(presence_is_true)


async def test_saves_that_change_no_login_close_nothing(users, sockets):
    here = await sockets()

    def touch() -> None:
        alice = get_user_model().objects.get(pk=users.alice.pk)
        alice.first_name = "Alice"
        alice.save()
        alice.save(update_fields=["last_login"])

    await in_db(touch)
    for client in (here.first, here.second, here.token):
        await still_open(client)


@pytest.mark.parametrize("change", ["password", "deactivate", "delete"])
async def test_the_sweep_closes_what_another_process_changed(
    users, sockets, presence_is_true, db_queries, change
):
    here = await sockets()
    # Written straight to the database, as another service would: no signal.
    users_table = get_user_model().objects.filter(pk=users.alice.pk)
    if change == "password":
        await in_db(users_table.update, password=make_password("changed-elsewhere"))
    elif change == "deactivate":
        await in_db(users_table.update, is_active=False)
    else:
        await in_db(lambda: get_user_model().objects.filter(pk=users.alice.pk)._raw_delete("default"))
    assert await revocation.sweep(runtime.connections) == 3
    for client in (here.first, here.second, here.token):
        assert await closed_within(client, 2) < 2
    assert await disconnects_heard(here.bob, 3) == [str(users.alice.pk)] * 3
    await still_open(here.bob)
    await in_db(presence_is_true)


async def test_a_sweep_is_one_query_for_all_connections(users, sockets, db_queries):
    await sockets()
    db_queries.clear()
    assert await revocation.sweep(runtime.connections) == 0
    assert len(db_queries) == 1, db_queries


@override_settings(SKAPI_CHANNELS={"REVOCATION_SWEEP_INTERVAL": 0.2})
async def test_the_server_sweeps_on_its_own(users, connect):
    a = await connect(users.alice)
    await in_db(get_user_model().objects.filter(pk=users.alice.pk).update, is_active=False)
    assert await closed_within(a, 5) < 5


# Tokens.


@pytest.mark.django_db(transaction=True)
def test_a_token_dies_with_a_password_change_or_a_logout(django_user_model):
    alice = django_user_model.objects.create_user("alice", password="pw-12345678")
    token, _ = issue_token(alice)
    assert token_user(token) == alice
    alice.set_password("another-one-123")
    alice.save()
    assert token_user(token) is None
    token, _ = issue_token(alice)
    assert token_user(token) == alice
    client = HttpClient()
    client.force_login(alice)
    time.sleep(0.01)
    log_out_session(client.session.session_key)
    assert token_user(token) is None
    assert token_user(issue_token(alice)[0]) == alice  # issued after the logout


@pytest.mark.django_db(transaction=True)
def test_a_token_without_the_auth_hash_is_refused(django_user_model):
    from django.core import signing

    from skapi_channels.tokens import SALT

    alice = django_user_model.objects.create_user("alice", password="pw-12345678")
    old_style = signing.dumps({"u": str(alice.pk)}, salt=SALT, compress=False)
    assert token_user(old_style) is None
    client = HttpClient()
    answer = client.post(
        "/realtime/groups/", "{}", content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {old_style}",
    )
    assert answer.status_code == 401


async def test_a_token_issued_before_a_password_change_opens_no_socket(users, connect):
    token, _ = await in_db(issue_token, users.alice)

    def change() -> None:
        alice = get_user_model().objects.get(pk=users.alice.pk)
        alice.set_password("changed-123456")
        alice.save()

    await in_db(change)
    communicator = WebsocketCommunicator(
        application, f"/ws/realtime/?token={token}", headers=[(b"origin", ORIGIN)]
    )
    connected, _ = await communicator.connect(timeout=5)
    assert not connected
    await communicator.disconnect()
    await database_sync_to_async(lambda: None)()
