"""The listings are served by indexes on PostgreSQL (docs/protocol.md sections 7 and 8).

With 10,000 groups in the table and statistics gathered (ANALYZE), EXPLAIN of the
query that ``queries.list_groups`` runs, for every searchFor and condition, first
page and a deep page reached by following startKeys, shows no sequential scan of
the groups table; likewise ``list_users`` on the connections table.
"""

from __future__ import annotations

import os
import random
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from skapi_channels.models import Connection, RealtimeGroup, ServerProcess
from skapi_channels.queries import list_groups, list_users, parse_group_query, parse_user_query

pytestmark = [
    pytest.mark.skipif(
        not os.environ.get("DATABASE_URL"), reason="needs PostgreSQL (DATABASE_URL)"
    ),
    pytest.mark.django_db,
]

GROUPS = 10_000
MID, QUARTER, THREE = (f"g{GROUPS * k // 4:07d}" for k in (2, 1, 3))
N = "number_of_users"
GROUP_CASES: list[dict[str, Any]] = [
    {},
    {"ascending": False},
    {"value": MID},
    {"value": MID, "condition": "!="},
    {"value": MID, "condition": ">"},
    {"value": "g000", "condition": ">="},
    {"value": MID, "condition": "<"},
    {"value": MID, "condition": "<=", "ascending": False},
    {"value": QUARTER, "range": THREE},
    {"searchFor": N},
    {"searchFor": N, "ascending": False},
    {"searchFor": N, "value": 1},
    {"searchFor": N, "value": 1, "condition": "!="},
    {"searchFor": N, "value": 1, "condition": ">"},
    {"searchFor": N, "value": 2, "condition": ">="},
    {"searchFor": N, "value": 3, "condition": "<"},
    {"searchFor": N, "value": 2, "condition": "<=", "ascending": False},
    {"searchFor": N, "value": 2, "range": 5},
]
USER_CASES: list[dict[str, Any]] = [
    {"group": "big"},
    {"group": "big", "ascending": False},
    {"group": "big", "user_id": "u00150"},
    {"group": MID},
]


@pytest.fixture(scope="module")
def populated(django_db_setup: None, django_db_blocker: Any) -> Iterator[None]:
    """The rows, committed once for the module and deleted after it."""
    with django_db_blocker.unblock():
        _populate()
    yield
    with django_db_blocker.unblock():
        Connection.objects.all().delete()
        RealtimeGroup.objects.all().delete()
        ServerProcess.objects.all().delete()


def _populate() -> None:
    rng = random.Random(7)
    now = timezone.now()
    RealtimeGroup.objects.bulk_create(
        [
            RealtimeGroup(
                name=f"g{i:07d}",
                number_of_users=1 if rng.random() < 0.7 else rng.randint(2, 20),
                created_at=now,
            )
            for i in range(GROUPS)
        ],
        batch_size=5000,
    )
    server = ServerProcess.objects.create(
        id="plans", host="test", pid=0, started_at=now, heartbeat_at=now + timedelta(days=1)
    )
    Connection.objects.bulk_create(
        [
            Connection(
                cid=f"c{i:07d}",
                channel_name="x",
                user_id=f"u{i % 3000:05d}",
                group_name="big" if i < 3000 else f"g{i % GROUPS:07d}",
                server=server,
                connected_at=now,
            )
            for i in range(GROUPS * 2)
        ],
        batch_size=5000,
    )
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE")


def plans(run: Any, body: dict[str, Any], pages: int) -> list[str]:
    """EXPLAIN of each query ``run(body)`` makes on pages 1..``pages``."""
    explained = []
    key = None
    for _ in range(pages):
        with CaptureQueriesContext(connection) as captured:
            page = run({**body, "startKey": key} if key else body)
        for query in captured.captured_queries:
            with connection.cursor() as cursor:
                cursor.execute("EXPLAIN " + query["sql"])
                explained.append("\n".join(row[0] for row in cursor.fetchall()))
        if page.end_of_list:
            break
        key = page.start_key
    return explained


@pytest.mark.parametrize("body", GROUP_CASES, ids=lambda body: repr(body))
def test_group_listing_uses_an_index(populated: None, body: dict[str, Any]) -> None:
    table = RealtimeGroup._meta.db_table
    explained = plans(lambda b: list_groups(parse_group_query(b)), {**body, "limit": 50}, 50)
    assert explained
    for plan in explained:
        assert f"Seq Scan on {table}" not in plan, plan
        assert "Index" in plan, plan


@pytest.mark.parametrize("body", USER_CASES, ids=lambda body: repr(body))
def test_user_listing_uses_an_index(populated: None, body: dict[str, Any]) -> None:
    table = Connection._meta.db_table
    explained = plans(lambda b: list_users(parse_user_query(b)), {**body, "limit": 50}, 50)
    assert explained
    for plan in explained:
        assert f"Seq Scan on {table}" not in plan, plan
