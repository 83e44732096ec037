"""System checks: bad ``SKAPI_CHANNELS`` settings (E001-E019) and an environment the
app cannot keep its promises in (E02x, W02x) fail or warn at ``manage.py check``."""

from __future__ import annotations

import ipaddress
from typing import Any

from django.conf import settings
from django.core.checks import CheckMessage, Error, Warning
from django.db import DEFAULT_DB_ALIAS, connections, router
from django.utils.module_loading import import_string
from django.utils.translation import gettext_lazy as _

from skapi_channels.conf import DEFAULTS
from skapi_channels.layer_abilities import ReportsMissed

# The group_name columns hold this many characters (models.py).
MAX_STORED_GROUP_NAME = 255

POSITIVE_INTEGERS = (
    "MAX_FRAME_BYTES",
    "MAX_GROUP_NAME_LENGTH",
    "RATE_BURST",
    "MAX_CONNECTIONS_PER_USER",
    "MISSED_CLOSE_AFTER",
    "TOKEN_MAX_AGE",
)
POSITIVE_NUMBERS = (
    "RATE_PER_SECOND",
    "FLOOD_CLOSE_AFTER",
    "USER_CACHE_SECONDS",
    "HEARTBEAT_INTERVAL",
    "DEAD_AFTER",
    "REAP_INTERVAL",
    "REVOCATION_SWEEP_INTERVAL",
)
# Limits beyond the protocol: 0 turns them off.
OPTIONAL_LIMITS = (
    "GROUPS_CREATED_PER_MINUTE",
    "HANDSHAKES_PER_MINUTE",
    "REFUSED_HANDSHAKES_PER_MINUTE",
)
CALLABLES = ("USER_ID_FUNCTION", "USER_LOOKUP_FUNCTION")


def callable_problem(value: Any) -> str | None:
    """Why ``value`` is neither a callable nor the dotted path of one, or None."""
    try:
        function = import_string(value) if isinstance(value, str) else value
    except ImportError as exc:
        return str(exc)
    return None if callable(function) else f"{value!r} is not callable"


def trusted_proxies_problem(value: Any) -> str | None:
    if isinstance(value, str) or not isinstance(value, (list, tuple)):
        return f"must be a list of addresses or CIDR ranges, not {value!r}"
    for entry in value:
        try:
            ipaddress.ip_network(entry, strict=False)
        except (TypeError, ValueError):
            return f"has {entry!r}, which is not an address or CIDR range"
    return None


