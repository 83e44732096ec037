"""Arbitrary bodies to the listing endpoints (docs/protocol.md sections 7 and 8).

Whatever the body and query string, a logged-in request gets 200 with a listing
or 400 with ``{"code": "INVALID_PARAMETER", "message": ...}``, an anonymous one
401; never a 500, every answer is JSON, and each request runs a few queries only.
"""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from skapi_channels import presence

pytestmark = pytest.mark.django_db(transaction=True)

PATHS = ["/realtime/groups/", "/realtime/users/"]
# Session, user, listing; the margin is for a savepoint or two, never per row.
MAX_QUERIES = 4
MAX_SECONDS = 1.0
INTERNALS = ("Traceback", 'File "', "/work/", "site-packages", "SELECT ", "sqlite", "Error:")

FUZZ = settings(
    max_examples=150,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

characters = st.one_of(
    st.characters(),
    st.sampled_from(["\x00", "\x1f", "\x85", "\u2028", "\ufeff", "\U0001f600", "\ud800", "\udfff"]),
)
texts = st.text(alphabet=characters, max_size=20)
numbers = st.one_of(
    st.integers(),
    st.integers(min_value=-(2**80), max_value=2**80),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from([0, 1, 2, -1, 1000, 1001, 2**31, 2**63, 2**64, -(2**63) - 1, 1e308, 0.5, -0.0]),
)
scalars = st.one_of(st.none(), st.booleans(), numbers, texts)
json_values = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=3) | st.dictionaries(texts, children, max_size=3),
    max_leaves=8,
)
# Lone surrogates and NUL in startKey and user_id are pinned below
# (test_out_of_range_values_are_a_listing_or_a_400), so that this test stays stable.
key_texts = st.sampled_from(["Room", "u2", "c1", ""]) | st.text(
    alphabet=st.characters(exclude_characters="\x00"), max_size=20
)
key_values = st.one_of(
    key_texts, st.none(), st.booleans(), numbers, st.lists(key_texts, max_size=2), st.just({})
)
start_keys = st.one_of(
    json_values,
    st.sampled_from(["end", "", "END"]),
    st.fixed_dictionaries({"group": key_values, "number_of_users": numbers | key_values}),
    st.fixed_dictionaries({"user_id": key_values, "cid": key_values}),
)
FIELDS: dict[str, st.SearchStrategy[Any]] = {
    "searchFor": st.sampled_from(["group", "number_of_users", "", "name", "GROUP"]) | json_values,
    "value": st.sampled_from(["Room", "R", "", "x" * 128, "x" * 129]) | texts | numbers | json_values,
    "condition": st.sampled_from(["=", "!=", ">", ">=", "<", "<=", "eq", "ne", "gt", "gte", "lt", "lte", "GT", "~"])
    | json_values,
    "range": st.sampled_from(["Room", "zzz", ""]) | texts | numbers | json_values,
    "limit": st.sampled_from([1, 2, 50, 1000, 1001, 0, -1, "5", 2.0]) | numbers | json_values,
    "ascending": st.booleans() | json_values,
    "startKey": start_keys,
    "group": st.sampled_from(["Room", "Other", "", "x" * 129, "a\nb"]) | texts | json_values,
    "user_id": st.sampled_from(["u1", "u2", ""]) | key_values,
}  # fmt: skip


@st.composite
def bodies(draw: st.DrawFn) -> bytes:
    kind = draw(st.integers(0, 9))
    if kind == 0:  # any JSON value at all
        value: Any = draw(json_values)
    elif kind == 1:  # not JSON, or not UTF-8
        return draw(
            st.binary(max_size=40)
            | st.sampled_from([b"NaN", b'{"limit": Infinity}', b"{", b"\xff\xfe", b"[]" * 5000])
        )
    else:  # an object with some known fields, of any type, and unknown ones
        value = {name: draw(values) for name, values in FIELDS.items() if draw(st.booleans())}
        value.update(draw(st.dictionaries(texts, json_values, max_size=2)))
    return json.dumps(value).encode()


query_strings = st.one_of(
    st.just(""),
    st.lists(
        st.tuples(
            st.sampled_from(["group", "limit", "startKey", "token", "format"])
            | st.text(max_size=5),
            st.text(max_size=10),
        ),
        max_size=3,
    ).map(lambda pairs: "?" + "&".join(f"{k}={v}" for k, v in pairs)),
)


@pytest.fixture
def client(django_user_model: Any) -> Client:
    user = django_user_model.objects.create_user("viewer", password="pw-12345678")
    client = Client()
    client.force_login(user)
    return client


