"""Handshake tokens: signed, short-lived, good only for authenticating as one user."""

from __future__ import annotations

import time
from typing import Any

from django.core import signing

from skapi_channels.conf import conf

# A salt of its own, so no other signed value of the site passes for a token.
SALT = "skapi_channels.handshake-token"


def issue_token(user: Any) -> tuple[str, int]:
    """A token for ``user`` and when it expires (epoch seconds)."""
    token = signing.dumps({"u": str(user.pk)}, salt=SALT, compress=False)
    return token, int(time.time()) + conf.TOKEN_MAX_AGE


def read_token(token: str) -> str | None:
    """The user pk a valid, unexpired token names, or None."""
    try:
        payload = signing.loads(token, salt=SALT, max_age=conf.TOKEN_MAX_AGE)
    except (signing.BadSignature, ValueError, TypeError):
        return None
    user_pk = payload.get("u") if isinstance(payload, dict) else None
    return user_pk if isinstance(user_pk, str) else None
