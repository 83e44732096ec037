"""Security properties of the socket and the endpoints (docs/threat-model.md).

Spoofing of sender fields, broadcasting into a group not joined, reading other
users' private messages, cross-site handshakes, forged or borrowed tokens,
unauthenticated or cross-site HTTP requests, the admin, and errors that would
reveal internals.
"""

from __future__ import annotations

import json
import time
from typing import Any
from unittest import mock
from urllib.parse import quote

import pytest
from django.contrib.auth import get_user_model
from django.core import signing
from django.test import Client, override_settings

from skapi_channels.models import Connection
from skapi_channels.tokens import SALT, issue_token
from tests.conftest import in_db, session_key_for

INTERNALS = (
    "Traceback",
    'File "',
    "/work/",
    "site-packages",
    "SELECT ",
    "sqlite",
    "Error:",
    "line ",
)


async def cid_of(user: Any) -> str:
    return await in_db(lambda: Connection.objects.get(user_id=str(user.pk)).cid)


# Sender fields are the server's.

SPOOF = {
    "#user_id": "999",
    "#scid": "forged-cid",
    "#srid": "Elsewhere",
    "#private": "forged",
    "#message": "forged",
    "#notice": "forged",
    "#code": "USER_JOINED",
    "#ack": 1,
    "type": "skapi.close",
    "text": '{"#message": "injected"}',
    "uid_of_sender": "999",
}


async def test_a_broadcast_cannot_spoof_its_sender(users, connect):
    a, b = await connect(users.alice), await connect(users.bob)
    await a.join("Room")
    await b.join("Room")
    await a.receive()
    content = {"#user_id": str(users.bob.pk), "#scid": "x", "#srid": None, "text": "hi"}
    await a.send({"action": "broadcast", "rid": "Room", "content": content, "id": 1, **SPOOF})
    assert await b.receive() == {
        "#message": content,  # content is carried as given, inside "#message"
        "#user_id": str(users.alice.pk),
        "#scid": await cid_of(users.alice),
        "#srid": "Room",
        "#offset": mock.ANY,  # the stream's offset (docs/protocol.md §11)
    }
    await b.nothing()
    assert await b.request({"action": "keepAlive", "id": 2}) == {"#ack": 2}  # not closed


async def test_a_private_message_cannot_spoof_its_sender(users, connect):
    a, b = await connect(users.alice), await connect(users.bob)
    await a.send(
        {"action": "sendMessage", "uid": str(users.bob.pk), "content": "hi", "id": 1, **SPOOF}
    )
    assert await a.receive() == {"#ack": 1}
    assert await b.receive() == {
        "#private": "hi",
        "#user_id": str(users.alice.pk),
        "#scid": await cid_of(users.alice),
        "#srid": None,
        "#offset": mock.ANY,  # the stream's offset (docs/protocol.md §11)
    }
    await b.nothing()


async def test_notices_name_the_connection_that_moved(users, connect):
    a, b = await connect(users.alice), await connect(users.bob)
    await b.join("Room")
    await a.send({"action": "joinRoom", "rid": "Room", "id": 1, **SPOOF})
    assert (await a.receive())["#ack"] == 1
    notice = await b.receive()
    assert (notice["#user_id"], notice["#scid"]) == (str(users.alice.pk), await cid_of(users.alice))


# Groups not joined, other users' private messages.


@pytest.mark.parametrize("rid", ["B", "b", "B ", "B\u200b", "\uff22"])
async def test_no_broadcast_into_a_group_not_joined(users, connect, rid):
    a, b = await connect(users.alice), await connect(users.bob)
    await a.join("A")
    await b.join("B")
    answer = await a.request({"action": "broadcast", "rid": rid, "content": "x", "id": 1})
    assert answer["#code"] == "INVALID_REQUEST" and answer["#id"] == 1
    await b.nothing()


async def test_no_broadcast_into_a_group_after_leaving_it(users, connect):
    a, b = await connect(users.alice), await connect(users.bob)
    await a.join("B")
    await b.join("B")
    await a.receive()
    await a.join(None, 2)
    assert (await b.receive())["#code"] == "USER_LEFT"
    answer = await a.request({"action": "broadcast", "rid": "B", "content": "x", "id": 3})
    assert answer["#code"] == "INVALID_REQUEST"
    await b.nothing()


async def test_private_messages_reach_their_recipient_only(users, connect):
    a, b, c = await connect(users.alice), await connect(users.bob), await connect(users.carol)
    for client in (a, b, c):
        await client.join("Room", 9)
    for client in (a, a, b):  # the join notices
        await client.receive()
    await a.send({"action": "sendMessage", "uid": str(users.bob.pk), "content": "secret", "id": 1})
    assert await a.receive() == {"#ack": 1}
    assert (await b.receive())["#private"] == "secret"
    await c.nothing()
    await a.nothing()


