"""The Python API reaches clients through the channel layer."""

from __future__ import annotations

import asyncio
from typing import Any
from unittest.mock import ANY

import pytest
from channels.layers import get_channel_layer
from django.test import override_settings

from skapi_channels import api
from skapi_channels.addressing import group_address, user_address
from skapi_channels.local_layer import LocalChannelLayer
from skapi_channels.protocol import CLOSE_BY_SERVER, close_event, loads
from skapi_channels.queries import InvalidParameter
from skapi_channels.runtime import runtime
from tests.conftest import in_db


def uid(user: Any) -> str:
    return str(user.pk)


async def test_send_to_user_reaches_every_connection_of_that_user(users, connect):
    bob_1, bob_2 = await connect(users.bob), await connect(users.bob)
    alice = await connect(users.alice)
    await api.asend_to_user(uid(users.bob), {"text": "export ready"})
    content = {"text": "export ready"}
    expected = {"#private": content, "#user_id": None, "#scid": None, "#srid": None, "#offset": ANY}
    assert await bob_1.receive() == expected
    assert await bob_2.receive() == expected
    await alice.nothing()


async def test_send_to_user_on_behalf_of_a_user(users, connect):
    bob = await connect(users.bob)
    await api.asend_to_user(uid(users.bob), "hi", sender=uid(users.alice))
    assert await bob.receive() == {
        "#private": "hi", "#user_id": uid(users.alice), "#scid": None, "#srid": None,
        "#offset": ANY,
    }  # fmt: skip


async def test_broadcast_as_the_server_reaches_the_group_only(users, connect):
    alice, bob = await connect(users.alice), await connect(users.bob)
    carol = await connect(users.carol)
    await alice.join("room")
    await bob.join("room")
    assert (await alice.receive())["#code"] == "USER_JOINED"
    await carol.join("elsewhere")
    messages_before = runtime.counters["server_messages"]
    await api.abroadcast("room", [1, 2, 3])
    expected = {
        "#message": [1, 2, 3], "#user_id": None, "#scid": None, "#srid": "room", "#offset": ANY
    }  # fmt: skip
    assert await alice.receive() == expected
    assert await bob.receive() == expected
    await carol.nothing()
    assert runtime.counters["server_messages"] == messages_before + 1


async def test_broadcast_on_behalf_of_a_user(users, connect):
    alice = await connect(users.alice)
    await alice.join("room")
    await api.abroadcast("room", None, sender="42")
    assert await alice.receive() == {
        "#message": None, "#user_id": "42", "#scid": None, "#srid": "room", "#offset": ANY
    }  # fmt: skip


async def test_sync_forms_work_from_sync_code(users, connect):
    """Site code (a view, a task) calls the sync forms from a thread."""
    alice, bob = await connect(users.alice), await connect(users.bob)
    await alice.join("room")
    await in_db(api.broadcast, "room", "from a view")
    assert (await alice.receive())["#message"] == "from a view"
    await in_db(api.send_to_user, uid(users.bob), "private", sender=None)
    assert (await bob.receive())["#private"] == "private"
    await in_db(api.send_notice, "room", "Closing soon.")
    assert await alice.receive() == {
        "#notice": "Closing soon.",
        "#code": "SERVER_NOTICE",
        "#user_id": None,
        "#scid": None,
        "#srid": "room",
    }


def test_sync_forms_refuse_to_run_in_an_event_loop():
    import asyncio

    async def inside() -> None:
        api.broadcast("room", "x")

    with pytest.raises(RuntimeError, match="just await the async function"):
        asyncio.run(inside())


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: api.abroadcast("", "x"), "1 to 128"),
        (lambda: api.abroadcast("a\x00b", "x"), "control characters"),
        (lambda: api.asend_to_user(7, "x"), "user_id must be a string"),  # type: ignore[arg-type]
        (lambda: api.asend_to_user("7", "x", sender=""), "sender must be 1 to"),
        (lambda: api.asend_notice("room", ""), "sentence"),
    ],
)
async def test_bad_arguments_are_refused_with_a_sentence(call, message):
    with pytest.raises(ValueError, match=message):
        await call()


