"""The consumer end to end: every action, notice and error of docs/protocol.md §2-6."""

from __future__ import annotations

import time
from unittest import mock

import pytest
from django.test import override_settings

from skapi_channels.models import Connection, OnlineUser, RealtimeGroup
from skapi_channels.tokens import issue_token
from tests.conftest import in_db


def count(model, **filters) -> int:
    return model.objects.filter(**filters).count()


def not_joined(rid: str) -> str:
    return f"User has not joined to the recipient group. Run joinRealtime('{rid}')"


async def test_anonymous_handshake_is_refused_and_writes_nothing(connect):
    await connect(None, accept=False)
    assert await in_db(count, Connection) == 0


async def test_handshake_writes_one_connection_row(users, connect):
    await connect(users.alice)
    rows = await in_db(lambda: list(Connection.objects.values_list("user_id", "group_name")))
    assert rows == [(str(users.alice.pk), None)]


async def test_cross_site_origin_is_refused(users, connect):
    await connect(users.alice, origin=b"https://evil.example", accept=False)
    await connect(users.alice, origin=b"null", accept=False)
    assert await in_db(count, Connection) == 0


async def test_no_origin_is_a_non_browser_client_and_allowed(users, connect):
    await connect(users.alice, origin=None)


async def test_token_authenticates_and_decides_over_the_cookie(users, connect):
    token, _ = await in_db(issue_token, users.bob)
    client = await connect(users.alice, path=f"/ws/realtime/?token={token}")
    await client.join("room")
    rows = await in_db(lambda: list(Connection.objects.values_list("user_id", flat=True)))
    assert rows == [str(users.bob.pk)]
    await connect(users.alice, path="/ws/realtime/?token=forged", accept=False)
    await connect(None, path="/ws/realtime/?token=", accept=False)


async def test_expired_token_is_refused(users, connect):
    token, expires = await in_db(issue_token, users.bob)
    assert expires - time.time() == pytest.approx(60, abs=2)
    with mock.patch("django.core.signing.time.time", return_value=time.time() + 61):
        await connect(None, path=f"/ws/realtime/?token={token}", accept=False)


async def test_broadcast_reaches_every_member_including_the_sender(users, connect):
    a, b, c = await connect(users.alice), await connect(users.bob), await connect(users.carol)
    await a.join("HelloWorld")
    await b.join("HelloWorld")
    await a.receive()  # bob joined
    await c.join("Elsewhere")
    await a.send({"action": "broadcast", "rid": "HelloWorld", "content": {"x": [1, None]}, "id": "m1"})
    alice_cid = await in_db(lambda: Connection.objects.get(user_id=str(users.alice.pk)).cid)
    expected = {
        "#message": {"x": [1, None]},
        "#user_id": str(users.alice.pk),
        "#scid": alice_cid,
        "#srid": "HelloWorld",
        "#offset": mock.ANY,
    }
    received = [await a.receive(), await a.receive()]
    assert {"#ack": "m1"} in received
    assert expected in received
    assert await b.receive() == expected
    await c.nothing()


async def test_null_content_is_a_message(users, connect):
    a = await connect(users.alice)
    await a.join("g")
    await a.send({"action": "broadcast", "rid": "g", "content": None})
    assert (await a.receive())["#message"] is None


async def test_broadcast_to_a_group_not_joined_is_refused(users, connect):
    a = await connect(users.alice)
    answer = await a.request({"action": "broadcast", "rid": "Other", "content": "x", "id": 5})
    assert answer == {"#error": not_joined("Other"), "#code": "INVALID_REQUEST", "#id": 5}
    await a.join("Mine")
    answer = await a.request({"action": "broadcast", "rid": "Other", "content": "x", "id": 6})
    assert answer["#code"] == "INVALID_REQUEST"


