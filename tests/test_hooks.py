"""AUTHORIZE_JOIN and AUTHORIZE_MESSAGE: read at call time, sync or async, and a
refusal is an error frame that changes nothing."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from django.contrib.auth import get_user_model
from django.test import override_settings

from skapi_channels.models import Connection
from tests.conftest import in_db

calls: list[tuple[str, ...]] = []


def staff_rooms_for_staff(user_id: str, group: str) -> bool | str:
    """A sync hook that queries the database (it runs on the database thread)."""
    calls.append(("join", user_id, group, threading.current_thread().name))
    if not group.startswith("staff-"):
        return True
    if get_user_model().objects.filter(pk=user_id, is_staff=True).exists():
        return True
    return f"Only staff may join '{group}'."


def closed_rooms(user_id: str, group: str) -> bool:
    return group != "closed"


async def no_messages_to_carol(user_id: str, recipient: str) -> bool | str:
    await asyncio.sleep(0)
    calls.append(("message", user_id, recipient))
    carol = await get_user_model().objects.aget(username="carol")
    return recipient != str(carol.pk)


def refuse_silently(user_id: str, recipient: str) -> None | bool:
    return False


async def test_default_allows_everyone(users, connect):
    alice = await connect(users.alice)
    await alice.join("staff-room")
    answer = await alice.request(
        {"action": "sendMessage", "uid": str(users.carol.pk), "content": 1, "id": 2}
    )
    assert answer == {"#ack": 2}


async def test_join_hook_refuses_with_its_sentence_and_changes_nothing(
    users, connect, presence_is_true
):
    calls.clear()
    with override_settings(
        SKAPI_CHANNELS={"AUTHORIZE_JOIN": "tests.test_hooks.staff_rooms_for_staff"}
    ):
        alice = await connect(users.alice)
        await alice.join("lobby")
        answer = await alice.request({"action": "joinRoom", "rid": "staff-room", "id": 2})
        assert answer == {
            "#error": "Only staff may join 'staff-room'.",
            "#code": "INVALID_REQUEST",
            "#id": 2,
        }
        # Still in the lobby: the refusal changed nothing.
        assert await in_db(lambda: Connection.objects.get().group_name) == "lobby"
        await in_db(presence_is_true)
        await in_db(get_user_model().objects.filter(pk=users.alice.pk).update, is_staff=True)
        await alice.join("staff-room", 3)
    assert [call[:3] for call in calls] == [
        ("join", str(users.alice.pk), "lobby"),
        ("join", str(users.alice.pk), "staff-room"),
        ("join", str(users.alice.pk), "staff-room"),
    ]
    # Sync hooks run off the event loop's thread.
    assert all(call[3] != threading.current_thread().name for call in calls)


async def test_leaving_is_never_refused(users, connect):
    with override_settings(SKAPI_CHANNELS={"AUTHORIZE_JOIN": closed_rooms}):
        alice = await connect(users.alice)
        await alice.join("open")
        await alice.join(None, 2)
        answer = await alice.request({"action": "joinRoom", "rid": "closed", "id": 3})
        assert answer == {
            "#error": "You may not join the group 'closed'.",
            "#code": "INVALID_REQUEST",
            "#id": 3,
        }


async def test_settings_are_read_at_call_time(users, connect):
    alice = await connect(users.alice)
    with override_settings(SKAPI_CHANNELS={"AUTHORIZE_JOIN": closed_rooms}):
        answer = await alice.request({"action": "joinRoom", "rid": "closed", "id": 1})
        assert answer["#code"] == "INVALID_REQUEST"
    await alice.join("closed", 2)


async def test_message_hook_refuses_private_messages(users, connect):
    calls.clear()
    with override_settings(
        SKAPI_CHANNELS={"AUTHORIZE_MESSAGE": "tests.test_hooks.no_messages_to_carol"}
    ):
        alice, bob, carol = (
            await connect(users.alice),
            await connect(users.bob),
            await connect(users.carol),
        )
        carol_id, bob_id = str(users.carol.pk), str(users.bob.pk)
        answer = await alice.request(
            {"action": "sendMessage", "uid": carol_id, "content": "hi", "id": 1}
        )
        assert answer == {
            "#error": f"You may not send messages to user '{carol_id}'.",
            "#code": "INVALID_REQUEST",
            "#id": 1,
        }
        await carol.nothing()
        await alice.request({"action": "sendMessage", "uid": bob_id, "content": "hi", "id": 2})
        assert (await bob.receive())["#private"] == "hi"
    assert calls == [
        ("message", str(users.alice.pk), carol_id),
        ("message", str(users.alice.pk), bob_id),
    ]


async def test_false_refuses_with_a_default_sentence(users, connect):
    with override_settings(SKAPI_CHANNELS={"AUTHORIZE_MESSAGE": refuse_silently}):
        alice = await connect(users.alice)
        bob_id = str(users.bob.pk)
        answer = await alice.request({"action": "sendMessage", "uid": bob_id, "content": 1})
        assert answer == {
            "#error": f"You may not send messages to user '{bob_id}'.",
            "#code": "INVALID_REQUEST",
            "#id": None,
        }


async def test_a_refused_frame_keeps_the_socket_open(users, connect):
    with override_settings(SKAPI_CHANNELS={"AUTHORIZE_JOIN": closed_rooms}):
        alice = await connect(users.alice)
        for frame_id in range(3):
            answer: dict[str, Any] = await alice.request(
                {"action": "joinRoom", "rid": "closed", "id": frame_id}
            )
            assert answer["#code"] == "INVALID_REQUEST"
        await alice.join("open", 9)
