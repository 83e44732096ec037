"""History and recovery in the JS client (docs/protocol.md section 11), in Chromium
on a real daphne: a socket cut by the network while others keep talking comes back
with every message exactly once, in order; joinRealtime({group, last}) loads the
recent ones."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.browser.harness import Server, User, free_port
from tests.browser.test_chat import join_with_form, unique, user_id
from tests.browser.test_client import CLIENT, connect_and_join, events, wait_for

pytestmark = pytest.mark.browser


class CuttableProxy:
    """A TCP proxy to the server whose connections the test cuts as a network
    would: both sockets are aborted (a reset), no WebSocket close frame is sent."""

    def __init__(self, target: int) -> None:
        self.target = target
        self.port = free_port()
        self.links: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = set()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self._listen(), self.loop).result(10)

    async def _listen(self) -> None:
        self.server = await asyncio.start_server(self._link, "127.0.0.1", self.port)

    async def _link(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target)
        link = (writer, up_writer)
        self.links.add(link)

        async def pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
            try:
                while data := await source.read(65536):
                    sink.write(data)
                    await sink.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                sink.transport.abort()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        self.links.discard(link)

    def cut(self) -> int:
        """Reset every open connection; how many there were."""

        def abort() -> int:
            for down, up in self.links:
                down.transport.abort()
                up.transport.abort()
            return len(self.links)

        async def run() -> int:
            return abort()

        return asyncio.run_coroutine_threadsafe(run(), self.loop).result(10)

    def close(self) -> None:
        async def stop() -> None:
            self.server.close()
            for down, up in self.links:
                down.transport.abort()
                up.transport.abort()

        asyncio.run_coroutine_threadsafe(stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@pytest.fixture
def proxy(server: Server) -> Iterator[CuttableProxy]:
    running = CuttableProxy(server.port)
    try:
        yield running
    finally:
        running.close()


def through(proxy: CuttableProxy) -> str:
    """Script: the client `t` opens its sockets through the proxy."""
    return (
        "() => { t.client._socketUrl = () => "
        f"Promise.resolve('ws://127.0.0.1:{proxy.port}/ws/realtime/'); }}"
    )


def messages(user: User, kind: str = "message") -> list[dict[str, Any]]:
    return [e for e in events(user) if e["type"] == kind]


def test_a_socket_cut_by_the_network_recovers_every_message_once_in_order(
    login: Callable[[str], User], proxy: CuttableProxy
) -> None:
    alice, bob = login("alice"), login("bob")
    group = unique("Cut")
    bob.evaluate(CLIENT)
    connect_and_join(bob, group)
    for n in range(3):
        bob.evaluate("([n, g]) => t.client.postRealtime('early-' + n, g)", [n, group])
    # Alice joins with the last two kept messages.
    alice.evaluate(CLIENT, {"reconnectDelay": 300})
    alice.evaluate(through(proxy))
    connect_and_join(alice, group, last=2)
    loaded = messages(alice)
    assert [(e["message"], e.get("replay")) for e in loaded] == [
        ("early-1", True),
        ("early-2", True),
    ]
    # Bob talks to the group and privately to Alice; her socket is cut meanwhile.
    bob.evaluate(
        """([g, uid]) => {
            window.talk = (async () => {
                for (let i = 0; i < 40; i++) {
                    await t.client.postRealtime(i, g);
                    if (i % 4 === 0) await t.client.postRealtime('p' + i, uid);
                    await new Promise(r => setTimeout(r, 40));
                }
            })();
        }""",
        [group, user_id(alice)],
    )
    wait_for(alice, "() => t.events.some(e => e.type === 'message' && e.message === 8)")
    assert proxy.cut() >= 1
    bob.evaluate("() => window.talk")  # every message sent
    wait_for(alice, "() => t.events.some(e => e.type === 'message' && e.message === 39)", 30_000)
    alice.page.wait_for_timeout(300)  # nothing more (no duplicate) follows
    seen = messages(alice)
    assert [e["message"] for e in seen] == ["early-1", "early-2", *range(40)]
    assert all(e["sender_rid"] == group for e in seen)
    recovered = [e["message"] for e in seen if e.get("replay") and e["message"] not in ("early-1", "early-2")]
    assert recovered, "the socket came back without needing a replay: the cut did not bite"
    private = messages(alice, "private")
    assert [e["message"] for e in private] == [f"p{i}" for i in range(0, 40, 4)]
    kinds = [e["type"] for e in events(alice)]
    assert "reconnect" in kinds and "error" not in kinds, kinds
    assert alice.evaluate("() => t.client.state") == "open"
    for user in (alice, bob):
        user.evaluate("() => t.client.closeRealtime()")


def test_recovery_impossible_is_told_as_missed_messages(
    login: Callable[[str], User], proxy: CuttableProxy
) -> None:
    alice, bob = login("alice"), login("bob")
    group = unique("Lost")
    bob.evaluate(CLIENT)
    connect_and_join(bob, group)
    alice.evaluate(CLIENT, {"reconnectDelay": 300})
    alice.evaluate(through(proxy))
    connect_and_join(alice, group)
    # As if the server had lost the stream's history: a stale epoch.
    alice.evaluate("() => { t.client._streams.group.epoch = 'gone'; }")
    proxy.cut()
    wait_for(alice, "() => t.events.some(e => e.type === 'error')", 20_000)
    error = [e for e in events(alice) if e["type"] == "error"][0]
    assert error["code"] == "MISSED_MESSAGES", error
    bob.evaluate("(g) => t.client.postRealtime('after', g)", group)
    wait_for(alice, "() => t.events.some(e => e.type === 'message' && e.message === 'after')")
    for user in (alice, bob):
        user.evaluate("() => t.client.closeRealtime()")


def test_the_demo_chat_shows_recent_messages_on_join(login: Callable[[str], User]) -> None:
    alice, bob = login("alice"), login("bob")
    group = unique("Recent")
    bob.evaluate(CLIENT)
    bob.evaluate(
        "async (g) => { await t.client.connectRealtime(t.record);"
        " await t.client.joinRealtime({group: g});"
        " await t.client.postRealtime('said before', g); }",
        group,
    )
    join_with_form(alice, group)
    alice.log_entry(".message.replay", "said before")
    bob.evaluate("(g) => t.client.postRealtime('said after', g)", group)
    alice.log_entry(".message", "said after")
    assert alice.page.locator("#log li.replay", has_text="said after").count() == 0
    assert alice.errors == []
    bob.evaluate("() => t.client.closeRealtime()")
