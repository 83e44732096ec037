"""ASGI entry point: HTTP through Django, WebSockets through skapi_channels."""

import gc
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

# The garbage collector (docs/deployment.md, "Thousands of sockets per process"):
# what start-up made is frozen out of every collection, so a full one over a busy
# process takes milliseconds, not the 30-70 ms seen under ordinary churn; and
# collections run every 10,000 allocations instead of 700, so a reconnect storm does
# not spend a fifth of its CPU re-scanning the sockets it is opening.
gc.freeze()
gc.set_threshold(10_000, 10, 10)