@pytest.fixture
def rooms(db: None) -> None:
    presence.register_server("fuzz-server", "host", 1, timezone.now())
    for number, (group, user_id) in enumerate(
        [("Room", "u1"), ("Room", "u2"), ("Room", "u2"), ("Other", "u3"), ("R\U0001f600", "u1")]
    ):
        assert presence.open_connection(f"c{number}", "chan", user_id, "fuzz-server", 100)
        assert presence.move_connection(f"c{number}", user_id, None, group)


def post(client: Client, path: str, body: bytes, **extra: Any) -> tuple[int, Any, int, float]:
    with CaptureQueriesContext(connection) as queries:
        started = time.monotonic()
        response = client.post(path, body, content_type="application/json", **extra)
        elapsed = time.monotonic() - started
    assert response["Content-Type"] == "application/json", response
    return response.status_code, json.loads(response.content), len(queries), elapsed


def assert_listing_or_400(status: int, answer: Any, path: str) -> None:
    assert status in (200, 400), (status, answer)
    if status == 400:
        assert set(answer) == {"code", "message"} and answer["code"] == "INVALID_PARAMETER"
        assert isinstance(answer["message"], str) and answer["message"]
        assert not any(internal in answer["message"] for internal in INTERNALS), answer
        return
    assert set(answer) == {"list", "startKey", "endOfList"}, answer
    assert isinstance(answer["endOfList"], bool)
    assert (answer["startKey"] == "end") == answer["endOfList"]
    item_keys = {"group", "number_of_users"} if path.endswith("groups/") else {"user_id", "cid"}
    assert all(set(item) == item_keys for item in answer["list"]), answer


@FUZZ
@given(path=st.sampled_from(PATHS), body=bodies(), query=query_strings)
def test_any_body_gets_a_listing_or_a_400(
    client: Client, rooms: None, path: str, body: bytes, query: str
) -> None:
    status, answer, queries, elapsed = post(client, path + query, body)
    assert_listing_or_400(status, answer, path)
    assert queries <= MAX_QUERIES, queries
    assert elapsed < MAX_SECONDS


@FUZZ
@given(path=st.sampled_from(PATHS), body=bodies())
def test_any_body_from_an_anonymous_client_gets_401(db: None, path: str, body: bytes) -> None:
    for anonymous in (Client(), Client(enforce_csrf_checks=True)):
        status, answer, queries, _ = post(anonymous, path, body)
        assert status == 401 and answer["code"] == "INVALID_REQUEST", answer
        assert queries <= 1


@FUZZ
@given(
    path=st.sampled_from(PATHS), token=st.text(max_size=80) | st.sampled_from(["", " ", "x:y:z"])
)
def test_any_bearer_token_that_was_not_issued_gets_401(db: None, path: str, token: str) -> None:
    header = f"Bearer {token}".encode("utf-8", "ignore").decode("latin-1")
    status, answer, _, _ = post(Client(), path, b"{}", HTTP_AUTHORIZATION=header)
    assert status == 401 and answer["code"] == "INVALID_REQUEST", answer


# Bodies found by the property test, kept as plain examples.


@pytest.mark.parametrize(
    "path,body",
    [
        ("/realtime/groups/", {"searchFor": "number_of_users", "startKey": {"group": "a", "number_of_users": 2**70}}),
        ("/realtime/groups/", {"startKey": {"group": "\ud800", "number_of_users": 1}}),
        ("/realtime/users/", {"group": "Room", "startKey": {"user_id": "\ud800", "cid": "c"}}),
        # NUL is fine in SQLite, but PostgreSQL text cannot hold it.
        ("/realtime/users/", {"group": "Room", "user_id": "u\x00"}),
        ("/realtime/users/", {"group": "Room", "startKey": {"user_id": "\x00", "cid": "c"}}),
        ("/realtime/groups/", {"startKey": {"group": "a\x00", "number_of_users": 1}}),
        ("/realtime/groups/", {"limit": 2**70}),
        ("/realtime/groups/", {"searchFor": "number_of_users", "value": 2**70}),
        ("/realtime/groups/", {"searchFor": "number_of_users", "value": 1e308, "range": -1e308}),
    ],
)  # fmt: skip
def test_out_of_range_values_are_a_listing_or_a_400(
    client: Client, rooms: None, path: str, body: Any
) -> None:
    status, answer, _, _ = post(client, path, json.dumps(body).encode())
    assert_listing_or_400(status, answer, path)
