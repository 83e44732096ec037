"""Revocation (docs/protocol.md §13): a socket is only as good as the login behind it.

When a user logs out, changes their password (the session auth hash changes), or is
deactivated or deleted, every open socket of that user closes with 4001, in every
server process:

- at once when the change is made by a process of the deployment: the signals below
  send a ``skapi.revoke`` event to the user's channel-layer address;
- within ``REVOCATION_SWEEP_INTERVAL`` (15 s) when it is made elsewhere (a
  management command, another service writing the database): each server process
  re-reads the auth hash and ``is_active`` of its connected users, one query per
  sweep, and closes what no longer holds.

A password change keeps the session it was made in, as Django does
(``update_session_auth_hash``): a socket whose session now holds the new hash, or
was cycled to a new key by that call (so its old key is gone), stays open and takes
the new hash; sockets of every other session close. Sockets opened with a token
have no session to ask, so they close on any password change.

Tokens carry the auth hash they were issued under (``tokens.py``); a logout also
refuses the user's tokens issued before it, through the default cache (shared by
all processes when the cache is).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from collections.abc import Iterable
from importlib import import_module
from typing import Any, Protocol

from asgiref.sync import async_to_sync
from channels.db import database_sync_to_async
from channels.layers import get_channel_layer
from django.conf import settings
from django.contrib.auth import HASH_SESSION_KEY, get_user_model, user_logged_out
from django.core.cache import cache
from django.db import transaction
from django.db.models.signals import post_delete, post_init, post_save
from django.utils.crypto import constant_time_compare

from skapi_channels.addressing import user_address
from skapi_channels.conf import conf
from skapi_channels.protocol import CLOSE_REVOKED, EVENT_REVOKE
from skapi_channels.tokens import auth_hash

logger = logging.getLogger("skapi_channels")

# How long a socket waits, after hearing of a new auth hash, before it asks its
# session: the view that changed the password calls update_session_auth_hash
# right after saving the user.
SETTLE_SECONDS = 0.5
LOGOUT_KEY = "skapi_channels.logged_out.{}"


class RevocableConnection(Protocol):
    user_id: str
    user_pk: str
    auth_hash: str
    session_key: str | None

    async def close_from_server(self, code: int) -> None: ...


def revocation_event(user_id: str, new_hash: str | None) -> dict[str, Any]:
    """Close the sockets of ``user_id`` (``new_hash`` None), or those whose session
    did not take ``new_hash``."""
    return {"type": EVENT_REVOKE, "uid": user_id, "hash": new_hash}


# Telling the server processes.


def revoke(user: Any, new_hash: str | None = None) -> None:
    """Close the sockets of ``user`` in every process, once the change is committed."""
    try:
        user_id = str(conf.USER_ID_FUNCTION(user))
    except Exception:
        logger.exception("Could not revoke the sockets of user %s: no user_id", user.pk)
        return
    transaction.on_commit(lambda: _send(user_id, new_hash))


def _send(user_id: str, new_hash: str | None) -> None:
    layer = get_channel_layer()
    if layer is None:
        return
    try:
        async_to_sync(layer.group_send)(user_address(user_id), revocation_event(user_id, new_hash))
    except Exception:
        # The sweep of each process closes them instead, within its interval.
        logger.exception("Could not tell the server processes to close user %s's sockets", user_id)


def logged_out_since(user_pk: Any, issued_at: float) -> bool:
    """Whether the user logged out at or after ``issued_at`` (epoch seconds)."""
    try:
        logged_out_at = cache.get(LOGOUT_KEY.format(user_pk))
    except Exception:
        logger.exception("Could not read the logout time of user %s from the cache", user_pk)
        return False
    return logged_out_at is not None and issued_at <= logged_out_at


def logout_times(user_pks: Iterable[Any]) -> dict[str, float]:
    """When each of the users last logged out (epoch seconds), for those the cache
    remembers: one cache read for a burst of handshakes."""
    keys = {LOGOUT_KEY.format(user_pk): str(user_pk) for user_pk in user_pks}
    if not keys:
        return {}
    try:
        found = cache.get_many(list(keys))
    except Exception:
        logger.exception("Could not read the logout times of %d users from the cache", len(keys))
        return {}
    return {keys[key]: when for key, when in found.items() if when is not None}


# Signal receivers.


def _state(user: Any) -> tuple[Any, Any]:
    fields = user.__dict__  # deferred fields are absent: unknown
    return fields.get("password"), fields.get("is_active", True)


def remember_login_state(sender: Any, instance: Any, **kwargs: Any) -> None:
    instance._skapi_login_state = _state(instance)


def user_saved(
    sender: Any, instance: Any, created: bool, update_fields: Any = None, **kwargs: Any
) -> None:
    if created or (update_fields is not None and not {"password", "is_active"} & set(update_fields)):
        return
    before = getattr(instance, "_skapi_login_state", (None, None))
    now = _state(instance)
    instance._skapi_login_state = now
    if now[1] is False and before[1] is not False:
        revoke(instance)
    elif before[0] is not None and now[0] is not None and now[0] != before[0]:
        revoke(instance, auth_hash(instance))


def user_deleted(sender: Any, instance: Any, **kwargs: Any) -> None:
    revoke(instance)


def user_logged_out_receiver(sender: Any, request: Any, user: Any, **kwargs: Any) -> None:
    if user is None:
        return
    try:
        cache.set(LOGOUT_KEY.format(user.pk), time.time(), conf.TOKEN_MAX_AGE + 5)
    except Exception:
        logger.exception("Could not record the logout of user %s in the cache", user.pk)
    revoke(user)


def connect_signals() -> None:
    model = get_user_model()
    uid = "skapi_channels.revocation"
    post_init.connect(remember_login_state, sender=model, dispatch_uid=uid)
    post_save.connect(user_saved, sender=model, dispatch_uid=uid)
    post_delete.connect(user_deleted, sender=model, dispatch_uid=uid)
    user_logged_out.connect(user_logged_out_receiver, dispatch_uid=uid)


# In the server process.


def session_took(session_key: str | None, new_hash: str) -> bool:
    """Whether the session a socket was opened with is the one the password was
    changed in: it holds ``new_hash`` now, or its key was cycled away."""
    if session_key is None:
        return False
    store = import_module(settings.SESSION_ENGINE).SessionStore(session_key)
    if not store.exists(session_key):
        return True
    return constant_time_compare(store.get(HASH_SESSION_KEY, ""), new_hash)


asession_took = database_sync_to_async(session_took)


async def revalidate(
    connection: RevocableConnection, new_hash: str | None, settle: float = SETTLE_SECONDS
) -> bool:
    """Close ``connection`` with 4001 unless its session took ``new_hash`` (None:
    close it whatever its session); returns whether it was closed."""
    if new_hash is not None:
        if constant_time_compare(new_hash, connection.auth_hash):
            return False
        await asyncio.sleep(settle)
        if await asession_took(connection.session_key, new_hash):
            connection.auth_hash = new_hash
            return False
    logger.info("Closing a socket of user %s: its login was revoked", connection.user_id)
    await connection.close_from_server(CLOSE_REVOKED)
    return True


def login_states(user_pks: Iterable[str]) -> dict[str, tuple[bool, str]]:
    """``{pk: (is_active, auth hash)}`` of the users that exist, in one query."""
    model = get_user_model()
    fields = {field.attname for field in model._meta.concrete_fields}
    columns = ["pk", *(name for name in ("password", "is_active") if name in fields)]
    users = model._default_manager.filter(pk__in=list(user_pks)).only(*columns)
    return {str(user.pk): (bool(getattr(user, "is_active", True)), auth_hash(user)) for user in users}


alogin_states = database_sync_to_async(login_states)


async def sweep(connections: Iterable[Any]) -> int:
    """Check the logins behind ``connections`` (one query); returns how many closed."""
    by_user: dict[str, list[Any]] = defaultdict(list)
    for connection in list(connections):
        if getattr(connection, "user_pk", None) is not None:
            by_user[connection.user_pk].append(connection)
    if not by_user:
        return 0
    states = await alogin_states(by_user)
    closed = 0
    for user_pk, local in by_user.items():
        active, current = states.get(user_pk, (False, ""))
        for connection in local:
            if active and constant_time_compare(current, connection.auth_hash):
                continue
            closed += await revalidate(connection, current if active else None, settle=0)
    return closed


async def sweeps(connections: Iterable[Any]) -> None:
    """Sweep every ``REVOCATION_SWEEP_INTERVAL`` seconds, for as long as it runs."""
    while True:
        await asyncio.sleep(conf.REVOCATION_SWEEP_INTERVAL)
        try:
            await sweep(connections)
        except Exception:
            logger.exception("Revocation sweep failed; the next one retries")
