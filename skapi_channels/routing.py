"""WebSocket routes: include ``websocket_urlpatterns`` in the project's ASGI router.

The consumer authenticates the handshake itself (session cookie or ``?token=``), so
no session middleware is needed; inside ``AuthMiddlewareStack`` it uses the user
that the middleware found.

Channels' ``URLRouter`` raises when no route matches, which the server answers
with a 500 (and logs a traceback) for any path a client makes up. Wrap the router
in ``refuse_unrouted`` to refuse such a handshake with 403 instead::

    "websocket": refuse_unrouted(URLRouter(websocket_urlpatterns)),
"""

from __future__ import annotations

from typing import Any

from django.urls import path

from skapi_channels.conf import conf
from skapi_channels.consumer import RealtimeConsumer

websocket_urlpatterns = [
    path(conf.WEBSOCKET_PATH, RealtimeConsumer.as_asgi(), name="skapi_realtime"),
]

Scope = dict[str, Any]


class refuse_unrouted:  # noqa: N801 (used like a function)
    """An ASGI wrapper of a router: a WebSocket handshake (or HTTP request) to a
    path no route serves is refused (403, or 404 for HTTP), not an error."""

    def __init__(self, application: Any) -> None:
        self.application = application

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        started = False

        async def receive_seen() -> Any:
            nonlocal started
            started = True
            return await receive()

        async def send_seen(message: dict[str, Any]) -> None:
            nonlocal started
            started = True
            await send(message)

        try:
            await self.application(scope, receive_seen, send_seen)
        except ValueError as error:
            # Only the router's own "No route found", raised before any route ran.
            if started or not str(error).startswith("No route found"):
                raise
            await refuse(scope, receive, send)


async def refuse(scope: Scope, receive: Any, send: Any) -> None:
    if scope["type"] == "websocket":
        await receive()  # websocket.connect
        await send({"type": "websocket.close"})  # before accept: HTTP 403
    elif scope["type"] == "http":
        await send(
            {
                "type": "http.response.start",
                "status": 404,
                "headers": [(b"content-type", b"text/plain; charset=utf-8")],
            }
        )
        await send({"type": "http.response.body", "body": b"Not found"})
