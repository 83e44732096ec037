"""Every ``SKAPI_CHANNELS`` setting and its default, read at call time.

Reading at call time keeps ``override_settings`` working in tests. ``checks.py``
validates the values at ``manage.py check``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.conf import settings
from django.utils.module_loading import import_string

DEFAULTS: dict[str, Any] = {
    # PROTOCOL section 6.
    "MAX_FRAME_BYTES": 32 * 1024,
    "MAX_GROUP_NAME_LENGTH": 128,
    "RATE_PER_SECOND": 20.0,
    "RATE_BURST": 40,
    "MAX_CONNECTIONS_PER_USER": 10,
    # New groups one user may create a minute, and handshakes one IP address may
    # make a minute (each counted per server process).
    "GROUPS_CREATED_PER_MINUTE": 30,
    "HANDSHAKES_PER_MINUTE": 600,
    # Rate-limited frames in a row after which a flooding client is closed (4008).
    "FLOOD_CLOSE_AFTER": 200,
    # Bytes daphne may buffer for a client that stopped reading before it is
    # closed with 4009 (send_buffer.py); 0 leaves daphne unbounded.
    "SEND_BUFFER_LIMIT": 4 * 1024 * 1024,
    # Messages a slow connection may miss in all before it is closed (4009).
    "MISSED_CLOSE_AFTER": 1000,
    # Identity: user -> user_id string, and user_id string -> user (or None).
    "USER_ID_FUNCTION": "skapi_channels.identity.user_id_of",
    "USER_LOOKUP_FUNCTION": "skapi_channels.identity.user_for_id",
    # Authorisation hooks (hooks.py): None allows everyone.
    "AUTHORIZE_JOIN": None,
    "AUTHORIZE_MESSAGE": None,
    # How long a known user_id is trusted without asking the database again.
    "USER_CACHE_SECONDS": 60.0,
    # Handshake tokens from /realtime/token/.
    "TOKEN_MAX_AGE": 60,
    # Where the socket is routed (also what the template tag tells the client).
    "WEBSOCKET_PATH": "ws/realtime/",
    # Refuse handshakes whose Origin is not in ALLOWED_HOSTS.
    "CHECK_ORIGIN": True,
    # Liveness of server processes (seconds). A process whose heartbeat is older
    # than DEAD_AFTER is reaped by the next reaper run of any live process, so a
    # death is cleaned up within DEAD_AFTER + REAP_INTERVAL.
    "HEARTBEAT_INTERVAL": 5.0,
    "DEAD_AFTER": 20.0,
    "REAP_INTERVAL": 5.0,
}


class Settings:
    """Typed access to ``settings.SKAPI_CHANNELS``, with defaults."""

    def _get(self, name: str) -> Any:
        user = getattr(settings, "SKAPI_CHANNELS", None)
        if not isinstance(user, dict):  # reported by the system check E001
            return DEFAULTS[name]
        return user.get(name, DEFAULTS[name])

    @property
    def MAX_FRAME_BYTES(self) -> int:
        return int(self._get("MAX_FRAME_BYTES"))

    @property
    def MAX_GROUP_NAME_LENGTH(self) -> int:
        return int(self._get("MAX_GROUP_NAME_LENGTH"))

    @property
    def RATE_PER_SECOND(self) -> float:
        return float(self._get("RATE_PER_SECOND"))

    @property
    def RATE_BURST(self) -> int:
        return int(self._get("RATE_BURST"))

    @property
    def MAX_CONNECTIONS_PER_USER(self) -> int:
        return int(self._get("MAX_CONNECTIONS_PER_USER"))

    @property
    def GROUPS_CREATED_PER_MINUTE(self) -> int:
        return int(self._get("GROUPS_CREATED_PER_MINUTE"))

    @property
    def HANDSHAKES_PER_MINUTE(self) -> int:
        return int(self._get("HANDSHAKES_PER_MINUTE"))

    @property
    def FLOOD_CLOSE_AFTER(self) -> int:
        return int(self._get("FLOOD_CLOSE_AFTER"))

    @property
    def SEND_BUFFER_LIMIT(self) -> int:
        return int(self._get("SEND_BUFFER_LIMIT"))

    @property
    def MISSED_CLOSE_AFTER(self) -> int:
        return int(self._get("MISSED_CLOSE_AFTER"))

    @property
    def USER_ID_FUNCTION(self) -> Callable[[Any], str]:
        return _import(self._get("USER_ID_FUNCTION"))

    @property
    def USER_LOOKUP_FUNCTION(self) -> Callable[[str], Any]:
        return _import(self._get("USER_LOOKUP_FUNCTION"))

    @property
    def AUTHORIZE_JOIN(self) -> Callable[[str, str], Any] | None:
        value = self._get("AUTHORIZE_JOIN")
        return None if value is None else _import(value)

    @property
    def AUTHORIZE_MESSAGE(self) -> Callable[[str, str], Any] | None:
        value = self._get("AUTHORIZE_MESSAGE")
        return None if value is None else _import(value)

    @property
    def USER_CACHE_SECONDS(self) -> float:
        return float(self._get("USER_CACHE_SECONDS"))

    @property
    def TOKEN_MAX_AGE(self) -> int:
        return int(self._get("TOKEN_MAX_AGE"))

    @property
    def WEBSOCKET_PATH(self) -> str:
        return str(self._get("WEBSOCKET_PATH")).strip("/") + "/"

    @property
    def CHECK_ORIGIN(self) -> bool:
        return bool(self._get("CHECK_ORIGIN"))

    @property
    def HEARTBEAT_INTERVAL(self) -> float:
        return float(self._get("HEARTBEAT_INTERVAL"))

    @property
    def DEAD_AFTER(self) -> float:
        return float(self._get("DEAD_AFTER"))

    @property
    def REAP_INTERVAL(self) -> float:
        return float(self._get("REAP_INTERVAL"))


def _import(value: Any) -> Callable[..., Any]:
    return import_string(value) if isinstance(value, str) else value


conf = Settings()
