"""The soak test in a short form, and what it found, pinned as a plain test."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path
from typing import Any
from unittest import mock

import pytest

from skapi_channels import consumer
from tests.conftest import in_db

SOAK = Path(__file__).with_name("soak.py")


@pytest.mark.timeout(300)
def test_a_short_soak_loses_nothing() -> None:
    """20 s, 100 connections over 20 users and 20 groups, with churn (soak.py)."""
    result = subprocess.run(
        [sys.executable, str(SOAK), "--seconds", "20", "--connections", "100", "--seed", "1"],
        capture_output=True,
        text=True,
        timeout=280,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    assert '"lost": 0' in result.stdout and '"duplicates": 0' in result.stdout


async def test_a_member_that_leaves_after_the_ack_still_gets_the_message(users, connect):
    """docs/protocol.md §10: a message is owed to the members from before it is sent until
    after it is acked. Bob is a member when Alice's broadcast is acked and leaves
    only afterwards, while his consumer is still busy delivering an earlier message
    (as under load): the owed message must still reach him, or he must be told."""
    from skapi_channels.models import Connection

    a, b = await connect(users.alice), await connect(users.bob)
    await a.join("Room")
    await b.join("Room")
    await a.receive()  # bob joined
    bob_id = str(users.bob.pk)
    gate = asyncio.Event()
    real_skapi_frame = consumer.RealtimeConsumer.skapi_frame

    async def slow_delivery(self: Any, event: dict[str, Any]) -> None:
        if self.user_id == bob_id and '"slow"' in event["text"]:
            await gate.wait()
        await real_skapi_frame(self, event)

    with mock.patch.object(consumer.RealtimeConsumer, "skapi_frame", slow_delivery):
        for content, frame_id in (("slow", 1), ("owed", 2)):
            await a.send({"action": "broadcast", "rid": "Room", "content": content, "id": frame_id})
            answers = [await a.receive(), await a.receive()]
            assert {"#ack": frame_id} in answers  # handed to the layer; Bob is a member
        await b.send({"action": "joinRoom", "rid": None, "id": 3})  # sent after the ack
        await asyncio.sleep(0.1)
        gate.set()
        received = []
        while not await b.communicator.receive_nothing(0.3):
            received.append(await b.receive())
    assert {"#ack": 3} in received
    assert await in_db(lambda: Connection.objects.get(user_id=bob_id).group_name) is None
    contents = [frame.get("#message") or frame.get("#code") for frame in received]
    assert "owed" in contents or "MISSED_MESSAGES" in contents, received
