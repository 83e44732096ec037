"""ASGI entry point: HTTP through Django, WebSockets through skapi_channels."""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")
django_asgi_app = get_asgi_application()

from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402

from skapi_channels.routing import refuse_unrouted, websocket_urlpatterns  # noqa: E402

application = ProtocolTypeRouter(
    {
        "http": django_asgi_app,
        # The consumer reads the session cookie (or ?token=) itself at the handshake.
        # A handshake to a path nothing routes is refused (403), not a 500.
        "websocket": refuse_unrouted(URLRouter(websocket_urlpatterns)),
    }
)
