"""The pytest kit for projects (skapi_channels.pytest_plugin, testing.py), used as a
project's tests would use it."""

from __future__ import annotations

import pytest

from skapi_channels import api
from skapi_channels.testing import RealtimeError


async def test_a_room_of_users(realtime):
    alice, bob, carol = await realtime.connect_users("alice", "bob", "carol")
    await alice.join("lobby")
    await bob.join("lobby")
    await alice.expect_notice("USER_JOINED", user_id=bob.user_id)

    await alice.post({"text": "hi"}, "lobby")
    await bob.expect_message({"text": "hi"}, sender=alice.user_id, group="lobby")
    await alice.expect_message({"text": "hi"})  # the sender's own copy
    await carol.post("psst", bob.user_id)  # not carol's group: a private message
    await bob.expect_private("psst", sender=carol.user_id)
    await carol.expect_nothing()

    assert await realtime.list_users("lobby") == sorted([alice.user_id, bob.user_id])
    assert await realtime.list_groups() == [{"group": "lobby", "number_of_users": 2}]
    assert await realtime.list_groups(searchFor="number_of_users", value=3, condition=">=") == []

    await bob.close()
    await alice.expect_notice("USER_DISCONNECTED", user_id=bob.user_id)
    assert await realtime.list_users("lobby") == [alice.user_id]


async def test_refusals_raise_with_the_code(realtime):
    [alice] = await realtime.connect_users("alice")
    with pytest.raises(RealtimeError) as refused:
        await alice.broadcast("hi", group="nowhere")
    assert refused.value.code == "INVALID_REQUEST"
    assert "joinRealtime('nowhere')" in refused.value.message


async def test_notices_from_site_code(realtime):
    alice, bob = await realtime.connect_users("alice", "bob")
    await alice.join("lobby")
    await api.asend_notice("lobby", "Closing soon")
    notice = await alice.expect_notice("SERVER_NOTICE")
    assert notice["#notice"] == "Closing soon"
    await bob.expect_nothing()


async def test_a_wait_that_times_out_says_what_arrived(realtime):
    alice, bob = await realtime.connect_users("alice", "bob")
    await alice.join("lobby")
    await bob.join("lobby")
    with pytest.raises(AssertionError, match=r"expected a message 'never'.*has joined"):
        await alice.expect_message("never", timeout=0.5)


async def test_refused_handshakes(realtime):
    alice = await realtime.user("alice", is_active=False)
    client = await realtime.connect(alice, accept=False)
    assert client.closed


def test_the_package_registers_the_plugin_with_pytest():
    """Installed, the package's pytest11 entry point loads the plugin by the name
    that ``pytest_plugins`` uses here, so the two never register it twice."""
    import importlib
    import tomllib
    from pathlib import Path

    pyproject = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    [(name, target)] = pyproject["project"]["entry-points"]["pytest11"].items()
    assert name == target == "skapi_channels.pytest_plugin"
    assert hasattr(importlib.import_module(target), "realtime")


def test_a_live_server_for_clients_outside_the_process(realtime_live_server):
    """Two ``websockets`` clients with sessions of their own chat through daphne."""
    import asyncio
    import json

    import websockets
    from django.contrib.auth import get_user_model

    alice = get_user_model().objects.create_user("alice", password="pw-12345678")
    bob = get_user_model().objects.create_user("bob", password="pw-12345678")
    server = realtime_live_server
    cookies = {"alice": server.cookie_for(alice), "bob": server.cookie_for(bob)}

    async def chat() -> dict:
        async with (
            websockets.connect(
                server.ws_url, additional_headers={"Cookie": cookies["alice"]}
            ) as a,
            websockets.connect(
                server.ws_url, additional_headers={"Cookie": cookies["bob"]}
            ) as b,
        ):
            for socket in (a, b):
                await socket.send(json.dumps({"action": "joinRoom", "rid": "lobby", "id": 1}))
            await b.send(json.dumps({"action": "keepAlive", "id": 2}))
            while json.loads(await asyncio.wait_for(b.recv(), 10)) != {"#ack": 2}:
                pass  # bob's join ack, alice's notice: bob is in the group now
            await a.send(json.dumps({"action": "broadcast", "rid": "lobby", "content": "hi"}))
            while True:
                frame = json.loads(await asyncio.wait_for(b.recv(), 10))
                if "#message" in frame:
                    return frame

    frame = asyncio.run(chat())
    assert frame["#message"] == "hi" and frame["#user_id"] == str(alice.pk)
