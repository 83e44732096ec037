"""Every ``SKAPI_CHANNELS`` setting and its default, in one settings object.

``conf.NAME`` reads a setting: the project's value from ``settings.SKAPI_CHANNELS``
or the default, converted to the default's type, with import strings resolved to
the objects they name. The first read caches the value on the object, so a read on
the hot path (per frame) is a plain attribute lookup; changing ``SKAPI_CHANNELS``
(``override_settings`` in tests) fires ``setting_changed``, which empties the cache
and calls the functions registered with ``on_reload``.

Adding a setting is one line in ``DEFAULTS`` (and its type under ``Settings`` for
typed access; a dotted path to import goes into ``IMPORT_STRINGS``). ``checks.py``
validates the values at ``manage.py check``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.conf import settings
from django.core.signals import setting_changed
from django.utils.module_loading import import_string

DEFAULTS: dict[str, Any] = {
    # Protocol limits (docs/protocol.md section 6).
    "MAX_FRAME_BYTES": 32 * 1024,
    "MAX_GROUP_NAME_LENGTH": 128,
    "RATE_PER_SECOND": 20.0,
    "RATE_BURST": 40,
    "MAX_CONNECTIONS_PER_USER": 10,
    # New groups one user may create a minute, handshakes one logged-in user may
    # make a minute, and refused handshakes (not logged in, cross-site) one client
    # address may make a minute before it is refused without a look (each counted
    # per server process). 0 turns a limit off: joining is already bounded by the
    # frame rate.
    "GROUPS_CREATED_PER_MINUTE": 0,
    "HANDSHAKES_PER_MINUTE": 600,
    "REFUSED_HANDSHAKES_PER_MINUTE": 120,
    # Proxies (addresses or CIDR ranges) whose X-Forwarded-For is believed: the
    # client is the rightmost address not among them (client_address.py).
    "TRUSTED_PROXIES": [],
    # Seconds of sending at twice RATE_PER_SECOND or more after which a flooding
    # client is closed (4008).
    "FLOOD_CLOSE_AFTER": 10.0,
    # Bytes daphne may buffer for a client that stopped reading before it is
    # closed with 4009 (send_buffer.py); 0 leaves daphne unbounded.
    "SEND_BUFFER_LIMIT": 4 * 1024 * 1024,
    # Largest frame daphne reads from one of our sockets (send_buffer.py); a larger
    # one closes it with 1009 unread. 0 leaves daphne's own limit.
    "SERVER_MAX_FRAME_BYTES": 1024 * 1024,
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
    # History of each stream (docs/protocol.md section 11): the last HISTORY_SIZE messages,
    # each kept HISTORY_TTL seconds. Either 0 turns history off.
    "HISTORY_SIZE": 100,
    "HISTORY_TTL": 300.0,
    # Liveness of server processes (seconds). A process whose heartbeat is older
    # than DEAD_AFTER is reaped by the next reaper run of any live process, so a
    # death is cleaned up within DEAD_AFTER + REAP_INTERVAL.
    "HEARTBEAT_INTERVAL": 5.0,
    "DEAD_AFTER": 20.0,
    "REAP_INTERVAL": 5.0,
    # STUN/TURN servers for calls (RTCIceServer dicts: {"urls": ..., "username": ...,
    # "credential": ...}), given to the page by the template tag. None: host
    # candidates only, as on a LAN or one machine.
    "RTC_ICE_SERVERS": [],
    # Seconds between the checks of the connected users' logins (revocation.py):
    # a logout, password change or deactivation made outside the server processes
    # closes their sockets within this interval (and the query's time).
    "REVOCATION_SWEEP_INTERVAL": 15.0,
}

# Settings whose value may be a dotted path, resolved once to what it names.
IMPORT_STRINGS = frozenset(
    {"USER_ID_FUNCTION", "USER_LOOKUP_FUNCTION", "AUTHORIZE_JOIN", "AUTHORIZE_MESSAGE"}
)


def _normalise_path(value: Any) -> str:
    return str(value).strip("/") + "/"


# Settings that need more than their default's type.
CONVERTERS: dict[str, Callable[[Any], Any]] = {"WEBSOCKET_PATH": _normalise_path}


def convert(name: str, value: Any) -> Any:
    """``value`` as the setting ``name`` is used: typed like its default, imported."""
    if name in CONVERTERS:
        return CONVERTERS[name](value)
    if name in IMPORT_STRINGS:
        return import_string(value) if isinstance(value, str) else value
    default = DEFAULTS[name]
    # bool before int: bool is a subclass of int.
    for kind in (bool, int, float, str):
        if isinstance(default, kind):
            return kind(value)
    return value


class Settings:
    """``settings.SKAPI_CHANNELS`` with defaults, read once and cached until it changes.

    The annotations give typed access; the values come from ``__getattr__``.
    """

    MAX_FRAME_BYTES: int
    MAX_GROUP_NAME_LENGTH: int
    RATE_PER_SECOND: float
    RATE_BURST: int
    MAX_CONNECTIONS_PER_USER: int
    GROUPS_CREATED_PER_MINUTE: int
    HANDSHAKES_PER_MINUTE: int
    REFUSED_HANDSHAKES_PER_MINUTE: int
    TRUSTED_PROXIES: list[str]
    FLOOD_CLOSE_AFTER: float
    SEND_BUFFER_LIMIT: int
    SERVER_MAX_FRAME_BYTES: int
    MISSED_CLOSE_AFTER: int
    USER_ID_FUNCTION: Callable[[Any], str]
    USER_LOOKUP_FUNCTION: Callable[[str], Any]
    AUTHORIZE_JOIN: Callable[[str, str], Any] | None
    AUTHORIZE_MESSAGE: Callable[[str, str], Any] | None
    USER_CACHE_SECONDS: float
    TOKEN_MAX_AGE: int
    WEBSOCKET_PATH: str
    CHECK_ORIGIN: bool
    HISTORY_SIZE: int
    HISTORY_TTL: float
    HEARTBEAT_INTERVAL: float
    DEAD_AFTER: float
    REAP_INTERVAL: float
    RTC_ICE_SERVERS: list[dict[str, Any]]
    REVOCATION_SWEEP_INTERVAL: float

    def __init__(self) -> None:
        self._cached: set[str] = set()
        self._reload_callbacks: list[Callable[[], None]] = []

    @property
    def user_settings(self) -> dict[str, Any]:
        """The project's ``SKAPI_CHANNELS`` (empty when unset or not a dict: check E001)."""
        user = getattr(settings, "SKAPI_CHANNELS", None)
        return user if isinstance(user, dict) else {}

    def __getattr__(self, name: str) -> Any:
        if name not in DEFAULTS:
            raise AttributeError(f"Unknown SKAPI_CHANNELS setting {name!r}")
        value = convert(name, self.user_settings.get(name, DEFAULTS[name]))
        self._cached.add(name)
        setattr(self, name, value)
        return value

    def reload(self) -> None:
        """Forget the cached values; the next read takes the current settings."""
        for name in self._cached:
            self.__dict__.pop(name, None)
        self._cached.clear()
        for callback in self._reload_callbacks:
            callback()

    def on_reload(self, callback: Callable[[], None]) -> Callable[[], None]:
        """Call ``callback`` whenever the settings change (for caches built from them)."""
        self._reload_callbacks.append(callback)
        return callback


conf = Settings()


def reload_settings(*, setting: str, **kwargs: Any) -> None:
    if setting == "SKAPI_CHANNELS":
        conf.reload()


setting_changed.connect(reload_settings)
