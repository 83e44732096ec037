"""The tests' project ASGI application: HTTP through Django, the app's socket."""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")
django_asgi_app = get_asgi_application()

from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402

from skapi_channels.routing import refuse_unrouted, websocket_urlpatterns  # noqa: E402

application = ProtocolTypeRouter(
    {
        "http": django_asgi_app,
        "websocket": refuse_unrouted(URLRouter(websocket_urlpatterns)),
    }
)
