"""Print the numbers of the admin monitoring page."""

from __future__ import annotations

import json
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.core.serializers.json import DjangoJSONEncoder

from skapi_channels import monitoring


class Command(BaseCommand):
    help = (
        "Print connections, users online, groups, messages per second per server "
        "process and the largest groups, as the admin monitoring page shows them."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--json", action="store_true", dest="as_json", help="Print one JSON object."
        )
        parser.add_argument(
            "--groups",
            type=int,
            default=monitoring.LARGEST_GROUPS,
            metavar="N",
            help=f"How many of the largest groups to list (default {monitoring.LARGEST_GROUPS}).",
        )

    def handle(self, *args: Any, as_json: bool, groups: int, **options: Any) -> None:
        if groups < 0:
            raise CommandError("--groups must be 0 or more.")
        snapshot = monitoring.snapshot(largest=groups)
        if as_json:
            self.stdout.write(dump(snapshot))
            return
        for line in report(snapshot):
            self.stdout.write(line)


def dump(snapshot: monitoring.Snapshot) -> str:
    data = snapshot.as_json()
    for process in data["processes"]:
        process.pop("points")  # the chart's series; the totals are what a shell wants
    return json.dumps(data, cls=DjangoJSONEncoder, indent=2)


def report(snapshot: monitoring.Snapshot) -> list[str]:
    live, stale = len(snapshot.live_processes), len(snapshot.stale_processes)
    lines = [
        f"Connections:       {snapshot.connections}",
        f"Users online:      {snapshot.users_online}",
        f"Groups:            {snapshot.groups}",
        f"Messages/s:        {snapshot.messages_per_second:.1f} (last minute, live processes)",
        f"Server processes:  {live} alive, {stale} stale",
    ]
    for process in snapshot.processes:
        state = "alive" if process.alive else "STALE"
        lines.append(
            f"  {process.label} [{process.id[:8]}] {state}: "
            f"{counted(process.connections, 'connection')}, "
            f"{process.messages_per_second:.1f} messages/s, "
            f"{counted(process.messages, 'message')}, {process.dropped} dropped, "
            f"heartbeat {process.heartbeat_age:.0f} s ago"
        )
    if snapshot.largest_groups:
        lines.append("Largest groups:")
        width = max(len(group.name) for group in snapshot.largest_groups)
        for group in snapshot.largest_groups:
            lines.append(
                f"  {group.name:<{width}}  {counted(group.users, 'user')}, "
                f"{counted(group.connections, 'connection')}"
            )
    return lines


def counted(number: int, noun: str) -> str:
    return f"{number} {noun}{'' if number == 1 else 's'}"
