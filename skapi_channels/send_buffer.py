"""A bound on what daphne buffers for a client that stopped reading.

daphne writes every ``websocket.send`` straight into the socket's Twisted transport,
which buffers without limit: one client that does not read would grow the server's
memory with every message for it. ASGI gives the application no view of that
buffer, so this wraps daphne's send: once more than ``SEND_BUFFER_LIMIT`` bytes wait
for a client, further messages to it are not buffered and it is closed with 4009
("too far behind"); its consumer then cleans up as for any close, and its group is
told ``USER_DISCONNECTED``. Under servers with backpressure (uvicorn) the consumer's
send waits instead, its layer queue fills, and the client is told
``MISSED_MESSAGES``.
"""

from __future__ import annotations

import logging
from typing import Any

logger = logging.getLogger("skapi_channels")

CLOSE_TOO_FAR_BEHIND = 4009
_installed = False


def pending_bytes(transport: Any) -> int:
    """Bytes a Twisted transport holds that the peer has not taken yet."""
    buffered = getattr(transport, "dataBuffer", b"")
    offset = getattr(transport, "offset", 0)
    return max(0, len(buffered) - offset) + getattr(transport, "_tempDataLen", 0)


def install_daphne_send_limit() -> None:
    """Wrap daphne's WebSocket send with the limit (once; the setting is read at each send)."""
    global _installed
    if _installed:
        return
    try:
        from daphne.ws_protocol import WebSocketProtocol
    except ImportError:  # not served by daphne
        return
    from skapi_channels.conf import conf

    original = WebSocketProtocol.serverSend

    def serverSend(self: Any, content: Any, binary: bool = False) -> None:
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
            return
        original(self, content, binary)

    WebSocketProtocol.serverSend = serverSend
    _installed = True
