"""Database side of the benchmark, run with the same settings as the servers.

``python -m bench.dbtool COMMAND`` (DJANGO_SETTINGS_MODULE=project.settings, with
SQLITE_PATH or DATABASE_URL as the servers get them). Commands:

- ``migrate``: create the tables;
- ``reset``: delete every presence row (groups, memberships, connections, online
  users, server processes);
- ``users COUNT OUT``: make sure users ``bench0`` .. ``bench{COUNT-1}`` exist and
  write their user_ids and handshake tokens to the JSON file OUT;
- ``populate FROM TO BIG``: bulk-insert groups ``g{FROM}`` .. ``g{TO-1}`` with their
  memberships, connections and online users, counts consistent, on a fake server
  process whose heartbeat lies in the future (so no reaper removes it); with
  ``BIG`` > 0 also a group ``big`` of BIG connections; then ANALYZE;
- ``querytime CASES REPEATS``: time the listing cases in-process, without HTTP;
- ``layer``: print the channel-layer backend the settings select;
- ``check``: compare the counts with a fresh count of the connection rows and print
  the result as JSON;
- ``batches``: print the presence group-commit figures the live server processes
  published with their last heartbeat, as JSON.
"""

from __future__ import annotations

import json
import os
import random
import sys
from collections import Counter
from datetime import timedelta

import django

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")
django.setup()

from django.contrib.auth import get_user_model  # noqa: E402
from django.core.management import call_command  # noqa: E402
from django.db import connection, transaction  # noqa: E402
from django.utils import timezone  # noqa: E402

from skapi_channels.models import (  # noqa: E402
    Connection,
    GroupMembership,
    OnlineUser,
    RealtimeGroup,
    ServerProcess,
)
from skapi_channels.tokens import issue_token  # noqa: E402

FAKE_SERVER = "benchfakeserver"
BATCH = 5000


def reset() -> None:
    with transaction.atomic():
        for model in (Connection, GroupMembership, RealtimeGroup, OnlineUser, ServerProcess):
            model.objects.all().delete()


def users(count: int, out: str) -> None:
    User = get_user_model()
    names = [f"bench{i}" for i in range(count)]
    existing = set(User.objects.filter(username__in=names).values_list("username", flat=True))
    User.objects.bulk_create(
        [User(username=name, password="!") for name in names if name not in existing],
        batch_size=BATCH,
    )
    by_name = {user.username: user for user in User.objects.filter(username__in=names)}
    rows = []
    for name in names:
        user = by_name[name]
        rows.append({"user_id": str(user.pk), "token": issue_token(user)[0]})
    with open(out, "w") as file:
        json.dump(rows, file)


def _size(rng: random.Random) -> int:
    """Distinct users of a fake group: mostly 1, a long tail up to 20 (mean ~2)."""
    roll = rng.random()
    if roll < 0.70:
        return 1
    if roll < 0.85:
        return 2
    if roll < 0.95:
        return rng.randint(3, 5)
    return rng.randint(6, 20)


def populate(start: int, stop: int, big: int) -> dict[str, int]:
    rng = random.Random(start * 7 + stop)
    now = timezone.now()
    ServerProcess.objects.update_or_create(
        id=FAKE_SERVER,
        defaults={
            "host": "bench",
            "pid": 0,
            "started_at": now,
            "heartbeat_at": now + timedelta(days=3650),
        },
    )
    pool = 50_000
    groups, memberships, connections = [], [], []
    online: Counter[str] = Counter()
    serial = Connection.objects.count()

    def add(group: str, members: list[str]) -> None:
        nonlocal serial
        groups.append(RealtimeGroup(name=group, number_of_users=len(members), created_at=now))
        for user_id in members:
            memberships.append(GroupMembership(group_name=group, user_id=user_id, connections=1))
            connections.append(
                Connection(
                    cid=f"fake{serial:010d}",
                    channel_name="fake",
                    user_id=user_id,
                    group_name=group,
                    server_id=FAKE_SERVER,
                    connected_at=now,
                )
            )
            online[user_id] += 1
            serial += 1

    for i in range(start, stop):
        add(f"g{i:07d}", [f"fu{j:05d}" for j in rng.sample(range(pool), _size(rng))])
    if big:
        add("big", [f"bu{j:06d}" for j in range(big)])
    with transaction.atomic():
        RealtimeGroup.objects.bulk_create(groups, batch_size=BATCH)
        GroupMembership.objects.bulk_create(memberships, batch_size=BATCH)
        Connection.objects.bulk_create(connections, batch_size=BATCH)
        known = dict(
            OnlineUser.objects.filter(user_id__in=list(online)).values_list(
                "user_id", "connections"
            )
        )
        OnlineUser.objects.bulk_create(
            [OnlineUser(user_id=u, connections=n) for u, n in online.items() if u not in known],
            batch_size=BATCH,
        )
        for user_id, count in online.items():
            if user_id in known:
                OnlineUser.objects.filter(user_id=user_id).update(
                    connections=known[user_id] + count
                )
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE")
    return {"groups": RealtimeGroup.objects.count(), "connections": Connection.objects.count()}