def check_settings(**kwargs: Any) -> list[CheckMessage]:  # noqa: C901
    user = getattr(settings, "SKAPI_CHANNELS", {})
    if not isinstance(user, dict):
        return [
            Error(
                _("SKAPI_CHANNELS must be a dict."),
                hint=_("Set SKAPI_CHANNELS = {} or a dict of the settings to change."),
                id="skapi_channels.E001",
            )
        ]
    errors: list[CheckMessage] = []
    for name in sorted(set(user) - set(DEFAULTS)):
        errors.append(
            Error(
                _("SKAPI_CHANNELS has an unknown setting %(name)r.") % {"name": name},
                hint=_("Known settings: %(names)s.") % {"names": ", ".join(sorted(DEFAULTS))},
                id="skapi_channels.E002",
            )
        )
    for name in POSITIVE_INTEGERS:
        value = user.get(name, DEFAULTS[name])
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            errors.append(
                Error(
                    _("SKAPI_CHANNELS[%(name)r] must be a positive integer, not %(value)r.")
                    % {"name": name, "value": value},
                    hint=_("The default is %(default)r.") % {"default": DEFAULTS[name]},
                    id="skapi_channels.E003",
                )
            )
    for name in OPTIONAL_LIMITS:
        value = user.get(name, DEFAULTS[name])
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            errors.append(
                Error(
                    _("SKAPI_CHANNELS[%(name)r] must be a whole number, not %(value)r.")
                    % {"name": name, "value": value},
                    hint=_("0 turns the limit off; the default is %(default)r.")
                    % {"default": DEFAULTS[name]},
                    id="skapi_channels.E003",
                )
            )
    for name in POSITIVE_NUMBERS:
        value = user.get(name, DEFAULTS[name])
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
            errors.append(
                Error(
                    _("SKAPI_CHANNELS[%(name)r] must be a positive number, not %(value)r.")
                    % {"name": name, "value": value},
                    hint=_("The default is %(default)r.") % {"default": DEFAULTS[name]},
                    id="skapi_channels.E004",
                )
            )
    for name in CALLABLES:
        reason = callable_problem(user.get(name, DEFAULTS[name]))
        if reason:
            errors.append(
                Error(
                    _("SKAPI_CHANNELS[%(name)r] must be a callable or its dotted path: %(reason)s.")
                    % {"name": name, "reason": reason},
                    hint=_("The default is %(default)r.") % {"default": DEFAULTS[name]},
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
                _(
                    "SKAPI_CHANNELS['DEAD_AFTER'] must be at least twice HEARTBEAT_INTERVAL, "
                    "or live processes are taken for dead."
                ),
                hint=_("DEAD_AFTER is %(dead_after)r, HEARTBEAT_INTERVAL is %(heartbeat)r.")
                % {"dead_after": dead_after, "heartbeat": heartbeat},
                id="skapi_channels.E006",
            )
        )
    if not isinstance(user.get("WEBSOCKET_PATH", DEFAULTS["WEBSOCKET_PATH"]), str):
        errors.append(
            Error(
                _("SKAPI_CHANNELS['WEBSOCKET_PATH'] must be a string."),
                hint=_("The default is %(default)r.") % {"default": DEFAULTS["WEBSOCKET_PATH"]},
                id="skapi_channels.E007",
            )
        )
    for name in ("AUTHORIZE_JOIN", "AUTHORIZE_MESSAGE"):
        value = user.get(name)
        reason = None if value is None else callable_problem(value)
        if reason:
            errors.append(
                Error(
                    _(
                        "SKAPI_CHANNELS[%(name)r] must be None, a callable or its dotted path: "
                        "%(reason)s."
                    )
                    % {"name": name, "reason": reason},
                    hint=_("The default None lets everyone."),
                    id="skapi_channels.E008",
                )
            )
    length = user.get("MAX_GROUP_NAME_LENGTH", DEFAULTS["MAX_GROUP_NAME_LENGTH"])
    if isinstance(length, int) and length > MAX_STORED_GROUP_NAME:
        errors.append(
            Error(
                _(
                    "SKAPI_CHANNELS['MAX_GROUP_NAME_LENGTH'] must be at most %(most)d, not "
                    "%(length)r: longer names do not fit the tables."
                )
                % {"most": MAX_STORED_GROUP_NAME, "length": length},
                hint=_("The protocol's default is 128."),
                id="skapi_channels.E010",
            )
        )
    proxies = user.get("TRUSTED_PROXIES", DEFAULTS["TRUSTED_PROXIES"])
    reason = trusted_proxies_problem(proxies)
    if reason:
        errors.append(
            Error(
                _("SKAPI_CHANNELS['TRUSTED_PROXIES'] %(reason)s.") % {"reason": reason},
                hint=_('List the proxies in front of the server, e.g. ["127.0.0.1", "10.0.0.0/8"].'),
                id="skapi_channels.E013",
            )
        )
    limit = user.get("SEND_BUFFER_LIMIT", DEFAULTS["SEND_BUFFER_LIMIT"])
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
        errors.append(
            Error(
                _("SKAPI_CHANNELS['SEND_BUFFER_LIMIT'] must be a whole number of bytes, not %(limit)r.")
                % {"limit": limit},
                hint=_("0 turns the limit off; the default is 4 MiB."),
                id="skapi_channels.E009",
            )
        )
    cap = user.get("SERVER_MAX_FRAME_BYTES", DEFAULTS["SERVER_MAX_FRAME_BYTES"])
    frame_limit = user.get("MAX_FRAME_BYTES", DEFAULTS["MAX_FRAME_BYTES"])
    if isinstance(cap, bool) or not isinstance(cap, int) or cap < 0 or (
        cap and isinstance(frame_limit, int) and cap <= frame_limit
    ):
        errors.append(
            Error(
                _(
                    "SKAPI_CHANNELS['SERVER_MAX_FRAME_BYTES'] must be 0 or a whole number of "
                    "bytes above MAX_FRAME_BYTES, not %(cap)r: frames between the two get "
                    "TOO_LARGE."
                )
                % {"cap": cap},
                hint=_("0 leaves daphne's own limit; the default is 1 MiB."),
                id="skapi_channels.E014",
            )
        )
    for name in ("HISTORY_SIZE", "HISTORY_TTL"):
        value = user.get(name, DEFAULTS[name])
        whole = name == "HISTORY_SIZE"
        kinds = (int,) if whole else (int, float)
        if isinstance(value, bool) or not isinstance(value, kinds) or value < 0:
            errors.append(
                Error(
                    (
                        _("SKAPI_CHANNELS[%(name)r] must be a whole number of messages (0 or more), not %(value)r.")
                        if whole
                        else _("SKAPI_CHANNELS[%(name)r] must be a number of seconds (0 or more), not %(value)r.")
                    )
                    % {"name": name, "value": value},
                    hint=_("0 turns history off; the default is %(default)r.")
                    % {"default": DEFAULTS[name]},
                    id="skapi_channels.E011",
                )
            )
    servers = user.get("RTC_ICE_SERVERS", DEFAULTS["RTC_ICE_SERVERS"])
    if not isinstance(servers, list) or not all(
        isinstance(server, dict) and isinstance(server.get("urls"), (str, list))
        for server in servers
    ):
        errors.append(
            Error(
                _(
                    "SKAPI_CHANNELS['RTC_ICE_SERVERS'] must be a list of RTCIceServer dicts, "
                    "each with 'urls', not %(servers)r."
                )
                % {"servers": servers},
                hint=_('For example [{"urls": "stun:stun.example.com:3478"}].'),
                id="skapi_channels.E012",
            )
        )
    return errors


