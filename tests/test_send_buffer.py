"""The daphne send wrapper touches only the sockets our consumer accepted."""

from __future__ import annotations

from typing import Any

import pytest

pytest.importorskip("daphne")

from daphne.ws_protocol import WebSocketProtocol  # noqa: E402

from skapi_channels.send_buffer import ACCEPT_MARK  # noqa: E402


class Recording(WebSocketProtocol):
    """A daphne protocol with no network: records what daphne's own code does."""

    def __init__(self, state: int) -> None:  # no factory, no transport
        self.state = state
        self.client_addr = ("127.0.0.1", 1)
        self.calls: list[tuple[str, Any]] = []
        self.transport = type("Transport", (), {"dataBuffer": b"x" * 10_000_000, "offset": 0})()

    def serverAccept(self, subprotocol: Any = None) -> None:
        self.calls.append(("accept", subprotocol))
        self.state = self.STATE_OPEN

    def sendMessage(self, payload: bytes, isBinary: bool = False, *args: Any, **kwargs: Any) -> None:
        self.calls.append(("send", payload))

    def sendClose(self, code: Any = None, reason: Any = None) -> None:
        self.calls.append(("close", code))


def test_another_consumers_send_before_accept_keeps_daphnes_implicit_accept():
    # serverSend of a socket still connecting: daphne accepts it, then sends.
    other = Recording(WebSocketProtocol.STATE_CONNECTING)
    other.serverSend("hello")
    assert other.calls == [("accept", None), ("send", b"hello")]


def test_another_consumers_socket_is_never_closed_for_its_buffer():
    other = Recording(WebSocketProtocol.STATE_OPEN)  # 10 MB waiting, over the limit
    other.serverSend("more")
    assert other.calls == [("send", b"more")]


def test_our_socket_is_closed_with_4009_past_the_limit():
    ours = Recording(WebSocketProtocol.STATE_OPEN)
    ours._skapi_send_limit = True
    ours.serverSend("more")
    assert ours.calls == [("close", 4009)]
    ours.serverSend("again")
    assert ours.calls == [("close", 4009)]  # closed once, nothing buffered after


def test_our_accept_marks_the_socket():
    ours = Recording(WebSocketProtocol.STATE_CONNECTING)
    ours.handshake_deferred = type("D", (), {"callback": lambda self, value: None})()
    ours.handle_reply({"type": "websocket.accept", ACCEPT_MARK: True})
    assert ours._skapi_send_limit is True
    assert ours.maxFramePayloadSize == ours.maxMessagePayloadSize == 1024 * 1024
