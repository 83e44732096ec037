"""ASGI entry point: HTTP through Django, WebSockets through skapi_channels."""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")
django_asgi_app = get_asgi_application()

from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402

from skapi_channels.routing import websocket_urlpatterns  # noqa: E402

application = ProtocolTypeRouter(
    {
        "http": django_asgi_app,
        # The consumer reads the session cookie (or ?token=) itself at the handshake.
        "websocket": URLRouter(websocket_urlpatterns),
    }
)