@pytest.mark.parametrize("variant", ["0{}", " {}", "{} ", "+{}", "{}.0", "\uff10{}"])
async def test_a_user_id_that_is_not_canonical_names_no_user(users, connect, variant):
    """ "01" is not the user_id "1": refused as an unknown user (docs/protocol.md §3), not acked
    and delivered to nobody."""
    a, b = await connect(users.alice), await connect(users.bob)
    uid = variant.format(users.bob.pk)
    answer = await a.request({"action": "sendMessage", "uid": uid, "content": "x", "id": 1})
    assert answer == {
        "#error": f"User has not joined to the recipient group. Run joinRealtime('{uid}')",
        "#code": "INVALID_REQUEST",
        "#id": 1,
    }
    await b.nothing()


# The Origin check.


@pytest.mark.parametrize(
    "origin",
    [
        b"https://evil.example",
        b"http://localhost.evil.example",
        b"http://evil.example#localhost",
        b"http://localhost@evil.example",
        b"http://evil.example/?localhost",
        b"http://127.0.0.1.nip.io",
        b"null",
        b"",
        b"localhost",
        b"file://",
        b"http://",
        b"http://[::1",
        b"http://local host",
        b"\xff\xfe",
    ],
)
async def test_a_cross_site_or_malformed_origin_is_refused(users, connect, origin):
    await connect(users.alice, origin=origin, accept=False)
    assert await in_db(Connection.objects.count) == 0


@pytest.mark.parametrize(
    "origin",
    [
        b"http://localhost",
        b"https://localhost:8443",
        b"http://127.0.0.1:8000",
        b"http://[::1]:3000",
    ],
)
async def test_a_host_in_allowed_hosts_is_accepted_on_any_port(users, connect, origin):
    """ALLOWED_HOSTS names hosts, not ports: the same host on another port is the site."""
    await connect(users.alice, origin=origin)


@override_settings(ALLOWED_HOSTS=[".example.com"])
@pytest.mark.parametrize(
    "origin,accepted",
    [
        (b"https://example.com", True),
        (b"https://chat.example.com:444", True),
        (b"https://evilexample.com", False),
        (b"https://example.com.evil.net", False),
        (b"http://localhost", False),
    ],
)
async def test_origin_follows_allowed_hosts(users, connect, origin, accepted):
    await connect(users.alice, origin=origin, accept=accepted)


# Handshake tokens: signed, short-lived, single-purpose.


def other_signed_values(user: Any) -> dict[str, str]:
    """Values this site signs for other purposes: none may pass for a token."""
    token, _ = issue_token(user)
    value, _, signature = token.rpartition(":")
    return {
        "default salt": signing.dumps({"u": str(user.pk)}),
        "other salt": signing.dumps({"u": str(user.pk)}, salt="django.contrib.sessions"),
        "session key": session_key_for(user),
        "signed cookie": signing.get_cookie_signer(salt="sessionid").sign(str(user.pk)),
        "unsigned": signing.b64_encode(json.dumps({"u": str(user.pk)}).encode()).decode(),
        "tampered signature": f"{value}:{signature[:-2]}{'AA' if signature[-2:] != 'AA' else 'BB'}",
        "tampered payload": signing.dumps({"u": str(user.pk) + "0"}, salt=SALT)[:-4]
        + signature[-4:],
        "integer pk": signing.dumps({"u": user.pk}, salt=SALT),
        "bare pk": signing.dumps(str(user.pk), salt=SALT),
    }


def test_other_signed_values_are_not_tokens(users):
    from skapi_channels.tokens import read_token

    for name, value in other_signed_values(users.alice).items():
        assert read_token(value) is None, name


async def test_other_signed_values_are_refused_as_a_query_token(users, connect):
    values = await in_db(other_signed_values, users.alice)
    for value in values.values():
        # With and without a valid cookie: the token decides.
        await connect(None, path=f"/ws/realtime/?token={quote(value)}", accept=False)
        await connect(users.alice, path=f"/ws/realtime/?token={quote(value)}", accept=False)
    assert await in_db(Connection.objects.count) == 0


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("path", ["/realtime/groups/", "/realtime/users/"])
def test_other_signed_values_are_refused_as_bearer(users, path):
    for name, value in other_signed_values(users.alice).items():
        response = Client().post(
            path, "{}", content_type="application/json", HTTP_AUTHORIZATION=f"Bearer {value}"
        )
        assert response.status_code == 401, name
    token, _ = issue_token(users.alice)
    response = Client().post(
        path,
        '{"group": "x"}',
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {token}",
    )
    assert response.status_code == 200


@pytest.mark.django_db(transaction=True)
def test_an_expired_token_is_refused_as_bearer(users):
    token, _ = issue_token(users.alice)
    with mock.patch("django.core.signing.time.time", return_value=time.time() + 61):
        response = Client().post(
            "/realtime/groups/",
            "{}",
            content_type="application/json",
            HTTP_AUTHORIZATION=f"Bearer {token}",
        )
    assert response.status_code == 401


