"""Signals a site can connect to, to log, award or persist what happens.

Each is sent once per event, with ``sender=RealtimeConsumer`` (or the runtime for
connections reaped after a process died) and keyword arguments:

- ``connection_opened``: user_id, cid
- ``connection_closed``: user_id, cid, group (the group it was in, or None)
- ``group_joined``: user_id, cid, group
- ``group_left``: user_id, cid, group, reason ("left", "switched", "disconnected")
- ``message_sent``: user_id, cid, recipient (a user_id or group), private (bool),
  content

Receivers may be sync (run in a thread) or async.
"""

from __future__ import annotations

from django.dispatch import Signal

connection_opened = Signal()
connection_closed = Signal()
group_joined = Signal()
group_left = Signal()
message_sent = Signal()
