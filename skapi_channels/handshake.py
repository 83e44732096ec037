"""Who may open a socket: the Origin check and authentication (docs/protocol.md section 2)."""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import import_module
from types import SimpleNamespace
from typing import Any
from urllib.parse import parse_qs, urlsplit

from django.conf import settings
from django.contrib.auth import get_user, get_user_model
from django.core.exceptions import ValidationError
from django.http import parse_cookie
from django.http.request import validate_host
from django.utils.crypto import constant_time_compare

from skapi_channels.conf import conf
from skapi_channels.presence_batch import GroupCommit, one_by_one
from skapi_channels.revocation import logout_times
from skapi_channels.tokens import auth_hash, read_payload


def header(scope: dict[str, Any], name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return value.decode("latin-1")
    return None


def allowed_hosts() -> list[str]:
    hosts = list(settings.ALLOWED_HOSTS)
    if settings.DEBUG and not hosts:  # as Django's own host check does
        hosts = [".localhost", "127.0.0.1", "[::1]"]
    return hosts


def origin_allowed(scope: dict[str, Any]) -> bool:
    """A browser's Origin must be one of ALLOWED_HOSTS; no Origin is a non-browser client."""
    origin = header(scope, b"origin")
    if origin is None:
        return True
    try:
        host = urlsplit(origin).hostname
    except ValueError:
        return False
    if not host:  # "null", file: pages, garbage
        return False
    if ":" in host:
        host = f"[{host}]"
    return validate_host(host, allowed_hosts())


def query_token(scope: dict[str, Any]) -> str | None:
    query = scope.get("query_string", b"").decode("latin-1")
    values = parse_qs(query, keep_blank_values=True).get("token")
    return values[-1] if values else None


def active_user(user_pk: str) -> Any | None:
    return active_users([user_pk])[0]


def active_users(user_pks: Sequence[str]) -> list[Any | None]:
    """The active user of each primary key (None where there is none), in one query:
    a burst of handshakes reads its users together, never from a cache."""
    model = get_user_model()
    keys: dict[str, Any] = {}
    for user_pk in set(user_pks):
        with contextlib.suppress(ValueError, TypeError, ValidationError):
            keys[user_pk] = model._meta.pk.to_python(user_pk)
    found: dict[Any, Any] = {}
    if keys:
        found = {
            user.pk: user
            for user in model._default_manager.filter(pk__in=set(keys.values()), is_active=True)
        }
    # A copy each: the handshakes must not share one mutable instance.
    return [
        copy.copy(found[keys[pk]]) if pk in keys and keys[pk] in found else None for pk in user_pks
    ]


@dataclass(frozen=True, slots=True)
class Login:
    """Who opened a socket, and under which login (for revocation, docs/protocol.md
    section 13)."""

    user: Any
    # The user's protocol user_id (USER_ID_FUNCTION).
    user_id: str
    # The user's session auth hash when the socket opened.
    auth_hash: str
    # The session the socket was opened with (None: a token, or a session-less user).
    session_key: str | None


def user_id_of(user: Any) -> str:
    return str(conf.USER_ID_FUNCTION(user))


def token_logins(payloads: Sequence[dict[str, Any]]) -> list[Login | BaseException | None]:
    """The login of each validly signed token payload, or None: its user active, its
    auth hash unchanged, no logout since it was issued. A burst of handshakes reads
    its users in one query and their logout times in one cache read; a user_id that
    ``USER_ID_FUNCTION`` fails to give answers that handshake alone (its exception)."""
    users = active_users([payload["u"] for payload in payloads])
    logged_out = logout_times({user.pk for user in users if user is not None})
    logins: list[Login | BaseException | None] = []
    for payload, user in zip(payloads, users, strict=True):
        current = "" if user is None else auth_hash(user)
        if user is None or not constant_time_compare(current, payload["h"]):
            logins.append(None)
            continue
        out_at = logged_out.get(str(user.pk))
        if out_at is not None and payload["t"] <= out_at:
            logins.append(None)
            continue
        try:
            logins.append(Login(user, user_id_of(user), current, None))
        except Exception as error:
            logins.append(error)
    return logins


_token_lookups: GroupCommit[dict[str, Any]] = GroupCommit(token_logins)


def session_login(cookie_header: str | None) -> Login | None:
    """The login of the session the cookies name, or None.

    Read once at the handshake, so the socket needs no session middleware (whose
    wrapper would otherwise run on every frame sent).
    """
    if not cookie_header:
        return None
    session_key = parse_cookie(cookie_header).get(settings.SESSION_COOKIE_NAME)
    if not session_key:
        return None
    store = import_module(settings.SESSION_ENGINE).SessionStore(session_key)
    user = get_user(SimpleNamespace(session=store))  # verifies the session's auth hash
    if not (user.is_authenticated and user.is_active):
        return None
    return Login(user, user_id_of(user), auth_hash(user), session_key)


_session_lookups: GroupCommit[str | None] = GroupCommit(one_by_one(session_login))


async def asession_login(cookie_header: str | None) -> Login | None:
    """``session_login`` on the database thread, sharing the hop with the handshakes
    that arrive together (each still reads its own session now)."""
    return await _session_lookups.submit(cookie_header)


_user_ids: GroupCommit[Any] = GroupCommit(one_by_one(user_id_of))


async def auser_id(user: Any) -> str:
    """The user_id of ``user`` by the project's ``USER_ID_FUNCTION``, which may read
    the database: run on the database thread, one hop for a burst of handshakes."""
    return str(await _user_ids.submit(user))


async def login_of(scope: dict[str, Any]) -> Login | None:
    """The login of a handshake, or None. A ``?token=`` decides over the session.

    Each way takes one hop to the database thread, shared by the handshakes that
    arrive together: a token's user, logout time and user_id are read in one call.
    """
    token = query_token(scope)
    if token is not None:
        payload = read_payload(token)
        if payload is None:
            return None
        return await _token_lookups.submit(payload)
    user = scope.get("user")  # set when the route is wrapped in AuthMiddlewareStack
    if user is not None:
        if not user.is_authenticated:
            return None
        session = scope.get("session")
        return Login(
            user, await auser_id(user), auth_hash(user), getattr(session, "session_key", None)
        )
    return await asession_login(header(scope, b"cookie"))


async def authenticate(scope: dict[str, Any]) -> Any | None:
    """The user of a handshake, or None."""
    login = await login_of(scope)
    return None if login is None else login.user
