"""WebSocket routes: include ``websocket_urlpatterns`` in the project's ASGI router.

The consumer authenticates the handshake itself (session cookie or ``?token=``), so
no session middleware is needed; inside ``AuthMiddlewareStack`` it uses the user
that the middleware found."""

from __future__ import annotations

from django.urls import path

from skapi_channels.conf import conf
from skapi_channels.consumer import RealtimeConsumer

websocket_urlpatterns = [
    path(conf.WEBSOCKET_PATH, RealtimeConsumer.as_asgi(), name="skapi_realtime"),
]
