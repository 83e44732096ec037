"""pytest fixtures for projects that use skapi_channels.

Installed with the package and registered through the ``pytest11`` entry point, so
a project's tests can use them without configuration (``-p
no:skapi_channels.pytest_plugin`` turns them off). They need pytest-django and
pytest-asyncio; without them the fixtures are not defined.

``realtime``: a ``skapi_channels.testing.Realtime`` on the test database (it uses
``transactional_db``, since the consumer writes presence from other threads), which
connects users to the project's own ASGI application in the test's process and
closes everything after the test.

``realtime_live_server``: a ``skapi_channels.testing.LiveServer``, the project's ASGI
application served by daphne in a child process on the test database (``.url``,
``.ws_url``, ``.cookie_for(user)``), for clients outside the test's process.

See ``skapi_channels/testing.py`` and docs/testing.md.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

try:
    import pytest_asyncio
    import pytest_django  # noqa: F401  (its transactional_db fixture)
except ImportError:  # pragma: no cover - depends on the project's test tools
    pytest_asyncio = None  # type: ignore[assignment]

if pytest_asyncio is not None:

    @pytest_asyncio.fixture
    async def realtime(transactional_db: None) -> AsyncIterator[Any]:
        """Connect users to the app's consumer: ``await realtime.connect_users("alice",
        "bob")``; every socket is closed after the test."""
        from skapi_channels.testing import Realtime

        room = Realtime()
        try:
            yield room
        finally:
            await room.close()

    import pytest

    @pytest.fixture
    def realtime_live_server(transactional_db: None) -> Iterator[Any]:
        """daphne serving the project in a child process on the test database."""
        from skapi_channels.testing import LiveServer

        server = LiveServer()
        server.start()
        try:
            yield server
        finally:
            server.stop()
