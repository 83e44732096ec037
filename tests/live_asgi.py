"""The demo project's ASGI application plus a plain consumer of another app, for the
live tests that check skapi_channels leaves other sockets of a project alone."""

from __future__ import annotations

from typing import Any

from channels.consumer import AsyncConsumer
from channels.routing import ProtocolTypeRouter, URLRouter
from django.urls import path

from project.asgi import django_asgi_app
from skapi_channels.routing import refuse_unrouted, websocket_urlpatterns


class PlainConsumer(AsyncConsumer):
    """Another app's consumer: ``stream N`` sends N frames of 16 KiB at once,
    ``close`` closes (1000) and sends after the close."""

    async def websocket_connect(self, message: dict[str, Any]) -> None:
        await self.send({"type": "websocket.accept"})

    async def websocket_receive(self, message: dict[str, Any]) -> None:
        command, _, argument = (message.get("text") or "").partition(" ")
        if command == "stream":
            for number in range(int(argument)):
                await self.send({"type": "websocket.send", "text": f"{number:08d}" + "x" * 16_384})
            await self.send({"type": "websocket.send", "text": "streamed"})
        elif command == "echo":
            await self.send({"type": "websocket.send", "text": argument})

    async def websocket_disconnect(self, message: dict[str, Any]) -> None:
        from channels.exceptions import StopConsumer

        raise StopConsumer()


application = ProtocolTypeRouter(
    {
        "http": django_asgi_app,
        "websocket": refuse_unrouted(
            URLRouter([*websocket_urlpatterns, path("ws/plain/", PlainConsumer.as_asgi())])
        ),
    }
)
