"""System checks for ``SKAPI_CHANNELS``: bad settings fail ``manage.py check``."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.checks import CheckMessage, Error
from django.utils.module_loading import import_string

from skapi_channels.conf import DEFAULTS

POSITIVE_INTEGERS = (
    "MAX_FRAME_BYTES",
    "MAX_GROUP_NAME_LENGTH",
    "RATE_BURST",
    "MAX_CONNECTIONS_PER_USER",
    "GROUPS_CREATED_PER_MINUTE",
    "HANDSHAKES_PER_MINUTE",
    "FLOOD_CLOSE_AFTER",
    "MISSED_CLOSE_AFTER",
    "TOKEN_MAX_AGE",
)
POSITIVE_NUMBERS = (
    "RATE_PER_SECOND",
    "USER_CACHE_SECONDS",
    "HEARTBEAT_INTERVAL",
    "DEAD_AFTER",
    "REAP_INTERVAL",
)
CALLABLES = ("USER_ID_FUNCTION", "USER_LOOKUP_FUNCTION")


def callable_problem(value: Any) -> str | None:
    """Why ``value`` is neither a callable nor the dotted path of one, or None."""
    try:
        function = import_string(value) if isinstance(value, str) else value
    except ImportError as exc:
        return str(exc)
    return None if callable(function) else f"{value!r} is not callable"


def check_settings(**kwargs: Any) -> list[CheckMessage]:  # noqa: C901
    user = getattr(settings, "SKAPI_CHANNELS", {})
    if not isinstance(user, dict):
        return [
            Error(
                "SKAPI_CHANNELS must be a dict.",
                hint="Set SKAPI_CHANNELS = {} or a dict of the settings to change.",
                id="skapi_channels.E001",
            )
        ]
    errors: list[CheckMessage] = []
    for name in sorted(set(user) - set(DEFAULTS)):
        errors.append(
            Error(
                f"SKAPI_CHANNELS has an unknown setting {name!r}.",
                hint="Known settings: " + ", ".join(sorted(DEFAULTS)) + ".",
                id="skapi_channels.E002",
            )
        )
    for name in POSITIVE_INTEGERS:
        value = user.get(name, DEFAULTS[name])
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            errors.append(
                Error(
                    f"SKAPI_CHANNELS[{name!r}] must be a positive integer, not {value!r}.",
                    hint=f"The default is {DEFAULTS[name]!r}.",
                    id="skapi_channels.E003",
                )
            )
    for name in POSITIVE_NUMBERS:
        value = user.get(name, DEFAULTS[name])
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
            errors.append(
                Error(
                    f"SKAPI_CHANNELS[{name!r}] must be a positive number, not {value!r}.",
                    hint=f"The default is {DEFAULTS[name]!r}.",
                    id="skapi_channels.E004",
                )
            )
    for name in CALLABLES:
        reason = callable_problem(user.get(name, DEFAULTS[name]))
        if reason:
            errors.append(
                Error(
                    f"SKAPI_CHANNELS[{name!r}] must be a callable or its dotted path: {reason}.",
                    hint=f"The default is {DEFAULTS[name]!r}.",
                    id="skapi_channels.E005",
                )
            )
    dead_after = user.get("DEAD_AFTER", DEFAULTS["DEAD_AFTER"])
    heartbeat = user.get("HEARTBEAT_INTERVAL", DEFAULTS["HEARTBEAT_INTERVAL"])
    if (
        isinstance(dead_after, (int, float))
        and isinstance(heartbeat, (int, float))
        and dead_after < 2 * heartbeat
    ):
        errors.append(
            Error(
                "SKAPI_CHANNELS['DEAD_AFTER'] must be at least twice HEARTBEAT_INTERVAL, "
                "or live processes are taken for dead.",
                hint=f"DEAD_AFTER is {dead_after!r}, HEARTBEAT_INTERVAL is {heartbeat!r}.",
                id="skapi_channels.E006",
            )
        )
    if not isinstance(user.get("WEBSOCKET_PATH", DEFAULTS["WEBSOCKET_PATH"]), str):
        errors.append(
            Error(
                "SKAPI_CHANNELS['WEBSOCKET_PATH'] must be a string.",
                hint=f"The default is {DEFAULTS['WEBSOCKET_PATH']!r}.",
                id="skapi_channels.E007",
            )
        )
    for name in ("AUTHORIZE_JOIN", "AUTHORIZE_MESSAGE"):
        value = user.get(name)
        reason = None if value is None else callable_problem(value)
        if reason:
            errors.append(
                Error(
                    f"SKAPI_CHANNELS[{name!r}] must be None, a callable or its dotted path: "
                    f"{reason}.",
                    hint="The default None lets everyone.",
                    id="skapi_channels.E008",
                )
            )
    limit = user.get("SEND_BUFFER_LIMIT", DEFAULTS["SEND_BUFFER_LIMIT"])
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
        errors.append(
            Error(
                f"SKAPI_CHANNELS['SEND_BUFFER_LIMIT'] must be a whole number of bytes, not {limit!r}.",
                hint="0 turns the limit off; the default is 4 MiB.",
                id="skapi_channels.E009",
            )
        )
    return errors
