"""Handshake tokens: signed, short-lived, good only for authenticating as one user.

A token carries the session auth hash of its user (docs/protocol.md §13): once the password
changes, tokens issued before are refused; so are tokens issued before the user
last logged out (see ``revocation.py``).
"""

from __future__ import annotations

import time
from typing import Any

from django.core import signing
from django.utils.crypto import constant_time_compare

from skapi_channels.conf import conf

# A salt of its own, so no other signed value of the site passes for a token.
SALT = "skapi_channels.handshake-token"


def auth_hash(user: Any) -> str:
    """The session auth hash of ``user`` ("" for user models without one)."""
    get_hash = getattr(user, "get_session_auth_hash", None)
    return get_hash() if get_hash is not None else ""


def issue_token(user: Any) -> tuple[str, int]:
    """A token for ``user`` and when it expires (epoch seconds)."""
    now = time.time()
    payload = {"u": str(user.pk), "h": auth_hash(user), "t": now}
    token = signing.dumps(payload, salt=SALT, compress=False)
    return token, int(now) + conf.TOKEN_MAX_AGE


def read_token(token: str) -> str | None:
    """The user pk a valid, unexpired token names, or None (the signature only)."""
    payload = read_payload(token)
    return None if payload is None else payload["u"]


def read_payload(token: str) -> dict[str, Any] | None:
    """What a validly signed, unexpired token says: ``u`` the user's pk, ``h`` its
    auth hash, ``t`` when it was issued; None for anything else."""
    try:
        payload = signing.loads(token, salt=SALT, max_age=conf.TOKEN_MAX_AGE)
    except (signing.BadSignature, ValueError, TypeError):
        return None
    if (
        not isinstance(payload, dict)
        or not isinstance(payload.get("u"), str)
        or not isinstance(payload.get("h"), str)
        or not isinstance(payload.get("t"), (int, float))
    ):
        return None
    return payload


def hash_holds(payload: dict[str, Any], user: Any) -> bool:
    return constant_time_compare(auth_hash(user), payload["h"])


def token_user(token: str) -> Any | None:
    """The active user a token authenticates, or None: the signature must hold, the
    token be unexpired, the user's auth hash unchanged since it was issued, and the
    user not have logged out since."""
    from skapi_channels.handshake import active_user
    from skapi_channels.revocation import logged_out_since

    payload = read_payload(token)
    if payload is None:
        return None
    user = active_user(payload["u"])
    if user is None or not hash_holds(payload, user):
        return None
    return None if logged_out_since(user.pk, payload["t"]) else user
