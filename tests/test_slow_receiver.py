"""A client that stops reading cannot grow daphne's memory: it is closed (4009).

Runs a real daphne process, since the buffer in question is daphne's own.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import socket
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from websockets.asyncio.client import connect

from skapi_channels.tokens import issue_token
from tests.live_server import Server

LIMIT = 256 * 1024


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    live = Server(
        tmp_path_factory.mktemp("slow"),
        {"SEND_BUFFER_LIMIT": LIMIT, "RATE_PER_SECOND": 10_000, "RATE_BURST": 10_000},
    )
    live.prepare()
    live.start()
    yield live
    live.stop()


def user_pk(server: Server, name: str) -> str:
    with sqlite3.connect(server.workdir / "db.sqlite3") as db:
        return str(db.execute("SELECT id FROM auth_user WHERE username = ?", [name]).fetchone()[0])


def token_for(server: Server, name: str) -> str:
    # The demo settings' default SECRET_KEY signs the server's tokens, as ours; the
    # token carries the auth hash of the user's password as the server stores it.
    from django.contrib.auth import get_user_model

    with sqlite3.connect(server.workdir / "db.sqlite3") as db:
        pk, password = db.execute(
            "SELECT id, password FROM auth_user WHERE username = ?", [name]
        ).fetchone()
    return issue_token(get_user_model()(pk=pk, password=password))[0]


def rows(server: Server) -> list[tuple[str, str | None]]:
    with sqlite3.connect(Path(server.workdir) / "db.sqlite3") as db:
        return db.execute("SELECT user_id, group_name FROM skapi_channels_connection").fetchall()


def open_stalled_socket(server: Server, token: str) -> socket.socket:
    """A WebSocket handshake over a raw socket that then never reads again."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", server.port))
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        (
            f"GET /ws/realtime/?token={token} HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n"
            f"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    response = b""
    while b"\r\n\r\n" not in response:
        response += sock.recv(1)
    assert response.startswith(b"HTTP/1.1 101"), response
    return sock


def masked_text_frame(text: str) -> bytes:
    payload = text.encode()
    mask = os.urandom(4)
    header = bytes([0x81, 0x80 | len(payload)])
    assert len(payload) < 126
    return header + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


async def test_a_client_that_stops_reading_is_closed_and_leaves_its_group(server):
    stalled = open_stalled_socket(server, token_for(server, "bob"))
    stalled.sendall(masked_text_frame(json.dumps({"action": "joinRoom", "rid": "Flood"})))
    uri = f"ws://127.0.0.1:{server.port}/ws/realtime/?token={token_for(server, 'alice')}"
    try:
        async with connect(uri, max_size=None) as alice:
            await alice.send(json.dumps({"action": "joinRoom", "rid": "Flood", "id": 0}))
            while json.loads(await alice.recv()).get("#ack") != 0:
                pass
            assert len(rows(server)) == 2
            content = "x" * 16_000
            disconnected = None
            # Until the kernel's socket buffers are full and daphne's passes the limit.
            for number in range(1, 2000):
                await alice.send(json.dumps({"action": "broadcast", "rid": "Flood", "content": content, "id": number}))
                while json.loads(await asyncio.wait_for(alice.recv(), 10)).get("#ack") != number:
                    pass
                if number % 10 == 0 and "stopped reading" in server.log():
                    break
            # The server closed it; its disconnect follows the close handshake's timeout.
            async with asyncio.timeout(20):
                while disconnected is None:
                    frame = json.loads(await alice.recv())
                    if frame.get("#code") == "USER_DISCONNECTED":
                        disconnected = frame
            assert disconnected is not None, "the stalled client was never closed"
            assert disconnected["#srid"] == "Flood"
            assert [row[0] for row in rows(server)] == [user_pk(server, "alice")]
    finally:
        stalled.close()
    # It was closed as soon as the limit was passed, with no more than one message
    # over it, and nothing was buffered for it after that.
    waiting, *_ = re.findall(r"client stopped reading \((\d+) bytes waiting\)", server.log())
    assert LIMIT < int(waiting) <= LIMIT + 17_000
