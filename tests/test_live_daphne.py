"""On a real daphne: what the app does to the server stays with its own sockets, and
whatever a client sends to a path, the answer is clean."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import sqlite3
import time
from collections.abc import Iterator

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tests.live_http import Browser
from tests.live_server import Server
from tests.test_slow_receiver import token_for

LIMIT = 256 * 1024
FRAME_CAP = 128 * 1024


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    live = Server(
        tmp_path_factory.mktemp("live"),
        {
            "SEND_BUFFER_LIMIT": LIMIT,
            "REVOCATION_SWEEP_INTERVAL": 1,
            "SERVER_MAX_FRAME_BYTES": FRAME_CAP,
        },
        application="tests.live_asgi:application",
    )
    live.prepare()
    live.start()
    yield live
    live.stop()


@pytest.mark.parametrize("path", ["/ws/nope/", "/ws/realtime", "/ws/realtime/x/", "/"])
async def test_a_handshake_to_a_path_nothing_routes_is_refused_cleanly(server, path):
    with pytest.raises(InvalidStatus) as refused:
        async with connect(f"ws://127.0.0.1:{server.port}{path}"):
            pass
    assert refused.value.response.status_code in (403, 404)
    await asyncio.sleep(0.2)
    assert "Traceback" not in server.log() and "No route found" not in server.log()


async def test_another_apps_socket_keeps_daphnes_own_send(server):
    # A client that reads nothing for a while, of a plain consumer that sends far
    # more than SEND_BUFFER_LIMIT: not ours, so never closed with 4009.
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", server.port))
    async with connect(
        f"ws://127.0.0.1:{server.port}/ws/plain/", sock=sock, max_queue=1, max_size=None
    ) as plain:
        await plain.send("stream 2000")
        await asyncio.sleep(2)  # daphne buffers while we do not read
        received = [await asyncio.wait_for(plain.recv(), 20) for _ in range(2001)]
        assert received[-1] == "streamed"
        assert [int(text[:8]) for text in received[:-1]] == list(range(2000))
        await plain.send("echo still open")
        assert await plain.recv() == "still open"
    assert "stopped reading" not in server.log()


async def test_frames_over_the_server_cap_close_our_sockets_only(server):
    uri = f"ws://127.0.0.1:{server.port}/ws/realtime/?token={token_for(server, 'alice')}"
    async with connect(uri, max_size=None) as alice:
        # Over the protocol's limit, under the cap: refused, the socket stays.
        await alice.send('{"id": 5, "content": "' + "x" * 100_000 + '"}')
        assert '"#code":"TOO_LARGE"' in await alice.recv()
        await alice.send("[" * (FRAME_CAP + 1))
        with pytest.raises(ConnectionClosed):
            await asyncio.wait_for(alice.recv(), 10)
        # 1009 from autobahn, unless it dropped the connection while the client was
        # still writing the frame (1006): either way closed, the frame never read.
        assert alice.close_code in (1009, 1006)
    await asyncio.sleep(0.5)
    assert "Traceback" not in server.log()
    async with connect(f"ws://127.0.0.1:{server.port}/ws/plain/", max_size=None) as plain:
        await plain.send("echo " + "y" * (FRAME_CAP + 1))
        assert len(await asyncio.wait_for(plain.recv(), 10)) == FRAME_CAP + 1


async def test_our_socket_is_still_bounded(server):
    uri = f"ws://127.0.0.1:{server.port}/ws/realtime/?token={token_for(server, 'alice')}"
    async with connect(uri) as alice:
        await alice.send('{"action": "keepAlive", "id": 1}')
        assert await alice.recv() == '{"#ack":1}'


async def closed_with(socket_: object, code: int, within: float) -> float:
    """Wait for the server's close; returns how long it took."""
    started = time.monotonic()
    async with asyncio.timeout(within):
        with contextlib.suppress(ConnectionClosed):
            async for _ in socket_:  # notices may come first
                pass
    assert socket_.close_code == code, socket_.close_code
    return time.monotonic() - started


async def test_logging_out_closes_the_users_sockets_with_4001(server):
    browser = Browser(server)
    session_key = await asyncio.to_thread(browser.log_in, "alice")
    uri = f"ws://127.0.0.1:{server.port}/ws/realtime/"
    by_cookie = connect(uri, additional_headers={"Cookie": f"sessionid={session_key}"})
    by_token = connect(f"{uri}?token={token_for(server, 'alice')}")
    async with by_cookie as first, by_token as second:
        for socket_ in (first, second):
            await socket_.send('{"action": "keepAlive", "id": 1}')
            assert await socket_.recv() == '{"#ack":1}'
        await asyncio.to_thread(browser.log_out)
        for socket_ in (first, second):
            assert await closed_with(socket_, 4001, within=5) < 2


async def test_a_change_written_by_another_process_closes_within_the_sweep(server):
    uri = f"ws://127.0.0.1:{server.port}/ws/realtime/?token={token_for(server, 'bob')}"
    async with connect(uri) as bob:
        await bob.send('{"action": "keepAlive", "id": 1}')
        assert await bob.recv() == '{"#ack":1}'
        with sqlite3.connect(server.workdir / "db.sqlite3") as db:
            db.execute("UPDATE auth_user SET is_active = 0 WHERE username = 'bob'")
        try:
            # REVOCATION_SWEEP_INTERVAL is 1 s here.
            assert await closed_with(bob, 4001, within=10) < 5
        finally:
            with sqlite3.connect(server.workdir / "db.sqlite3") as db:
                db.execute("UPDATE auth_user SET is_active = 1 WHERE username = 'bob'")
