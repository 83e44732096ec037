"""realtime_prune and realtime_stats."""

from __future__ import annotations

import json
import time
from io import StringIO

import pytest
from django.core.management import CommandError, call_command

from skapi_channels.models import Connection, ServerProcess
from tests.conftest import in_db
from tests.rows import series, server_with

LIVE, DEAD = "a" * 32, "d" * 32


def run(*args: str) -> str:
    out = StringIO()
    call_command(*args, stdout=out)
    return out.getvalue()


@pytest.fixture
def live_and_dead(db: None) -> None:
    server_with(LIVE, [("live-1", "1", "room"), ("live-2", "2", None)])
    server_with(
        DEAD, [("dead-1", "3", "room"), ("dead-2", "3", "hall")], age=600, host="web-2", pid=7
    )


# realtime_prune.


def test_prune_dry_run_lists_and_removes_nothing(live_and_dead, presence_is_true):
    output = run("realtime_prune", "--dry-run")
    assert "Would remove: web-2:7 (dddddddd)" in output
    assert "2 connections" in output
    assert "Dry run: 1 stale server process, 2 connections; nothing removed." in output
    assert Connection.objects.count() == 4
    assert ServerProcess.objects.count() == 2


def test_prune_removes_dead_processes_and_fixes_the_counts(live_and_dead, presence_is_true):
    output = run("realtime_prune")
    assert "Removed 1 stale server process and 2 connections; told 2 groups." in output
    assert sorted(Connection.objects.values_list("cid", flat=True)) == ["live-1", "live-2"]
    assert list(ServerProcess.objects.values_list("id", flat=True)) == [LIVE]
    presence_is_true()
    assert "Removed 0 stale server processes and 0 connections" in run("realtime_prune")


def test_prune_dead_after_option(live_and_dead):
    assert "nothing removed" in run("realtime_prune", "--dry-run", "--dead-after", "1000")
    assert "Dry run: 0 stale" in run("realtime_prune", "--dry-run", "--dead-after", "1000")
    with pytest.raises(CommandError, match="twice HEARTBEAT_INTERVAL"):
        run("realtime_prune", "--dead-after", "1")
    with pytest.raises(CommandError, match="positive"):
        run("realtime_prune", "--dead-after", "0")


async def test_prune_tells_the_groups_through_the_channel_layer(users, connect):
    alice = await connect(users.alice)
    await alice.join("room")
    await in_db(server_with, DEAD, [("dead-1", "3", "room"), ("dead-2", "3", None)], age=600)
    output = await in_db(run, "realtime_prune")
    assert "and 2 connections; told 1 group." in output
    notice = await alice.receive()
    assert notice == {
        "#notice": "3 has been disconnected.",
        "#code": "USER_DISCONNECTED",
        "#user_id": "3",
        "#scid": "dead-1",
        "#srid": "room",
    }
    await alice.nothing()


# realtime_stats.


def test_stats_prints_the_numbers(db):
    now = time.time()
    server_with(
        LIVE,
        [("c1", "1", "lobby"), ("c2", "2", "lobby"), ("c3", "2", "lobby"), ("c4", "3", "den")],
        stats={
            "group_messages": 100,
            "private_messages": 20,
            "dropped": 1,
            "dropped_full": 1,
            "series": series(now - 60, [0, 60, 120], step=30),
        },
    )
    server_with(DEAD, [("c5", "4", None)], age=600, host="web-2", pid=7)
    output = run("realtime_stats")
    lines = output.splitlines()
    assert lines[:5] == [
        "Connections:       5",
        "Users online:      4",
        "Groups:            2",
        "Messages/s:        2.0 (last minute, live processes)",
        "Server processes:  1 alive, 1 stale",
    ]
    assert lines[5].startswith(
        "  web-1:100 [aaaaaaaa] alive: 4 connections, 2.0 messages/s, 120 messages, 1 dropped,"
    )
    assert lines[6].startswith("  web-2:7 [dddddddd] STALE: 1 connection, 0.0 messages/s,")
    assert lines[7:] == [
        "Largest groups:",
        "  lobby  2 users, 3 connections",
        "  den    1 user, 1 connection",
    ]


def test_stats_as_json(db):
    server_with(LIVE, [("c1", "1", "lobby")])
    data = json.loads(run("realtime_stats", "--json", "--groups", "1"))
    assert (data["connections"], data["users_online"], data["groups"]) == (1, 1, 1)
    assert data["largest_groups"] == [{"name": "lobby", "users": 1, "connections": 1}]
    assert [p["id"] for p in data["processes"]] == [LIVE]
    assert data["messages_per_second"] == 0


def test_stats_on_an_empty_deployment(db):
    assert run("realtime_stats").splitlines() == [
        "Connections:       0",
        "Users online:      0",
        "Groups:            0",
        "Messages/s:        0.0 (last minute, live processes)",
        "Server processes:  0 alive, 0 stale",
    ]
