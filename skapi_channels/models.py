"""Presence tables: which server processes are alive, which connections they hold,
and the counts that answer the group and user listings.

Rows are written only by ``presence.py``; nothing else edits them.
"""

from __future__ import annotations

from typing import Any

from django.db import models
from django.utils.translation import gettext_lazy as _


class CodePointCharField(models.CharField):
    """A CharField that sorts and compares in Unicode code-point order.

    SQLite's default (binary) collation already does; PostgreSQL needs the "C"
    collation, which also lets a B-tree index serve prefix ranges.
    """

    def db_parameters(self, connection: Any) -> dict[str, Any]:
        params = super().db_parameters(connection)
        if connection.vendor == "postgresql":
            params["collation"] = "C"
        return params


class ServerProcess(models.Model):
    """A running server process (one daphne/uvicorn worker)."""

    id = models.CharField(primary_key=True, max_length=32)
    host = models.CharField(max_length=255)
    pid = models.PositiveIntegerField()
    started_at = models.DateTimeField()
    heartbeat_at = models.DateTimeField(db_index=True)
    # Counters the process publishes with each heartbeat (messages, drops, ...).
    stats = models.JSONField(default=dict, blank=True)

    class Meta:
        verbose_name = _("server process")
        verbose_name_plural = _("server processes")

    def __str__(self) -> str:
        return f"{self.host}:{self.pid} ({self.id[:8]})"


class Connection(models.Model):
    """One open WebSocket."""

    cid = models.CharField(primary_key=True, max_length=32)
    channel_name = models.CharField(max_length=200)
    user_id = CodePointCharField(max_length=150)
    group_name = CodePointCharField(max_length=255, null=True, blank=True)
    server = models.ForeignKey(
        ServerProcess, on_delete=models.DO_NOTHING, related_name="connections"
    )
    connected_at = models.DateTimeField()

    class Meta:
        indexes = [
            # getRealtimeUsers: WHERE group_name = ? [AND user_id = ?] ORDER BY user_id, cid
            models.Index(fields=["group_name", "user_id", "cid"], name="skapi_conn_group_user"),
            models.Index(fields=["user_id"], name="skapi_conn_user"),
        ]

    def __str__(self) -> str:
        return self.cid


class GroupMembership(models.Model):
    """A user in a group, with how many of the user's connections are in it.

    The row exists while the count is above zero, so the rows of a group are its
    distinct users.
    """

    group_name = CodePointCharField(max_length=255)
    user_id = CodePointCharField(max_length=150)
    connections = models.PositiveIntegerField()

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["group_name", "user_id"], name="skapi_membership_unique"),
        ]


class RealtimeGroup(models.Model):
    """A group with at least one member; ``number_of_users`` counts distinct users."""

    name = CodePointCharField(primary_key=True, max_length=255)
    number_of_users = models.PositiveIntegerField()
    created_at = models.DateTimeField()

    class Meta:
        verbose_name = _("group")
        indexes = [
            # getRealtimeGroups with searchFor number_of_users: ORDER BY number_of_users, name
            models.Index(fields=["number_of_users", "name"], name="skapi_group_size"),
        ]

    def __str__(self) -> str:
        return self.name


class OnlineUser(models.Model):
    """A user with at least one open connection, and how many."""

    user_id = CodePointCharField(primary_key=True, max_length=150)
    connections = models.PositiveIntegerField()

    def __str__(self) -> str:
        return self.user_id
