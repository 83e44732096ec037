"""Channel-layer group names for protocol groups and users.

Layer group names must be short ASCII, while protocol group names and user_ids are
any Unicode, so each is hashed. Events carry the real name too, and receivers
compare it, so a hash collision can never deliver to the wrong connection.
"""

from __future__ import annotations

from hashlib import blake2b


def _digest(value: str) -> str:
    return blake2b(value.encode("utf-8", "surrogatepass"), digest_size=16).hexdigest()


def group_address(group_name: str) -> str:
    """The layer group of every connection that joined ``group_name``."""
    return "skapi.g." + _digest(group_name)


def user_address(user_id: str) -> str:
    """The layer group of every open connection of ``user_id``."""
    return "skapi.u." + _digest(user_id)
