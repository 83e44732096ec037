"""Default mapping between Django users and protocol user_ids."""

from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError


def user_id_of(user: Any) -> str:
    """The protocol's user_id of ``user``: its primary key as a string."""
    return str(user.pk)


def user_for_id(user_id: str) -> Any | None:
    """The active user whose user_id is ``user_id``, or None."""
    model = get_user_model()
    try:
        user = model._default_manager.filter(pk=user_id, is_active=True).first()
    except (ValueError, TypeError, ValidationError):
        # A user_id that cannot be a primary key (e.g. "abc" for an integer pk).
        return None
    # The database converts look-alikes ("07", " 7") to the key 7: they name no one.
    return user if user is not None and user_id_of(user) == user_id else None
