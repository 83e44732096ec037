"""The JSON endpoints: listings (docs/protocol.md §7-8), tokens, authentication, CSRF."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from django.test import Client
from django.utils import timezone

from skapi_channels import presence
from skapi_channels.tokens import issue_token

pytestmark = pytest.mark.django_db(transaction=True)

SERVER = "test-server"


@pytest.fixture
def user(django_user_model: Any) -> Any:
    return django_user_model.objects.create_user("viewer", password="pw-12345678")


@pytest.fixture
def client(user: Any) -> Client:
    client = Client()
    client.force_login(user)
    return client


@pytest.fixture
def populate() -> Callable[[dict[str, list[str]]], None]:
    """``populate({"group": ["user", "user", ...]})``: one connection per entry."""
    presence.register_server(SERVER, "host", 1, timezone.now())
    counter = iter(range(10**6))

    def make(groups: dict[str, list[str]]) -> None:
        for group, members in groups.items():
            for user_id in members:
                cid = f"c{next(counter):06d}"
                assert presence.open_connection(cid, "chan", user_id, SERVER, 1000)
                assert presence.move_connection(cid, user_id, None, group)

    return make


def post(client: Client, path: str, body: Any, **extra: Any) -> tuple[int, Any]:
    data = body if isinstance(body, (str, bytes)) else json.dumps(body)
    response = client.post(path, data, content_type="application/json", **extra)
    return response.status_code, json.loads(response.content)


def groups(client: Client, **body: Any) -> tuple[int, Any]:
    return post(client, "/realtime/groups/", body)


def names(answer: dict[str, Any]) -> list[str]:
    return [item["group"] for item in answer["list"]]


SIZES = {"Alpha": 1, "Beta": 3, "Hello": 2, "HelloWorld": 2, "Hellp": 1, "hello": 1, "Zed": 4}


@pytest.fixture
def sample(populate: Callable[..., None]) -> None:
    populate({name: [f"u{i}" for i in range(size)] for name, size in SIZES.items()})
    # A second tab of u0 in Beta does not count twice.
    populate({"Beta": ["u0"]})


def test_lists_every_group_with_distinct_user_counts(client, sample):
    status, answer = groups(client)
    assert status == 200
    assert answer == {
        "list": [{"group": name, "number_of_users": SIZES[name]} for name in sorted(SIZES)],
        "startKey": "end",
        "endOfList": True,
    }


@pytest.mark.parametrize(
    "condition,expected",
    [
        ("=", ["Hello"]), ("eq", ["Hello"]),
        ("!=", ["Alpha", "Beta", "HelloWorld", "Hellp", "Zed", "hello"]),
        ("ne", ["Alpha", "Beta", "HelloWorld", "Hellp", "Zed", "hello"]),
        (">", ["HelloWorld", "Hellp", "Zed", "hello"]), ("gt", ["HelloWorld", "Hellp", "Zed", "hello"]),
        (">=", ["Hello", "HelloWorld"]), ("gte", ["Hello", "HelloWorld"]),
        ("<", ["Alpha", "Beta"]), ("lt", ["Alpha", "Beta"]),
        ("<=", ["Alpha", "Beta", "Hello"]), ("lte", ["Alpha", "Beta", "Hello"]),
    ],
)  # fmt: skip
def test_group_conditions_and_aliases(client, sample, condition, expected):
    status, answer = groups(client, searchFor="group", value="Hello", condition=condition)
    assert status == 200, answer
    assert names(answer) == expected


def test_value_without_condition_means_equal(client, sample):
    assert names(groups(client, value="Zed")[1]) == ["Zed"]


def test_group_range_is_inclusive(client, sample):
    assert names(groups(client, value="Beta", range="Hellp")[1]) == [
        "Beta", "Hello", "HelloWorld", "Hellp",
    ]  # fmt: skip


@pytest.mark.parametrize(
    "body,expected",
    [
        ({"value": 2}, ["Hello", "HelloWorld"]),
        ({"value": 2, "condition": ">"}, ["Beta", "Zed"]),
        ({"value": 2, "condition": ">="}, ["Hello", "HelloWorld", "Beta", "Zed"]),
        ({"value": 2, "condition": "<"}, ["Alpha", "Hellp", "hello"]),
        ({"value": 2, "condition": "lte"}, ["Alpha", "Hellp", "hello", "Hello", "HelloWorld"]),
        ({"value": 2, "condition": "!="}, ["Alpha", "Hellp", "hello", "Beta", "Zed"]),
        ({"value": 2.5, "condition": "<"}, ["Alpha", "Hellp", "hello", "Hello", "HelloWorld"]),
        ({"value": 2.5, "condition": ">"}, ["Beta", "Zed"]),
        ({"value": 2.5, "condition": "="}, []),
        ({"value": 1, "range": 3}, ["Alpha", "Hellp", "hello", "Hello", "HelloWorld", "Beta"]),
        ({"value": 1.5, "range": 3.5}, ["Hello", "HelloWorld", "Beta"]),
        ({"value": 1e300, "condition": "<"}, ["Alpha", "Hellp", "hello", "Hello", "HelloWorld", "Beta", "Zed"]),
        ({"value": -5, "condition": "lt"}, []),
    ],
)  # fmt: skip
def test_number_of_users_conditions(client, sample, body, expected):
    status, answer = groups(client, searchFor="number_of_users", **body)
    assert status == 200, answer
    assert names(answer) == expected


def test_descending_reverses_both_keys(client, sample):
    answer = groups(client, searchFor="number_of_users", ascending=False)[1]
    assert names(answer) == ["Zed", "Beta", "HelloWorld", "Hello", "hello", "Hellp", "Alpha"]
    assert names(groups(client, ascending=False)[1]) == sorted(SIZES, reverse=True)


def page_through(client: Client, path: str, body: dict[str, Any], key: str) -> list[list[Any]]:
    pages: list[list[Any]] = []
    start_key = None
    while True:
        status, answer = post(client, path, {**body, "startKey": start_key})
        assert status == 200, answer
        pages.append([item[key] for item in answer["list"]])
        if answer["endOfList"]:
            assert answer["startKey"] == "end"
            return pages
        start_key = answer["startKey"]
        assert isinstance(start_key, dict)


@pytest.mark.parametrize("ascending", [True, False])
@pytest.mark.parametrize("search_for", ["group", "number_of_users"])
def test_pages_are_disjoint_ordered_and_complete(client, populate, ascending, search_for):
    layout = {f"g{i:03d}": [f"u{j}" for j in range(i % 5 + 1)] for i in range(47)}
    populate(layout)
    pages = page_through(
        client,
        "/realtime/groups/",
        {"limit": 10, "ascending": ascending, "searchFor": search_for},
        "group",
    )
    assert [len(page) for page in pages] == [10, 10, 10, 10, 7]
    flat = [name for page in pages for name in page]
    if search_for == "group":
        expected = sorted(layout, reverse=not ascending)
    else:
        expected = sorted(layout, key=lambda n: (len(layout[n]), n), reverse=not ascending)
    assert flat == expected


def test_a_page_follows_correctly_when_rows_changed_in_between(client, populate):
    populate({name: ["u1"] for name in ("a", "b", "c", "d")})
    first = groups(client, limit=2)[1]
    assert names(first) == ["a", "b"]
    populate({"aa": ["u1"], "bb": ["u2"]})
    assert names(groups(client, limit=10, startKey=first["startKey"])[1]) == ["bb", "c", "d"]


def test_exactly_limit_rows_is_the_last_page(client, populate):
    populate({name: ["u"] for name in ("a", "b")})
    answer = groups(client, limit=2)[1]
    assert answer["endOfList"] is True and answer["startKey"] == "end"


def test_no_groups_is_an_empty_last_page(client, db):
    assert groups(client)[1] == {"list": [], "startKey": "end", "endOfList": True}


@pytest.mark.parametrize(
    "body,fragment",
    [
        ({"searchFor": "name"}, "searchFor"),
        ({"value": 3}, "must be a string"),
        ({"searchFor": "number_of_users", "value": "3"}, "must be a number"),
        ({"searchFor": "number_of_users", "value": True}, "must be a number"),
        ({"condition": ">"}, "need a value"),
        ({"range": "b"}, "need a value"),
        ({"value": "", "condition": ">"}, "need a value"),
        ({"value": "a", "condition": "~"}, "condition must be one of"),
        ({"value": "a", "condition": "GT"}, "condition must be one of"),
        ({"value": "a", "condition": ">", "range": "b"}, "cannot be used together"),
        ({"value": "a", "range": 3}, "range must be a string"),
        ({"searchFor": "number_of_users", "value": 1, "range": "x"}, "range must be a number"),
        ({"limit": 0}, "limit"), ({"limit": 1001}, "limit"), ({"limit": "5"}, "limit"),
        ({"limit": 2.5}, "limit"), ({"limit": True}, "limit"),
        ({"ascending": "yes"}, "ascending"),
        ({"startKey": "garbage"}, "startKey"),
        ({"startKey": {"group": 1, "number_of_users": 1}}, "startKey"),
        ({"startKey": {"group": "a"}}, "startKey"),
        ({"value": "x" * 129}, "1 to 128"),
        ({"value": "a\u0000"}, "control"),
    ],
)  # fmt: skip
def test_bad_group_parameters_are_400(client, body, fragment):
    status, answer = groups(client, **body)
    assert status == 400
    assert answer["code"] == "INVALID_PARAMETER"
    assert fragment in answer["message"]


@pytest.mark.parametrize("body", ["not json", "[1]", '{"limit": NaN}', b"\xff\xfe"])
def test_bodies_that_are_not_a_json_object_are_400(client, body):
    status, answer = post(client, "/realtime/groups/", body)
    assert (status, answer["code"]) == (400, "INVALID_PARAMETER")


def test_empty_body_lists_everything(client, sample):
    response = client.post("/realtime/groups/", "", content_type="application/json")
    assert response.status_code == 200


def test_unknown_fields_are_ignored(client, sample):
    assert groups(client, csrfmiddlewaretoken="x", value="Zed")[0] == 200


# Users.


def users_of(client: Client, **body: Any) -> tuple[int, Any]:
    return post(client, "/realtime/users/", body)


def test_users_lists_one_item_per_connection_in_order(client, populate):
    populate({"Room": ["7", "10", "7"], "Other": ["8"]})
    status, answer = users_of(client, group="Room")
    assert status == 200
    items = answer["list"]
    assert [item["user_id"] for item in items] == ["10", "7", "7"]  # code-point order
    assert items[1]["cid"] < items[2]["cid"]
    assert set(items[0]) == {"user_id", "cid"}
    assert answer["endOfList"] is True


def test_users_filtered_by_user_id(client, populate):
    populate({"Room": ["7", "10", "7"]})
    answer = users_of(client, group="Room", user_id="7")[1]
    assert [item["user_id"] for item in answer["list"]] == ["7", "7"]


def test_users_of_an_empty_group_is_an_empty_list(client, db):
    assert users_of(client, group="Nobody") == (200, {"list": [], "startKey": "end", "endOfList": True})


@pytest.mark.parametrize("ascending", [True, False])
def test_users_pages(client, populate, ascending):
    populate({"Room": [f"u{i % 7}" for i in range(23)]})
    pages = page_through(client, "/realtime/users/", {"group": "Room", "limit": 5, "ascending": ascending}, "cid")
    assert [len(page) for page in pages] == [5, 5, 5, 5, 3]
    assert len({cid for page in pages for cid in page}) == 23


@pytest.mark.parametrize(
    "body,fragment",
    [
        ({}, "group is required"),
        ({"group": 5}, "must be a string"),
        ({"group": "a\nb"}, "control"),
        ({"group": "Room", "user_id": 7}, "user_id must be a string"),
        ({"group": "Room", "limit": 0}, "limit"),
        ({"group": "Room", "startKey": {"user_id": "a"}}, "startKey"),
    ],
)
def test_bad_user_parameters_are_400(client, body, fragment):
    status, answer = users_of(client, **body)
    assert (status, answer["code"]) == (400, "INVALID_PARAMETER")
    assert fragment in answer["message"]


# Authentication, CSRF, methods.


@pytest.mark.parametrize("path", ["/realtime/groups/", "/realtime/users/", "/realtime/token/"])
def test_anonymous_gets_401_json_with_or_without_csrf(path, db):
    for client in (Client(), Client(enforce_csrf_checks=True)):
        status, answer = post(client, path, {"group": "x"})
        assert status == 401
        assert answer["code"] == "INVALID_REQUEST" and answer["message"]


def test_session_requests_must_pass_csrf(user):
    client = Client(enforce_csrf_checks=True)
    client.force_login(user)
    status, answer = post(client, "/realtime/groups/", {})
    assert status == 403 and "CSRF" in answer["message"]
    client.get("/admin/login/")  # any page that sets the CSRF cookie
    token = client.cookies["csrftoken"].value
    status, _ = post(client, "/realtime/groups/", {}, HTTP_X_CSRFTOKEN=token)
    assert status == 200


def test_bearer_token_needs_no_csrf(user):
    token, _ = issue_token(user)
    client = Client(enforce_csrf_checks=True)
    status, _ = post(client, "/realtime/groups/", {}, HTTP_AUTHORIZATION=f"Bearer {token}")
    assert status == 200
    status, answer = post(client, "/realtime/users/", {"group": "g"}, HTTP_AUTHORIZATION="Bearer forged")
    assert status == 401


def test_only_post_is_served(client):
    for method in (client.get, client.put, client.delete):
        response = method("/realtime/groups/")
        assert response.status_code == 405
        assert response["Allow"] == "POST"
        assert json.loads(response.content)["code"] == "INVALID_REQUEST"


def test_token_endpoint_issues_a_token_for_the_session_user(client, user):
    status, answer = post(client, "/realtime/token/", {})
    assert status == 200
    assert set(answer) == {"token", "expires"}
    assert answer["expires"] - timezone.now().timestamp() == pytest.approx(60, abs=2)
    from skapi_channels.tokens import read_token

    assert read_token(answer["token"]) == str(user.pk)


def test_token_cannot_renew_itself(user):
    token, _ = issue_token(user)
    status, _ = post(Client(), "/realtime/token/", {}, HTTP_AUTHORIZATION=f"Bearer {token}")
    assert status == 401


@pytest.mark.parametrize("ascending", [True, False])
def test_not_equal_pages_across_both_sides_of_the_value(client, populate, ascending):
    layout = {f"g{i:03d}": [f"u{j}" for j in range(i % 5 + 1)] for i in range(47)}
    populate(layout)
    pages = page_through(
        client,
        "/realtime/groups/",
        {"limit": 7, "ascending": ascending, "searchFor": "number_of_users", "value": 3, "condition": "!="},
        "group",
    )
    expected = sorted(
        (name for name in layout if len(layout[name]) != 3),
        key=lambda name: (len(layout[name]), name),
        reverse=not ascending,
    )
    assert [name for page in pages for name in page] == expected
    assert all(len(page) == 7 for page in pages[:-1])


# Nothing a client sends is a 500.


@pytest.mark.parametrize(
    "body,expected",
    [
        ({"searchFor": "number_of_users", "value": 10**400, "condition": "<"}, list(SIZES)),
        ({"searchFor": "number_of_users", "value": -(10**400), "condition": ">"}, list(SIZES)),
        ({"searchFor": "number_of_users", "value": 10**400}, []),
        ({"searchFor": "number_of_users", "value": -(10**400), "range": 10**400}, list(SIZES)),
        ({"searchFor": "number_of_users", "value": 2, "range": 10**309}, ["Beta", "Hello", "HelloWorld", "Zed"]),
    ],
)
def test_numbers_beyond_float_range_are_bounds_not_errors(client, sample, body, expected):
    status, answer = post(client, "/realtime/groups/", json.dumps(body))
    assert status == 200, answer
    assert sorted(names(answer)) == sorted(expected)


def test_python_api_takes_numbers_beyond_float_range(sample):
    from skapi_channels import api

    page = api.list_groups(search_for="number_of_users", value=10**400, condition="<=")
    assert len(page.items) == len(SIZES)


@pytest.mark.parametrize("path", ["/realtime/groups/", "/realtime/users/", "/realtime/token/"])
def test_forms_are_refused_with_json(client, path):
    multipart = client.post(path, {"group": "x", "file": ("a" * 10)})
    encoded = client.post(path, "group=x&a=1", content_type="application/x-www-form-urlencoded")
    many = client.post(
        path, "&".join(f"f{i}=1" for i in range(2000)),
        content_type="application/x-www-form-urlencoded",
    )
    for response in (multipart, encoded, many):
        assert response.status_code == 415
        assert response["Content-Type"] == "application/json"
        assert json.loads(response.content)["code"] == "INVALID_REQUEST"


def test_forms_are_refused_with_json_under_csrf_checks(user):
    client = Client(enforce_csrf_checks=True)
    client.force_login(user)
    response = client.post("/realtime/groups/", {"group": "x"})
    assert response.status_code == 415 and json.loads(response.content)["message"]


def test_a_body_over_the_upload_limit_is_refused_with_json(client, settings):
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1000
    status, answer = post(client, "/realtime/groups/", json.dumps({"value": "x" * 2000}))
    assert status == 413 and answer["code"] == "INVALID_REQUEST"
    token, _ = issue_token(user_of(client))
    status, answer = post(
        Client(), "/realtime/users/", json.dumps({"group": "x" * 2000}),
        HTTP_AUTHORIZATION=f"Bearer {token}",
    )
    assert status == 413


def user_of(client: Client) -> Any:
    from django.contrib.auth import get_user_model

    return get_user_model().objects.get(pk=client.session["_auth_user_id"])
