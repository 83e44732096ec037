"""Frames of our sockets go to the kernel at once under daphne.

Twisted's TCP transport never writes in ``write()``: it buffers the bytes, asks the
reactor to watch the socket for writability (an ``epoll_ctl`` call), writes on the
next turn of the loop, and stops watching again (another ``epoll_ctl``). Under a
reconnect storm that bookkeeping is a tenth of the server's CPU: every notice to
every member is a frame of its own.

For the sockets our consumer accepted (and no others: ``send_buffer`` calls
``install`` from its accept wrapper), ``write`` sends straight away when nothing
is waiting in Twisted's buffers, as asyncio's own transports do, and hands
Twisted whatever the kernel did not take, so ordering, backpressure
(``send_buffer.pending_bytes``), closing and error handling stay Twisted's. A
transport that is not plain TCP (TLS), has a producer, or is disconnecting keeps
Twisted's ``write`` unchanged, as does every transport when Twisted no longer has
the attributes this reads.
"""

from __future__ import annotations

import logging
from typing import Any

logger = logging.getLogger("skapi_channels")

# What this reads of a Twisted TCP connection; if any moved, it stands down.
TRANSPORT_ATTRIBUTES = (
    "dataBuffer",
    "offset",
    "_tempDataBuffer",
    "connected",
    "disconnecting",
    "_writeDisconnected",
    "producer",
    "socket",
    "TLS",
)


def _connection_class() -> type | None:
    try:
        from twisted.internet.tcp import Connection
    except ImportError:
        return None
    return Connection


def missing_attributes(transport: Any) -> list[str]:
    return [name for name in TRANSPORT_ATTRIBUTES if not hasattr(transport, name)]


_warned = False


def install(transport: Any) -> bool:
    """Give ``transport`` (one socket's) the direct write; False when it keeps
    Twisted's (not a plain TCP connection, or a Twisted this does not know)."""
    global _warned
    connection_class = _connection_class()
    if connection_class is None or not isinstance(transport, connection_class):
        return False
    if "write" in vars(transport):  # installed already, or someone else's
        return False
    missing = missing_attributes(transport)
    if missing:
        if not _warned:
            _warned = True
            logger.warning(
                "Writing through Twisted's buffer: this Twisted lacks %s.", ", ".join(missing)
            )
        return False
    if transport.TLS:
        return False
    buffered_write = transport.write  # Twisted's, bound to this transport

    def write(data: bytes) -> None:
        if (
            transport._tempDataBuffer
            or len(transport.dataBuffer) > transport.offset
            or not transport.connected
            or transport.disconnecting
            or transport._writeDisconnected
            or transport.producer is not None
            or transport.TLS
            or not isinstance(data, bytes)
        ):
            return buffered_write(data)
        try:
            sent = transport.socket.send(data)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:
            # Twisted's own write meets the same error on its next attempt and
            # closes the connection its usual way.
            return buffered_write(data)
        if sent < len(data):
            buffered_write(data[sent:])
        return None

    transport.write = write
    return True
