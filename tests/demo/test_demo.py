"""The demo chat page embeds no user list; its names view names connected users only."""

from __future__ import annotations

import json
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.test import Client

from skapi_channels.models import OnlineUser

pytestmark = pytest.mark.django_db


def make_user(name: str, **extra: Any) -> Any:
    return get_user_model().objects.create_user(name, password="pw-12345678", **extra)


def ask(client: Client, body: Any) -> Any:
    return client.post("/names/", json.dumps(body), content_type="application/json")


def test_chat_page_embeds_no_other_user() -> None:
    alice = make_user("alice")
    make_user("bob")
    make_user("root", is_superuser=True, is_staff=True)
    make_user("gone", is_active=False)
    client = Client()
    client.force_login(alice)
    page = client.get("/").content.decode()
    assert "alice" in page
    for other in ("bob", "root", "gone"):
        assert other not in page


def test_names_of_connected_users_only() -> None:
    alice, bob = make_user("alice"), make_user("bob")
    carol = make_user("carol")
    gone = make_user("gone", is_active=False)
    for user in (bob, gone):
        OnlineUser.objects.create(user_id=str(user.pk), connections=1)
    client = Client()
    client.force_login(alice)
    ids = [str(u.pk) for u in (bob, carol, gone)] + ["nobody"]
    answer = ask(client, {"user_ids": ids})
    assert answer.status_code == 200
    # carol is not connected, gone is inactive, "nobody" is no one.
    assert answer.json() == {"names": {str(bob.pk): "bob"}}


def test_names_refuses_bad_input_and_anonymous() -> None:
    client = Client()
    assert ask(client, {"user_ids": []}).status_code == 401
    client.force_login(make_user("alice"))
    for body in ({}, {"user_ids": "1"}, {"user_ids": [1]}, {"user_ids": ["1"] * 101}, [1]):
        answer = ask(client, body)
        assert answer.status_code == 400
        assert answer.json()["code"] == "INVALID_PARAMETER"
    assert client.get("/names/").status_code == 405


@pytest.mark.parametrize(
    ("history", "recent"),
    [
        ({}, 20),  # HISTORY_SIZE 100 by default
        ({"HISTORY_SIZE": 5}, 5),
        ({"HISTORY_SIZE": 20}, 20),
        ({"HISTORY_SIZE": 0}, 0),  # history off: the page asks no last
        ({"HISTORY_TTL": 0}, 0),
    ],
)
def test_the_chat_page_never_asks_more_recent_messages_than_the_server_keeps(
    history: dict[str, Any], recent: int
) -> None:
    """The page's joins ask ``last`` of at most 20 and at most HISTORY_SIZE, so the
    server accepts it, and none while history is off."""
    import re

    from django.test import override_settings

    from skapi_channels.history import retention
    from skapi_channels.protocol import parse_frame

    client = Client()
    client.force_login(make_user("alice"))
    with override_settings(SKAPI_CHANNELS=history):
        page = client.get("/").content.decode()
        # The join form's hidden "last" input (joinRealtime reads the form), which
        # the page's other joins copy; none while history is off.
        found = re.findall(r'<input type="number" name="last" value="(\d+)" hidden>', page)
        assert found == ([str(recent)] if recent else [])
        if recent:
            frame = json.dumps({"action": "joinRoom", "rid": "g", "last": recent})
            assert parse_frame(frame, 128, retention()[0]).last == recent