async def test_private_message_reaches_every_tab_of_the_recipient_only(users, connect, presence_is_true):
    a = await connect(users.alice)
    b1, b2 = await connect(users.bob), await connect(users.bob)
    c = await connect(users.carol)
    await a.send({"action": "sendMessage", "uid": str(users.bob.pk), "content": "psst", "id": 1})
    assert await a.receive() == {"#ack": 1}
    for tab in (b1, b2):
        frame = await tab.receive()
        assert frame["#private"] == "psst"
        assert frame["#user_id"] == str(users.alice.pk)
        assert frame["#srid"] is None and "#srid" in frame
        assert isinstance(frame["#scid"], str) and frame["#scid"]
    await a.nothing()
    await c.nothing()
    await in_db(presence_is_true)


async def test_private_message_to_oneself_reaches_the_sender(users, connect):
    a = await connect(users.alice)
    await a.send({"action": "sendMessage", "uid": str(users.alice.pk), "content": 1, "id": 1})
    frames = [await a.receive(), await a.receive()]
    assert {"#ack": 1} in frames
    assert any(frame.get("#private") == 1 for frame in frames)


async def test_private_message_to_unknown_user_is_refused(users, connect):
    a = await connect(users.alice)
    for uid in ("999999", "abc"):
        answer = await a.request({"action": "sendMessage", "uid": uid, "content": "x", "id": 2})
        assert answer == {"#error": not_joined(uid), "#code": "INVALID_REQUEST", "#id": 2}


async def test_private_message_to_offline_user_is_acked(users, connect):
    a = await connect(users.alice)
    answer = await a.request({"action": "sendMessage", "uid": str(users.carol.pk), "content": 1, "id": 3})
    assert answer == {"#ack": 3}


async def test_notices_go_to_others_only_and_in_order(users, connect, presence_is_true):
    a, b = await connect(users.alice), await connect(users.bob)
    bob = str(users.bob.pk)
    await a.join("Room")
    await b.join("Room")
    joined = await a.receive()
    assert joined["#code"] == "USER_JOINED"
    assert joined["#user_id"] == bob and joined["#srid"] == "Room"
    assert joined["#notice"] == f"{bob} has joined the message group."
    await b.nothing()
    await b.join("Other", 2)  # switch: USER_LEFT to the old group
    left = await a.receive()
    assert (left["#code"], left["#srid"], left["#user_id"]) == ("USER_LEFT", "Room", bob)
    await b.join("Room", 3)
    assert (await a.receive())["#code"] == "USER_JOINED"
    await b.join(None, 4)  # leave
    assert (await a.receive())["#code"] == "USER_LEFT"
    await b.join("Room", 5)
    await a.receive()
    await b.close()
    gone = await a.receive()
    assert (gone["#code"], gone["#srid"], gone["#user_id"]) == ("USER_DISCONNECTED", "Room", bob)
    assert gone["#notice"] == f"{bob} has been disconnected."
    await in_db(presence_is_true)


async def test_same_users_other_tab_gets_notices(users, connect):
    a1, a2 = await connect(users.alice), await connect(users.alice)
    await a1.join("Room")
    await a2.join("Room")
    assert (await a1.receive())["#code"] == "USER_JOINED"


async def test_rejoining_the_same_group_is_acked_without_notices(users, connect):
    a, b = await connect(users.alice), await connect(users.bob)
    await a.join("Room")
    await b.join("Room")
    await a.receive()
    await b.join("Room", 9)
    await a.nothing()
    await b.join("", 10)  # "" leaves
    assert (await a.receive())["#code"] == "USER_LEFT"
    await b.request({"action": "joinRoom", "id": 11})  # no rid: already out, no notice
    await a.nothing()


async def test_two_tabs_of_one_user_count_once(users, connect, presence_is_true):
    a1, a2, b = await connect(users.alice), await connect(users.alice), await connect(users.bob)
    for number, client in enumerate((a1, a2, b)):
        await client.join("Room")
        for earlier in (a1, a2, b)[:number]:
            assert (await earlier.receive())["#code"] == "USER_JOINED"
    group = await in_db(RealtimeGroup.objects.get, name="Room")
    assert group.number_of_users == 2
    await a1.join(None, 2)
    assert (await in_db(RealtimeGroup.objects.get, name="Room")).number_of_users == 2
    await a2.close()
    assert (await in_db(RealtimeGroup.objects.get, name="Room")).number_of_users == 1
    await in_db(presence_is_true)