async def test_a_token_of_a_deactivated_user_is_refused(users, connect):
    token, _ = await in_db(issue_token, users.alice)
    await in_db(lambda: get_user_model().objects.filter(pk=users.alice.pk).update(is_active=False))
    await connect(None, path=f"/ws/realtime/?token={token}", accept=False)


async def test_a_token_signed_with_another_secret_key_is_refused(users, connect):
    with override_settings(SECRET_KEY="another-site-" + "k" * 40):
        token, _ = await in_db(issue_token, users.alice)
    await connect(None, path=f"/ws/realtime/?token={token}", accept=False)


# HTTP: authentication, CSRF, the admin.


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("path", ["/realtime/groups/", "/realtime/users/", "/realtime/token/"])
def test_endpoints_need_a_login_and_a_csrf_token(users, path):
    body = '{"group": "x"}'
    assert Client().post(path, body, content_type="application/json").status_code == 401
    client = Client(enforce_csrf_checks=True)
    client.force_login(users.alice)
    response = client.post(path, body, content_type="application/json")
    assert response.status_code == 403 and "CSRF" in response.json()["message"]
    # A cross-site form post carries the cookie but no token either.
    response = client.post(
        path, body, content_type="application/json", HTTP_ORIGIN="https://evil.example"
    )
    assert response.status_code == 403
    client.get("/admin/login/")
    csrf = client.cookies["csrftoken"].value
    response = client.post(path, body, content_type="application/json", HTTP_X_CSRFTOKEN=csrf)
    assert response.status_code == 200


@pytest.mark.django_db(transaction=True)
def test_the_token_endpoint_does_not_serve_bearer_requests(users):
    token, _ = issue_token(users.alice)
    response = Client().post(
        "/realtime/token/",
        "{}",
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {token}",
    )
    assert response.status_code == 401


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(
    "path",
    [
        "/admin/",
        "/admin/skapi_channels/",
        "/admin/skapi_channels/connection/",
        "/admin/skapi_channels/realtimegroup/",
        "/admin/skapi_channels/serverprocess/",
    ],
)
def test_the_admin_is_staff_only(users, path):
    client = Client()
    response = client.get(path)
    assert response.status_code == 302 and response["Location"].startswith("/admin/login/")
    client.force_login(users.alice)  # logged in, not staff
    response = client.get(path)
    assert response.status_code == 302 and response["Location"].startswith("/admin/login/")


# No error reveals internals.

BAD_FRAMES = [
    "not json",
    "{" * 5_000,
    "[" * 2_000 + "]" * 2_000,
    '{"action": "sendMessage", "uid": "\\ud800", "content": 1, "id": 1}',
    '{"action": "joinRoom", "rid": "\\u0000", "id": 1}',
    '{"action": "joinRoom", "rid": {"__class__": 1}, "id": 1}',
    '{"action": "sendMessage", "uid": "1; DROP TABLE auth_user", "content": 1, "id": 1}',
    '{"action": "sendMessage", "uid": "\' OR 1=1 --", "content": 1, "id": 1}',
    '{"action": "sendMessage", "uid": "99999999999999999999999999", "content": 1, "id": 1}',
    '{"action": "keepAlive", "id": 1e999}',
    '{"action": "' + "x" * 10_000 + '", "id": 1}',
    json.dumps({"action": "broadcast", "rid": "R", "content": "x" * 40_000, "id": 1}),
]


async def test_no_error_frame_reveals_internals(users, connect):
    a = await connect(users.alice)
    for text in BAD_FRAMES:
        await a.send(text)
        error = await a.receive()
        assert set(error) == {"#error", "#code", "#id"}, error
        assert len(error["#error"]) < 300, error
        assert not any(internal in error["#error"] for internal in INTERNALS), error
    await a.send_bytes(b"\x00\xff")
    assert "Binary" in (await a.receive())["#error"]
    assert await in_db(Connection.objects.count) == 1


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(
    "path,body",
    [
        ("/realtime/groups/", b"{"),
        ("/realtime/groups/", b"[" * 5_000),
        ("/realtime/groups/", b'{"value": "\' OR 1=1 --", "condition": "LIKE"}'),
        ("/realtime/groups/", b'{"searchFor": "number_of_users", "value": "1; DROP TABLE x"}'),
        ("/realtime/groups/", b'{"startKey": {"group": 1, "number_of_users": "x"}}'),
        ("/realtime/groups/", b'{"limit": 1e999}'),
        ("/realtime/users/", b'{"group": {"__class__": 1}}'),
        ("/realtime/users/", b'{"group": "Room", "user_id": ["x"]}'),
    ],
)
def test_no_json_error_reveals_internals(users, path, body):
    client = Client()
    client.force_login(users.alice)
    response = client.post(path, body, content_type="application/json")
    assert response.status_code == 400
    answer = response.json()
    assert set(answer) == {"code", "message"} and len(answer["message"]) < 300
    assert not any(internal in answer["message"] for internal in INTERNALS), answer
    assert not any(internal in response.content.decode() for internal in INTERNALS)