# The environment the app runs in: ids E02x and W02x.


def check_channel_layer(**kwargs: Any) -> list[CheckMessage]:
    """The socket needs a channel layer, and one that reports what it drops."""
    layers = getattr(settings, "CHANNEL_LAYERS", None) or {}
    config = layers.get("default") if isinstance(layers, dict) else None
    if not isinstance(config, dict) or "BACKEND" not in config:
        return [
            Error(
                _("CHANNEL_LAYERS has no 'default' layer; the realtime socket needs one."),
                hint=_(
                    "For one server process: CHANNEL_LAYERS = {'default': {'BACKEND': "
                    "'skapi_channels.local_layer.LocalChannelLayer'}}; for several, the "
                    "Redis layer skapi_channels.redis_fanout.RedisFanoutLayer."
                ),
                id="skapi_channels.E020",
            )
        ]
    try:
        backend = import_string(config["BACKEND"])
    except ImportError as exc:
        return [
            Error(
                _("CHANNEL_LAYERS['default'] names a backend that cannot be imported: %s")
                % exc,
                hint=_("Check the BACKEND path and that its package is installed."),
                id="skapi_channels.E021",
            )
        ]
    if not (isinstance(backend, type) and issubclass(backend, ReportsMissed)):
        return [
            Warning(
                _(
                    "The channel layer %s cannot report the messages it drops: a receiver "
                    "that falls behind loses messages without being told (MISSED_MESSAGES)."
                )
                % config["BACKEND"],
                hint=_(
                    "Use skapi_channels.local_layer.LocalChannelLayer (one process) or "
                    "skapi_channels.redis_fanout.RedisFanoutLayer (several)."
                ),
                id="skapi_channels.W020",
            )
        ]
    return []


def check_database(**kwargs: Any) -> list[CheckMessage]:
    """The presence tables' SQL (``INSERT ... ON CONFLICT``, ``RETURNING``) runs on the
    default database, which must be PostgreSQL or SQLite 3.35 or newer."""
    errors: list[CheckMessage] = []
    connection = connections[DEFAULT_DB_ALIAS]
    if connection.vendor == "sqlite":
        version = connection.Database.sqlite_version_info
        if version < (3, 35):
            errors.append(
                Error(
                    _("SQLite %s is too old for the presence tables: they need 3.35 or newer.")
                    % ".".join(map(str, version)),
                    hint=_("Upgrade the SQLite library Python uses, or use PostgreSQL."),
                    id="skapi_channels.E022",
                )
            )
    elif connection.vendor != "postgresql":
        errors.append(
            Error(
                _("The %s database is not supported; use PostgreSQL or SQLite.")
                % connection.vendor,
                hint=_(
                    "The presence tables are written with INSERT ... ON CONFLICT and "
                    "RETURNING, which MySQL, MariaDB and Oracle do not have in this form."
                ),
                id="skapi_channels.E023",
            )
        )
    from django.apps import apps

    for model in apps.get_app_config("skapi_channels").get_models():
        read, write = router.db_for_read(model), router.db_for_write(model)
        migrate = router.allow_migrate_model(DEFAULT_DB_ALIAS, model)
        if read != DEFAULT_DB_ALIAS or write != DEFAULT_DB_ALIAS or not migrate:
            errors.append(
                Error(
                    _(
                        "DATABASE_ROUTERS send %(model)s elsewhere than the default database "
                        "(reads: %(read)s, writes: %(write)s, migrated there: %(migrate)s)."
                    )
                    % {"model": model._meta.label, "read": read, "write": write,
                       "migrate": migrate},
                    hint=_(
                        "The presence tables are written with SQL on the 'default' database: "
                        "route the skapi_channels app there."
                    ),
                    id="skapi_channels.E024",
                )
            )
            break
    return errors


def check_origin(**kwargs: Any) -> list[CheckMessage]:
    """ALLOWED_HOSTS with '*' makes the Origin check pass every page."""
    from skapi_channels.conf import conf

    if conf.CHECK_ORIGIN and "*" in settings.ALLOWED_HOSTS:
        return [
            Warning(
                _(
                    "ALLOWED_HOSTS contains '*': the realtime socket's Origin check then "
                    "accepts every site, so any page can open a socket with a visitor's "
                    "session cookie."
                ),
                hint=_("List your site's hosts in ALLOWED_HOSTS."),
                id="skapi_channels.W021",
            )
        ]
    return []