async def test_join_ack_comes_after_the_tables_show_membership(users, connect):
    a = await connect(users.alice)
    await a.join("Room")
    rows = await in_db(lambda: list(Connection.objects.values_list("group_name", flat=True)))
    assert rows == ["Room"]
    assert await in_db(count, RealtimeGroup, name="Room", number_of_users=1) == 1


async def test_clean_close_removes_the_connection_at_once(users, connect, presence_is_true):
    a = await connect(users.alice)
    await a.join("Room")
    await a.close()
    assert await in_db(count, Connection) == 0
    assert await in_db(count, RealtimeGroup) == 0
    assert await in_db(count, OnlineUser) == 0
    await in_db(presence_is_true)


async def test_leaving_the_last_member_removes_the_group(users, connect):
    a = await connect(users.alice)
    await a.join("Room")
    await a.join(None, 2)
    assert await in_db(count, RealtimeGroup) == 0


async def test_left_connection_no_longer_receives_the_group(users, connect):
    a, b = await connect(users.alice), await connect(users.bob)
    await a.join("Room")
    await b.join("Room")
    await a.receive()
    await b.join("Other", 2)
    await a.receive()
    await a.send({"action": "broadcast", "rid": "Room", "content": "x"})
    await a.receive()
    await b.nothing()


async def test_keepalive_is_answered_only_with_an_id(users, connect):
    a = await connect(users.alice)
    await a.send({"action": "keepAlive"})
    await a.nothing()
    assert await a.request({"action": "keepAlive", "id": 7}) == {"#ack": 7}


@override_settings(SKAPI_CHANNELS={"MAX_CONNECTIONS_PER_USER": 2})
async def test_connections_per_user_are_limited(users, connect):
    await connect(users.alice)
    second = await connect(users.alice)
    await connect(users.alice, accept=False)
    await connect(users.bob)
    await second.close()
    await connect(users.alice)
    assert await in_db(count, OnlineUser, user_id=str(users.alice.pk), connections=2) == 1


async def test_default_limit_is_ten_connections(users, connect):
    for _ in range(10):
        await connect(users.alice)
    await connect(users.alice, accept=False)
    assert await in_db(count, Connection) == 10


async def test_session_of_a_deactivated_user_is_refused(users, connect):
    await in_db(lambda: type(users.alice).objects.filter(pk=users.alice.pk).update(is_active=False))
    await connect(users.alice, accept=False)


async def test_an_unknown_session_key_is_refused(connect):
    from channels.testing import WebsocketCommunicator

    from tests.asgi import application

    communicator = WebsocketCommunicator(
        application, "/ws/realtime/", headers=[(b"cookie", b"sessionid=no-such-session")]
    )
    connected, _ = await communicator.connect(timeout=5)
    assert not connected
    assert await in_db(count, Connection) == 0


async def test_inside_auth_middleware_the_middlewares_user_is_used(users, connect):
    from channels.auth import AuthMiddlewareStack
    from channels.routing import URLRouter
    from channels.testing import WebsocketCommunicator

    from skapi_channels.routing import websocket_urlpatterns
    from tests.conftest import session_key_for

    key = await in_db(session_key_for, users.bob)
    communicator = WebsocketCommunicator(
        AuthMiddlewareStack(URLRouter(websocket_urlpatterns)),
        "/ws/realtime/",
        headers=[(b"cookie", f"sessionid={key}".encode())],
    )
    connected, _ = await communicator.connect(timeout=5)
    assert connected
    rows = await in_db(lambda: list(Connection.objects.values_list("user_id", flat=True)))
    assert rows == [str(users.bob.pk)]
    await communicator.disconnect()
