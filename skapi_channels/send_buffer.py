"""A bound on what daphne buffers for a client that stopped reading.

daphne writes every ``websocket.send`` straight into the socket's Twisted transport,
which buffers without limit: one client that does not read would grow the server's
memory with every message for it. ASGI gives the application no view of that
buffer, so this wraps daphne's send of the sockets our consumer accepted (it marks
its ``websocket.accept``; every other socket of the host project keeps daphne's own
send): once more than ``SEND_BUFFER_LIMIT`` bytes wait for a client, further messages to it are not buffered and it is closed with 4009
("too far behind"); its consumer then cleans up as for any close, and its group is
told ``USER_DISCONNECTED``. Under servers with backpressure (uvicorn) the consumer's
send waits instead, its layer queue fills, and the client is told
``MISSED_MESSAGES``.

The same wrapper caps what our sockets may receive: a frame over
``SERVER_MAX_FRAME_BYTES`` (1 MiB) closes the socket with 1009 before it is read,
however high daphne's own limit is set for the rest of the project. Frames between
``MAX_FRAME_BYTES`` and that cap get ``TOO_LARGE`` and the socket stays open.

Our accept also gives the socket ``direct_write``: its frames go to the kernel at
once rather than on Twisted's next writable turn.
"""

from __future__ import annotations

import logging
from typing import Any

logger = logging.getLogger("skapi_channels")

_installed = False


def pending_bytes(transport: Any) -> int:
    """Bytes a Twisted transport holds that the peer has not taken yet."""
    buffered = getattr(transport, "dataBuffer", b"")
    offset = getattr(transport, "offset", 0)
    return max(0, len(buffered) - offset) + getattr(transport, "_tempDataLen", 0)


# The key our consumer adds to its ``websocket.accept``: only sockets accepted with
# it get the limit (servers ignore keys they do not know).
ACCEPT_MARK = "skapi_channels.send_limit"
# What the wrapper reads of daphne and Twisted; if any moved, it stands down.
DAPHNE_ATTRIBUTES = ("serverSend", "serverClose", "handle_reply", "STATE_OPEN", "CONFIG_ATTRS")
# Options autobahn copies onto each protocol instance (its CONFIG_ATTRS).
AUTOBAHN_OPTIONS = ("maxFramePayloadSize", "maxMessagePayloadSize")
TWISTED_ATTRIBUTES = ("dataBuffer", "offset")


def missing_attributes(protocol_class: Any, transport_class: Any) -> list[str]:
    missing = [
        f"{protocol_class.__name__}.{name}"
        for name in DAPHNE_ATTRIBUTES
        if not hasattr(protocol_class, name)
    ]
    options = getattr(protocol_class, "CONFIG_ATTRS", ())
    missing += [
        f"{protocol_class.__name__}.CONFIG_ATTRS[{name!r}]"
        for name in AUTOBAHN_OPTIONS
        if name not in options
    ]
    missing += [
        f"{transport_class.__name__}.{name}"
        for name in TWISTED_ATTRIBUTES
        if not hasattr(transport_class, name)
    ]
    return missing


def install_daphne_send_limit() -> None:
    """Wrap daphne's WebSocket send with the limit (once), for
    the sockets our consumer accepted; every other socket of the host project gets
    daphne's own send, unchanged."""
    global _installed
    if _installed:
        return
    try:
        from daphne.ws_protocol import WebSocketProtocol
        from twisted.internet.abstract import FileDescriptor
    except ImportError:  # not served by daphne
        return
    _installed = True
    missing = missing_attributes(WebSocketProtocol, FileDescriptor)
    if missing:
        logger.warning(
            "Not bounding daphne's send buffer: this daphne or Twisted lacks %s. Clients "
            "that stop reading are then only bounded by MISSED_CLOSE_AFTER.",
            ", ".join(missing),
        )
        return
    from skapi_channels import direct_write
    from skapi_channels.conf import conf
    from skapi_channels.protocol import CLOSE_TOO_FAR_BEHIND

    original_send = WebSocketProtocol.serverSend
    original_reply = WebSocketProtocol.handle_reply

    def handle_reply(self: Any, message: dict[str, Any]) -> None:
        if message.get(ACCEPT_MARK) and message.get("type") == "websocket.accept":
            self._skapi_send_limit = True
            cap = conf.SERVER_MAX_FRAME_BYTES
            if cap:
                # autobahn closes with 1009 as soon as a frame's header announces
                # more, before reading it; for our sockets only, whatever daphne's
                # own limit for the project is.
                self.maxFramePayloadSize = self.maxMessagePayloadSize = cap
            direct_write.install(self.transport)
        original_reply(self, message)

    def serverSend(self: Any, content: Any, binary: bool = False) -> None:
        if not getattr(self, "_skapi_send_limit", False):
            return original_send(self, content, binary)  # not our socket
        if self.state != self.STATE_OPEN:
            return  # closing: daphne's disconnect event is on its way
        limit = conf.SEND_BUFFER_LIMIT  # cached by the settings object
        if limit and pending_bytes(self.transport) > limit:
            if not getattr(self, "_skapi_too_far_behind", False):
                self._skapi_too_far_behind = True
                logger.warning(
                    "Closing a WebSocket whose client stopped reading (%d bytes waiting)",
                    pending_bytes(self.transport),
                )
                self.serverClose(code=CLOSE_TOO_FAR_BEHIND)
            return None
        return original_send(self, content, binary)

    WebSocketProtocol.handle_reply = handle_reply
    WebSocketProtocol.serverSend = serverSend
