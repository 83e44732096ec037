"""The numbers of the admin monitoring page and of ``manage.py realtime_stats``.

Counts come from aggregate queries (a fixed handful, whatever the number of rows).
Message rates come from the time series each server process publishes with its
heartbeat (``ServerProcess.stats["series"]``: ``[epoch seconds, open connections,
messages so far]`` points, see ``runtime.py``); nothing is written per message.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import Any

from channels.db import database_sync_to_async
from django.db.models import Count, IntegerField, OuterRef, Subquery, Value
from django.db.models.functions import Coalesce
from django.utils import timezone

from skapi_channels.conf import conf
from skapi_channels.metrics import DROP_COUNTERS, MESSAGE_COUNTERS
from skapi_channels.models import Connection, OnlineUser, RealtimeGroup, ServerProcess

# How far back the charts look, and the span of the "messages per second" figure.
WINDOW_SECONDS = 600
RATE_SECONDS = 60
LARGEST_GROUPS = 10


@dataclass(frozen=True)
class Point:
    """One heartbeat of a process: when, its open sockets, its message rate since
    the previous heartbeat (None for the first point)."""

    at: float
    connections: int
    messages_per_second: float | None


@dataclass(frozen=True)
class ProcessReport:
    id: str
    host: str
    pid: int
    started_at: datetime
    heartbeat_at: datetime
    alive: bool
    heartbeat_age: float  # seconds before the snapshot
    connections: int  # rows in the presence tables
    messages_per_second: float  # over the last RATE_SECONDS of its series
    counters: dict[str, int] = field(default_factory=dict)
    points: list[Point] = field(default_factory=list)

    @property
    def label(self) -> str:
        return f"{self.host}:{self.pid}"

    @property
    def messages(self) -> int:
        """Messages this process has handled since it started."""
        return sum(self.counters.get(name, 0) for name in MESSAGE_COUNTERS)

    @property
    def dropped(self) -> int:
        """Messages it could not deliver (docs/protocol.md section 10)."""
        return sum(self.counters.get(name, 0) for name in DROP_COUNTERS)


@dataclass(frozen=True)
class GroupReport:
    name: str
    users: int
    connections: int


@dataclass(frozen=True)
class Snapshot:
    taken_at: datetime
    connections: int
    users_online: int
    groups: int
    processes: list[ProcessReport]
    largest_groups: list[GroupReport]

    @property
    def live_processes(self) -> list[ProcessReport]:
        return [process for process in self.processes if process.alive]

    @property
    def stale_processes(self) -> list[ProcessReport]:
        return [process for process in self.processes if not process.alive]

    @property
    def messages_per_second(self) -> float:
        return sum(process.messages_per_second for process in self.live_processes)

    def as_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["messages_per_second"] = self.messages_per_second
        return data


# Series.


def read_series(stats: Any) -> list[tuple[float, int, int]]:
    """The well-formed points of a published series, oldest first."""
    series = stats.get("series") if isinstance(stats, dict) else None
    points: list[tuple[float, int, int]] = []
    for item in series if isinstance(series, list) else []:
        if (
            isinstance(item, (list, tuple))
            and len(item) == 3
            and all(isinstance(part, (int, float)) for part in item)
        ):
            points.append((float(item[0]), int(item[1]), int(item[2])))
    points.sort(key=lambda point: point[0])
    return points


def to_points(series: list[tuple[float, int, int]], since: float) -> list[Point]:
    """The points from ``since`` on, each with its rate since the point before."""
    points: list[Point] = []
    previous: tuple[float, int, int] | None = None
    for at, connections, messages in series:
        rate = None
        if previous is not None and at > previous[0]:
            rate = max(0, messages - previous[2]) / (at - previous[0])
        if at >= since:
            points.append(Point(at, connections, rate))
        previous = (at, connections, messages)
    return points


def recent_rate(series: list[tuple[float, int, int]], seconds: float = RATE_SECONDS) -> float:
    """Messages per second over the last ``seconds`` of ``series`` (0 with one point)."""
    if len(series) < 2:
        return 0.0
    last = series[-1]
    first = series[0]
    for point in series:  # the newest point at least ``seconds`` before the last
        if point[0] <= last[0] - seconds:
            first = point
    elapsed = last[0] - first[0]
    if elapsed <= 0:
        return 0.0
    return max(0, last[2] - first[2]) / elapsed


# The snapshot.


def snapshot(largest: int = LARGEST_GROUPS, window: float = WINDOW_SECONDS) -> Snapshot:
    now = timezone.now()
    dead_before = now - timedelta(seconds=conf.DEAD_AFTER)
    since = now.timestamp() - window
    processes = []
    for process in ServerProcess.objects.annotate(open=Count("connections")).order_by(
        "host", "pid", "id"
    ):
        series = read_series(process.stats)
        counters = {
            name: value
            for name, value in (process.stats or {}).items()
            if name != "series" and isinstance(value, int) and not isinstance(value, bool)
        }
        processes.append(
            ProcessReport(
                id=process.id,
                host=process.host,
                pid=process.pid,
                started_at=process.started_at,
                heartbeat_at=process.heartbeat_at,
                alive=process.heartbeat_at >= dead_before,
                heartbeat_age=max(0.0, (now - process.heartbeat_at).total_seconds()),
                connections=process.open,
                messages_per_second=recent_rate(series),
                counters=counters,
                points=to_points(series, since),
            )
        )
    return Snapshot(
        taken_at=now,
        connections=Connection.objects.count(),
        users_online=OnlineUser.objects.count(),
        groups=RealtimeGroup.objects.count(),
        processes=processes,
        largest_groups=largest_groups(largest),
    )


def connections_in_group() -> Subquery:
    """The number of connections in the outer query's group, as a subquery."""
    count = (
        Connection.objects.filter(group_name=OuterRef("name"))
        .order_by()
        .values("group_name")
        .annotate(count=Count("*"))
        .values("count")
    )
    return Coalesce(Subquery(count, output_field=IntegerField()), Value(0))


def largest_groups(limit: int = LARGEST_GROUPS) -> list[GroupReport]:
    rows = (
        RealtimeGroup.objects.order_by("-number_of_users", "name")
        .annotate(open=connections_in_group())
        .values_list("name", "number_of_users", "open")[:limit]
    )
    return [GroupReport(name, users, connections) for name, users, connections in rows]


asnapshot = database_sync_to_async(snapshot)
