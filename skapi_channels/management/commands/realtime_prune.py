"""Remove the presence rows of dead server processes now, instead of waiting for
the reaper of a live process."""

from __future__ import annotations

from typing import Any

from asgiref.sync import async_to_sync
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db.models import Count

from skapi_channels import presence
from skapi_channels.conf import conf
from skapi_channels.models import ServerProcess
from skapi_channels.runtime import ServerRuntime, announce_departure, send_disconnect_notices


class Command(BaseCommand):
    help = (
        "Remove the presence of server processes whose heartbeat is stale, telling "
        "their groups USER_DISCONNECTED (through the channel layer: use a shared "
        "layer such as channels-redis for the notices to reach clients)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--dry-run",
            action="store_true",
            help="Only list the stale server processes and their connections.",
        )
        parser.add_argument(
            "--dead-after",
            type=float,
            default=None,
            metavar="SECONDS",
            help="Heartbeat age after which a process is dead (default: the DEAD_AFTER setting).",
        )

    def handle(self, *args: Any, dry_run: bool, dead_after: float | None, **options: Any) -> None:
        if dead_after is None:
            dead_after = conf.DEAD_AFTER
        if dead_after <= 0:
            raise CommandError("--dead-after must be a positive number of seconds.")
        if dead_after < 2 * conf.HEARTBEAT_INTERVAL:
            raise CommandError(
                f"--dead-after {dead_after:g} is under twice HEARTBEAT_INTERVAL "
                f"({conf.HEARTBEAT_INTERVAL:g} s): live processes would be taken for dead."
            )
        stale = presence.stale_servers(dead_after)
        processes = (
            ServerProcess.objects.filter(id__in=stale)
            .annotate(open=Count("connections"))
            .order_by("host", "pid")
        )
        for process in processes:
            self.stdout.write(
                f"{'Would remove' if dry_run else 'Stale'}: {process} "
                f"last heartbeat {process.heartbeat_at:%Y-%m-%d %H:%M:%S}, "
                f"{process.open} connection{'s' if process.open != 1 else ''}"
            )
        if dry_run:
            total = sum(process.open for process in processes)
            self.stdout.write(
                f"Dry run: {len(stale)} stale server process{'es' if len(stale) != 1 else ''}, "
                f"{total} connection{'s' if total != 1 else ''}; nothing removed."
            )
            return
        departures = presence.reap_dead_servers(dead_after)
        async_to_sync(announce)(departures)
        groups = {d.group_name for d in departures if d.group_name is not None}
        self.stdout.write(
            self.style.SUCCESS(
                f"Removed {len(stale)} stale server process{'es' if len(stale) != 1 else ''} "
                f"and {len(departures)} connection{'s' if len(departures) != 1 else ''}; "
                f"told {len(groups)} group{'s' if len(groups) != 1 else ''}."
            )
        )


async def announce(departures: list[presence.Departure]) -> None:
    """What the runtime's reaper does: notices to the groups, then the signals."""
    await send_disconnect_notices(departures)
    for departure in departures:
        await announce_departure(ServerRuntime, departure)