def check() -> dict[str, object]:
    """Counts against a fresh count of the connection rows (docs/protocol.md section 9)."""
    rows = list(Connection.objects.values_list("user_id", "group_name"))
    per_membership = Counter((g, u) for u, g in rows if g is not None)
    per_group = Counter(g for g, _ in per_membership)
    per_user = Counter(u for u, _ in rows)
    problems: list[str] = []
    groups = dict(RealtimeGroup.objects.values_list("name", "number_of_users"))
    if groups != dict(per_group):
        problems.append(
            f"groups: table {len(groups)} rows, fresh count {len(per_group)}; "
            f"{sum(1 for g in set(groups) | set(per_group) if groups.get(g) != per_group.get(g))} differ"
        )
    memberships = {
        (g, u): n
        for g, u, n in GroupMembership.objects.values_list("group_name", "user_id", "connections")
    }
    if memberships != dict(per_membership):
        problems.append(f"memberships: {len(memberships)} rows vs {len(per_membership)} fresh")
    online = dict(OnlineUser.objects.values_list("user_id", "connections"))
    if online != dict(per_user):
        problems.append(f"online users: {len(online)} rows vs {len(per_user)} fresh")
    return {
        "ok": not problems,
        "problems": problems,
        "connections": len(rows),
        "groups": len(groups),
        "online_users": len(online),
    }


def querytime(cases_file: str, repeats: int, depth: int = 50) -> list[dict[str, object]]:
    """The listing cases answered in-process (no HTTP): the database's share."""
    import time

    from skapi_channels.queries import list_groups, list_users, parse_group_query, parse_user_query

    def pct(values: list[float]) -> dict[str, float]:
        ordered = sorted(values)
        pick = lambda q: ordered[min(len(ordered) - 1, int(q * len(ordered)))]  # noqa: E731
        return {"p50_ms": round(pick(0.5) * 1000, 3), "p99_ms": round(pick(0.99) * 1000, 3)}

    def answer(path: str, body: dict[str, object]) -> tuple[float, dict[str, object]]:
        began = time.perf_counter()
        if path.endswith("/users/"):
            page = list_users(parse_user_query(body))
        else:
            page = list_groups(parse_group_query(body))
        return time.perf_counter() - began, page.as_json()

    with open(cases_file) as file:
        cases = json.load(file)
    rows = []
    for case in cases:
        path, body = case["path"], case["body"]
        answer(path, body)
        row: dict[str, object] = {
            "case": case["name"],
            "first": pct([answer(path, body)[0] for _ in range(repeats)]),
        }
        key, pages, page = None, 1, {"endOfList": False}
        while pages < depth:
            _, page = answer(path, {**body, "startKey": key} if key else body)
            if page["endOfList"]:
                break
            key, pages = page["startKey"], pages + 1
        row[f"page{depth}"] = (
            pct([answer(path, {**body, "startKey": key})[0] for _ in range(repeats)])
            if pages == depth
            else None
        )
        rows.append(row)
    return rows


def batches() -> list[dict[str, object]]:
    """Each server process's group-commit figures (batches, requests, sizes)."""
    return [
        {name: value for name, value in (stats or {}).items() if name.startswith("presence_")}
        for stats in ServerProcess.objects.exclude(id=FAKE_SERVER).values_list("stats", flat=True)
    ]


def main(argv: list[str]) -> None:
    command = argv[0]
    if command == "migrate":
        call_command("migrate", verbosity=0)
    elif command == "reset":
        reset()
    elif command == "users":
        users(int(argv[1]), argv[2])
    elif command == "populate":
        print(json.dumps(populate(int(argv[1]), int(argv[2]), int(argv[3]))))
    elif command == "check":
        print(json.dumps(check()))
    elif command == "batches":
        print(json.dumps(batches()))
    elif command == "querytime":
        print(json.dumps(querytime(argv[1], int(argv[2]))))
    elif command == "layer":
        from django.conf import settings

        print(settings.CHANNEL_LAYERS["default"]["BACKEND"])
    else:
        raise SystemExit(f"unknown command {command!r}; see the docstring")


if __name__ == "__main__":
    main(sys.argv[1:])