async def test_disconnect_user_closes_all_their_sockets_and_tells_the_groups(
    users, connect, presence_is_true
):
    alice = await connect(users.alice)
    bob_1, bob_2 = await connect(users.bob), await connect(users.bob)
    await alice.join("room")
    await bob_1.join("room")
    assert (await alice.receive())["#code"] == "USER_JOINED"
    await api.adisconnect_user(uid(users.bob))
    assert await bob_1.receive_close() == 4000
    assert await bob_2.receive_close() == 4000
    # The ASGI server answers a server close with websocket.disconnect.
    await bob_1.communicator.disconnect(code=4000)
    await bob_2.communicator.disconnect(code=4000)
    notice = await alice.receive()
    assert notice["#code"] == "USER_DISCONNECTED"
    assert notice["#user_id"] == uid(users.bob)
    await alice.nothing()
    await in_db(presence_is_true)
    page = await api.alist_users("room")
    assert [item["user_id"] for item in page.items] == [uid(users.alice)]


async def test_disconnect_connection_by_cid(users, connect):
    alice, bob = await connect(users.alice), await connect(users.alice)
    await alice.join("room")
    page = await api.alist_users("room")
    cid = page.items[0]["cid"]
    assert await api.adisconnect_connection(cid) is True
    assert await alice.receive_close() == 4000
    await bob.nothing()
    assert await api.adisconnect_connection("no-such-cid") is False


async def test_listings_match_the_endpoints(users, connect, client):
    alice, bob = await connect(users.alice), await connect(users.bob)
    carol = await connect(users.carol)
    await alice.join("big")
    await bob.join("big")
    await carol.join("small")
    page = await api.alist_groups(search_for="number_of_users", condition=">=", value=2)
    assert page.as_json() == {
        "list": [{"group": "big", "number_of_users": 2}],
        "startKey": "end",
        "endOfList": True,
    }
    first = await api.alist_groups(limit=1)
    assert [item["group"] for item in first.items] == ["big"]
    second = await api.alist_groups(limit=1, start_key=first.start_key)
    assert [item["group"] for item in second.items] == ["small"]
    assert second.end_of_list

    await in_db(client.force_login, users.alice)
    response = await in_db(
        client.post, "/realtime/users/", {"group": "big"}, content_type="application/json"
    )
    assert response.status_code == 200
    assert (await api.alist_users("big")).as_json() == response.json()
    assert (await api.alist_users("big", user_id=uid(users.bob))).items[0]["user_id"] == uid(
        users.bob
    )


def test_list_parameters_are_checked_by_the_endpoints_code(db):
    with pytest.raises(InvalidParameter, match="limit"):
        api.list_groups(limit=0)
    with pytest.raises(InvalidParameter, match="group is required"):
        api.list_users("")
    assert api.list_groups().as_json() == {"list": [], "startKey": "end", "endOfList": True}


class SyncSendingLayer(LocalChannelLayer):
    """A layer that sends without an event loop (layer_abilities.SendsSync), and
    records what sync callers gave it."""

    def __init__(self, **config: Any) -> None:
        super().__init__(**config)
        self.sent: list[tuple[str, str, dict[str, Any]]] = []

    def group_send_sync(self, group: str, message: dict[str, Any]) -> None:
        self.sent.append(("group", group, message))

    def send_sync(self, channel: str, message: dict[str, Any]) -> None:
        self.sent.append(("channel", channel, message))


def test_sync_forms_use_the_layers_sync_sends_and_count_as_the_async_forms():
    layers = {"default": {"BACKEND": "tests.test_api.SyncSendingLayer", "CONFIG": {}}}
    runtime.counters.clear()
    with override_settings(CHANNEL_LAYERS=layers):
        layer = get_channel_layer()
        api.broadcast("room", "hi", sender="7")
        api.send_to_user("7", "psst")
        api.send_notice("room", "Closing soon.")
        api.disconnect_user("7")
        with pytest.raises(ValueError, match="1 to 128"):
            api.broadcast("", "x")
        assert [(kind, group, loads(m["text"]) if "text" in m else m) for kind, group, m in layer.sent] == [
            ("group", group_address("room"), {"#message": "hi", "#user_id": "7", "#scid": None, "#srid": "room"}),
            ("group", user_address("7"), {"#private": "psst", "#user_id": None, "#scid": None, "#srid": None}),
            ("group", group_address("room"), {
                "#notice": "Closing soon.", "#code": "SERVER_NOTICE", "#user_id": None, "#scid": None, "#srid": "room"
            }),
            ("group", user_address("7"), close_event(CLOSE_BY_SERVER)),
        ]  # fmt: skip
        assert runtime.counters["server_messages"] == 3

        async def inside() -> None:
            api.broadcast("room", "x")

        with pytest.raises(RuntimeError, match="just await the async function"):
            asyncio.run(inside())
        assert len(layer.sent) == 4
    runtime.counters.clear()
