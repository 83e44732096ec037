"""A restarted embedded server lost its in-process history: its streams come back
under new epochs, so an offset from before is never taken for a new one
(docs/protocol.md section 11). Runs a real daphne process, restarted."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from websockets.asyncio.client import connect

from tests.live_server import Server
from tests.test_slow_receiver import token_for, user_pk


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    live = Server(tmp_path_factory.mktemp("history"))
    live.prepare()
    live.start()
    yield live
    live.stop()


async def answer(ws: Any, frame: dict[str, Any]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Send ``frame`` and read up to its answer: (what came before, the answer)."""
    await ws.send(json.dumps(frame))
    before = []
    while True:
        got = json.loads(await ws.recv())
        if got.get("#ack", got.get("#id", object())) == frame["id"]:
            return before, got
        before.append(got)


async def test_a_restart_changes_the_epochs_and_nothing_is_replayed(server: Server) -> None:
    url = f"ws://127.0.0.1:{server.port}/ws/realtime/?token="
    async with connect(url + token_for(server, "alice")) as ws:
        _, joined = await answer(ws, {"action": "joinRoom", "rid": "kept", "id": 1})
        for n in range(3):
            await answer(ws, {"action": "broadcast", "rid": "kept", "content": n, "id": 10 + n})
        await answer(
            ws, {"action": "sendMessage", "uid": user_pk(server, "alice"), "content": "p", "id": 2}
        )
        _, where = await answer(ws, {"action": "resume", "id": 3})
    assert where["#offset"] >= 1
    server.stop()
    server.start()
    async with connect(url + token_for(server, "alice")) as ws:
        since = {"offset": 2, "epoch": joined["#epoch"]}
        replayed, ack = await answer(
            ws, {"action": "joinRoom", "rid": "kept", "since": since, "id": 4}
        )
        assert replayed == []
        assert ack["#recovered"] is False and ack["#offset"] == 0
        assert ack["#epoch"] != joined["#epoch"]
        since = {"offset": where["#offset"], "epoch": where["#epoch"]}
        replayed, resumed = await answer(ws, {"action": "resume", "since": since, "id": 5})
        assert replayed == [] and resumed["#recovered"] is False
        assert resumed["#epoch"] != where["#epoch"]
