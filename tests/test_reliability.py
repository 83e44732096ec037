"""Failures of the database or the layer leave presence true and the server serving."""

from __future__ import annotations

import logging

import pytest
from django.db import OperationalError

from skapi_channels import presence
from skapi_channels.models import Connection, ServerProcess
from tests.conftest import in_db


async def test_registration_is_retried_after_the_database_was_unavailable(
    users, connect, monkeypatch, caplog
):
    real = presence.register_server
    failures = [OperationalError("could not connect to server")]

    def flaky(*args, **kwargs):
        if failures:
            raise failures.pop()
        return real(*args, **kwargs)

    monkeypatch.setattr(presence, "register_server", flaky)
    monkeypatch.setattr(presence, "aregister_server", presence.database_sync_to_async(flaky))
    with caplog.at_level(logging.ERROR, "skapi_channels"):
        await connect(users.alice, accept=False)
    assert "Could not register" in caplog.text
    # The database is back: the next handshake registers the process and opens.
    a = await connect(users.alice)
    await a.join("Room")
    assert await in_db(ServerProcess.objects.count) == 1
    assert await in_db(Connection.objects.count) == 1


async def test_presence_is_cleaned_whatever_the_layer_raises(
    users, connect, presence_is_true, monkeypatch, caplog
):
    from channels.layers import get_channel_layer

    a, b = await connect(users.alice), await connect(users.bob)
    await a.join("Room")
    await b.join("Room")
    await a.receive()  # bob joined

    async def broken(*args, **kwargs):
        raise ConnectionError("layer is down")

    monkeypatch.setattr(get_channel_layer(), "group_discard", broken)
    with caplog.at_level(logging.ERROR, "skapi_channels"):
        await b.close()
    assert (await a.receive())["#code"] == "USER_DISCONNECTED"
    assert await in_db(lambda: list(Connection.objects.values_list("user_id", flat=True))) == [
        str(users.alice.pk)
    ]
    await in_db(presence_is_true)
    assert "layer groups" in caplog.text


@pytest.mark.parametrize(
    "error,level", [(RuntimeError("closed"), logging.DEBUG), (KeyError("bug"), logging.ERROR)]
)
async def test_a_failed_send_is_logged_at_its_level(users, connect, caplog, error, level):
    from skapi_channels.consumer import RealtimeConsumer

    consumer = RealtimeConsumer()
    consumer.cid = "c1"

    async def failing(message):
        raise error

    consumer.base_send = failing
    with caplog.at_level(logging.DEBUG, "skapi_channels"):
        await consumer.send_text("{}")
    assert [record.levelno for record in caplog.records] == [level]


def test_the_send_limit_stands_down_when_daphne_moved(monkeypatch, caplog):
    from daphne.ws_protocol import WebSocketProtocol

    from skapi_channels import send_buffer

    installed = WebSocketProtocol.serverSend, WebSocketProtocol.handle_reply
    monkeypatch.setattr(send_buffer, "_installed", False)
    monkeypatch.setattr(send_buffer, "DAPHNE_ATTRIBUTES", ("serverSendv2",))
    with caplog.at_level(logging.WARNING, "skapi_channels"):
        send_buffer.install_daphne_send_limit()
        send_buffer.install_daphne_send_limit()  # once
    assert (WebSocketProtocol.serverSend, WebSocketProtocol.handle_reply) == installed
    assert caplog.text.count("WebSocketProtocol.serverSendv2") == 1
    assert send_buffer.missing_attributes(WebSocketProtocol, object)[-2:] == [
        "object.dataBuffer",
        "object.offset",
    ]
