"""The direct write of our sockets, on Twisted's own TCP connection over a real
socket pair: bytes arrive whole and in order whether the kernel takes them at once
or not, and Twisted's buffer keeps its part (backpressure, closing)."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from typing import Any

import pytest

pytest.importorskip("twisted")

from twisted.internet.tcp import Connection  # noqa: E402

from skapi_channels import direct_write  # noqa: E402
from skapi_channels.send_buffer import pending_bytes  # noqa: E402


class Reactor:
    """Records what the connection asks of the reactor."""

    def __init__(self) -> None:
        self.writers: list[Any] = []

    def addWriter(self, writer: Any) -> None:
        if writer not in self.writers:
            self.writers.append(writer)

    def removeWriter(self, writer: Any) -> None:
        if writer in self.writers:
            self.writers.remove(writer)

    def addReader(self, reader: Any) -> None:
        pass

    def removeReader(self, reader: Any) -> None:
        pass


@pytest.fixture
def pair() -> Iterator[tuple[Connection, socket.socket, Reactor]]:
    ours, peer = socket.socketpair()
    ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16_384)
    peer.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16_384)
    reactor = Reactor()
    connection = Connection(ours, protocol=None, reactor=reactor)  # type: ignore[arg-type]
    connection.connected = True
    yield connection, peer, reactor
    ours.close()
    peer.close()


def read_all(peer: socket.socket, size: int) -> bytes:
    peer.settimeout(5)
    received = bytearray()
    while len(received) < size:
        received += peer.recv(1 << 20)
    return bytes(received)


def test_a_frame_goes_to_the_kernel_without_waiting_for_the_reactor(pair):
    connection, peer, reactor = pair
    assert direct_write.install(connection)
    connection.write(b"hello")
    assert read_all(peer, 5) == b"hello"
    assert reactor.writers == []  # no writability watch, nothing buffered
    assert pending_bytes(connection) == 0


def test_what_the_kernel_does_not_take_waits_in_twisteds_buffer_in_order(pair):
    connection, peer, reactor = pair
    assert direct_write.install(connection)
    chunks = [bytes([65 + n % 26]) * 10_000 for n in range(60)]  # far more than the buffers
    for chunk in chunks[:30]:
        connection.write(chunk)
    assert reactor.writers == [connection]  # Twisted writes the rest when it can
    assert 0 < pending_bytes(connection) < 300_000
    peer.settimeout(5)
    received = bytearray(peer.recv(20_000))  # room in the kernel, Twisted still holds some
    for chunk in chunks[30:]:
        connection.write(chunk)  # behind what Twisted holds, never ahead of it
    expected = b"".join(chunks)
    while len(received) < len(expected):
        received += peer.recv(1 << 20)
        if connection in reactor.writers:
            connection.doWrite()
    assert bytes(received) == expected
    assert reactor.writers == [] and pending_bytes(connection) == 0
    connection.write(b"after")  # drained: straight to the kernel again
    assert read_all(peer, 5) == b"after"


def test_a_disconnecting_transport_keeps_twisteds_write(pair):
    connection, peer, reactor = pair
    assert direct_write.install(connection)
    connection.disconnecting = True
    connection.write(b"last words")
    assert reactor.writers == [connection] and pending_bytes(connection) == 10
    peer.setblocking(False)
    with pytest.raises(BlockingIOError):
        peer.recv(100)


def test_tls_and_other_transports_are_left_alone(pair):
    connection, _, _ = pair
    connection.TLS = True
    assert not direct_write.install(connection)
    assert "write" not in vars(connection)
    assert not direct_write.install(object())


def test_a_twisted_without_the_attributes_read_stands_down(pair, monkeypatch, caplog):
    connection, _, _ = pair
    monkeypatch.setattr(direct_write, "TRANSPORT_ATTRIBUTES", ("_not_in_twisted",))
    monkeypatch.setattr(direct_write, "_warned", False)
    assert not direct_write.install(connection)
    assert "write" not in vars(connection)
    assert "lacks _not_in_twisted" in caplog.text


def test_installed_once(pair):
    connection, _, _ = pair
    assert direct_write.install(connection)
    first = connection.write
    assert not direct_write.install(connection)
    assert connection.write is first
