"""Baseline: a bare Channels consumer that only relays with ``group_send``.

No authentication, no presence, no acks for messages: what Channels itself costs.
Trivial protocol (one JSON object per frame, relayed verbatim, never re-encoded):

- ``/ws/bare/?user=U[&group=G]``: the connection joins the layer groups of user U
  (and of group G);
- ``{"g": G, "c": ...}``: the frame goes to every connection in group G;
- ``{"u": U, "c": ...}``: the frame goes to every connection of user U;
- ``{"join": G or null, "id": n}``: leave the current group, join G, answer
  ``{"ok": n}`` (only so that the churn scenario can time a join).

Serve: ``DJANGO_SETTINGS_MODULE=bench.baselines.bare_settings python -m daphne
bench.baselines.bare_channels:application`` (or uvicorn).
"""

from __future__ import annotations

import json
import os
from typing import Any
from urllib.parse import parse_qs

import django

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "bench.baselines.bare_settings")
django.setup()

from channels.generic.websocket import AsyncWebsocketConsumer  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from django.urls import path  # noqa: E402


class BareConsumer(AsyncWebsocketConsumer):
    user: str = ""
    room: str | None = None

    async def connect(self) -> None:
        query = parse_qs(self.scope["query_string"].decode("latin-1"))
        self.user = query.get("user", ["anonymous"])[0]
        self.room = query.get("group", [None])[0]
        await self.channel_layer.group_add("u." + self.user, self.channel_name)
        if self.room:
            await self.channel_layer.group_add("g." + self.room, self.channel_name)
        await self.accept()

    async def disconnect(self, code: int) -> None:
        await self.channel_layer.group_discard("u." + self.user, self.channel_name)
        if self.room:
            await self.channel_layer.group_discard("g." + self.room, self.channel_name)

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        data = json.loads(text_data or "{}")
        if "g" in data:
            await self.channel_layer.group_send(
                "g." + data["g"], {"type": "relay", "text": text_data}
            )
        elif "u" in data:
            await self.channel_layer.group_send(
                "u." + data["u"], {"type": "relay", "text": text_data}
            )
        elif "join" in data:
            if self.room:
                await self.channel_layer.group_discard("g." + self.room, self.channel_name)
            self.room = data["join"]
            if self.room:
                await self.channel_layer.group_add("g." + self.room, self.channel_name)
            await self.send(text_data=json.dumps({"ok": data.get("id")}))

    async def relay(self, event: dict[str, Any]) -> None:
        await self.send(text_data=event["text"])


application = ProtocolTypeRouter(
    {"websocket": URLRouter([path("ws/bare/", BareConsumer.as_asgi())])}
)
