"""The JS client and the demo chat in headless Chromium against a real daphne.

Run with ``pytest tests/browser``; skipped where Chromium is not installed
(``apt-get install chromium chromium-driver``).
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.browser.harness import Server, User

pytestmark = pytest.mark.browser

DOCS = Path(__file__).resolve().parents[2] / "docs"

NOT_OPEN = "Realtime connection is not open. Try reconnecting with connectRealtime()."
NO_CONNECTION = "No realtime connection. Execute connectRealtime() before this method."


def unique(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(3)}"


def user_id(user: User) -> str:
    return str(user.evaluate("JSON.parse(document.getElementById('me').textContent).user_id"))


def settle(user: User, script: str, arg: Any = None) -> Any:
    """Run ``script`` (an expression giving a promise) and return what it
    resolved to, or ``{"rejected": <reason>}``."""
    return user.evaluate(
        f"(arg) => Promise.resolve().then(() => {script})"
        ".then(value => value, reason => ({rejected: reason instanceof SkapiError"
        " ? {code: reason.code, message: reason.message} : String(reason)}))",
        arg,
    )


def join_with_form(user: User, group: str) -> None:
    user.page.fill("#join-form input[name=group]", group)
    user.page.click("#join-form button[type=submit]")
    user.log_entry(".system", f'Joined realtime message group: "{group}".')
    user.page.locator("#room-title", has_text=group).wait_for()


def send_to_group(user: User, text: str) -> None:
    user.page.fill("#message-form input[name=text]", text)
    user.page.click("#message-form button[type=submit]")


def person(user: User, uid: str) -> Any:
    return user.page.locator(f'#user-list li[data-user-id="{uid}"]')


def test_two_users_chat(login: Callable[[str], User]) -> None:
    alice, bob = login("alice"), login("bob")
    alice_id, bob_id = user_id(alice), user_id(bob)
    group = unique("Lobby")

    join_with_form(alice, group)
    join_with_form(bob, group)

    # alice is told bob joined, and sees him among the participants.
    alice.log_entry('.notice[data-code="USER_JOINED"]', "bob joined the group.")
    person(alice, bob_id).wait_for()
    # bob's participants come from getRealtimeUsers.
    person(bob, alice_id).wait_for()
    person(bob, bob_id).wait_for()

    # Group messages reach both, the sender's own included.
    send_to_group(alice, "Hello from alice")
    bob.log_entry(".message", "Hello from alice")
    alice.log_entry(".message.mine", "Hello from alice")
    send_to_group(bob, "Hi alice, bob here")
    alice.log_entry(".message", "Hi alice, bob here")

    # A private message from bob to alice, picked from the participants.
    person(bob, alice_id).get_by_role("button", name="Private").click()
    bob.page.fill("#private-text", "psst, private")
    bob.page.click("#private-form button[type=submit]")
    alice.log_entry(".private", "psst, private")
    assert alice.page.locator("#log li.private", has_text="bob (private)").count() == 1

    # getRealtimeGroups counts both users, through the API and in the panel.
    groups = alice.evaluate("(g) => skapi.getRealtimeGroups({searchFor: 'group', value: g})", group)
    assert groups["list"] == [{"group": group, "number_of_users": 2}]
    assert groups["endOfList"] is True
    alice.page.fill("#search-form input[name=value]", group[:6])
    alice.page.click("#search-form button[type=submit]")
    alice.page.locator(f'#group-list li[data-group="{group}"] .count', has_text="2").wait_for()

    DOCS.mkdir(exist_ok=True)
    alice.page.screenshot(path=str(DOCS / "chat.png"))

    # bob leaves: alice gets USER_LEFT and he leaves her participants.
    bob.page.click("#leave")
    bob.log_entry(".system", "Left realtime message group.")
    alice.log_entry('.notice[data-code="USER_LEFT"]', "bob left the group.")
    person(alice, bob_id).wait_for(state="detached")

    # closeRealtime fires `close`.
    alice.evaluate("() => skapi.closeRealtime()")
    alice.log_entry(".system", "WebSocket connection closed.")
    alice.page.wait_for_selector("#status[data-state=closed]")
    assert alice.errors == [] and bob.errors == []


EVENTS = """
async ([name, group]) => {
    const events = [];
    const client = new SkapiRealtime(skapi.config);
    const socket = await client.connectRealtime(event => events.push(event));
    window[name] = { client, events, open: socket.readyState === WebSocket.OPEN };
    if (group !== null) {
        window[name].joined = await client.joinRealtime({ group });
    }
    return { open: window[name].open, joined: window[name].joined || null };
}
"""


def wait_event(user: User, name: str, predicate: str) -> dict[str, Any]:
    """Wait for an event of client ``name`` matching ``predicate`` (JS, on ``e``)."""
    script = f"() => window[{name!r}].events.find(e => {predicate})"
    user.page.wait_for_function(script)
    return user.evaluate(script)  # type: ignore[no-any-return]


def test_client_events_and_answers(login: Callable[[str], User]) -> None:
    alice, bob = login("alice"), login("bob")
    alice_id, bob_id = user_id(alice), user_id(bob)
    group = unique("Events")

    first = alice.evaluate(EVENTS, ["a", group])
    assert first == {
        "open": True,
        "joined": {"type": "success", "message": f'Joined realtime message group: "{group}".'},
    }
    assert wait_event(alice, "a", "e.type === 'success'") == {
        "type": "success", "message": "Connected to WebSocket server.",
        "sender": None, "sender_cid": None, "sender_rid": None, "code": None,
    }
    bob.evaluate(EVENTS, ["b", group])

    joined = wait_event(alice, "a", "e.type === 'notice'")
    assert joined["code"] == "USER_JOINED"
    assert joined["sender"] == bob_id and joined["sender_rid"] == group
    assert joined["sender_cid"].startswith("cid:")
    assert isinstance(joined["message"], str) and joined["message"]

    # A broadcast: the content travels as any JSON; the answer comes after the ack.
    sent = settle(bob, "window.b.client.postRealtime(arg, window.b.client.group)", {"n": [1, 2]})
    assert sent == {"type": "success", "message": "Message sent."}
    message = wait_event(alice, "a", "e.type === 'message'")
    assert message["message"] == {"n": [1, 2]}
    assert message["sender"] == bob_id and message["sender_rid"] == group
    assert message["sender_cid"] == joined["sender_cid"] and message["code"] is None

    # A private message (content null is allowed) has no group.
    sent = settle(bob, "window.b.client.postRealtime(null, arg)", alice_id)
    assert sent == {"type": "success", "message": "Message sent."}
    private = wait_event(alice, "a", "e.type === 'private'")
    assert private["message"] is None and private["sender"] == bob_id
    assert private["sender_rid"] is None

    # getRealtimeUsers: one row per connection, cids shown as cid:...
    users = alice.evaluate(
        "(g) => window.a.client.getRealtimeUsers({group: g})",
        group,
    )
    rows = {(row["user_id"], row["cid"]) for row in users["list"]}
    assert (bob_id, joined["sender_cid"]) in rows
    assert all(row["connection_id"] == row["cid"] for row in users["list"])
    assert all(row["cid"].startswith("cid:") for row in users["list"])

    # fetchMore pages as skapi-js does, one row at a time.
    first_page = alice.evaluate(
        "(g) => window.a.client.getRealtimeUsers({group: g}, {limit: 1})", group
    )
    second = alice.evaluate(
        "(g) => window.a.client.getRealtimeUsers({group: g}, {limit: 1, fetchMore: true})", group
    )
    third = alice.evaluate(
        "(g) => window.a.client.getRealtimeUsers({group: g}, {limit: 1, fetchMore: true})", group
    )
    assert len(first_page["list"]) == 1 and first_page["endOfList"] is False
    assert len(second["list"]) == 1 and second["list"] != first_page["list"]
    assert len(second["startKeyHistory"]) == 2
    assert third["list"] == [] and third["endOfList"] is True and third["startKey"] == "end"

    # A SubmitEvent: named inputs become params, numeric inputs numbers, no navigation.
    form_result = settle(
        bob,
        """new Promise((resolve, reject) => {
            const form = document.createElement('form');
            form.innerHTML = '<input name="text" value="from a form"><input type="number" name="count" value="3">';
            document.body.appendChild(form);
            form.addEventListener('submit', event => {
                window.b.client.postRealtime(event, window.b.client.group).then(resolve, reject);
            });
            form.requestSubmit();
        })""",
    )
    assert form_result == {"type": "success", "message": "Message sent."}
    from_form = wait_event(alice, "a", "e.type === 'message' && e.message && e.message.count === 3")
    assert from_form["message"] == {"text": "from a form", "count": 3}
    assert bob.page.url.endswith("/")

    # Leaving: bob's connection leaves, alice is told.
    left = settle(bob, "window.b.client.joinRealtime({group: null})")
    assert left == {"type": "success", "message": "Left realtime message group."}
    notice = wait_event(alice, "a", "e.code === 'USER_LEFT'")
    assert notice["sender"] == bob_id and notice["type"] == "notice"

    # closeRealtime fires `close` once and resolves.
    assert alice.evaluate("() => window.a.client.closeRealtime()") is None
    closed = wait_event(alice, "a", "e.type === 'close'")
    assert closed["message"] == "WebSocket connection closed."
    bob.evaluate("() => window.b.client.closeRealtime()")
    assert alice.errors == [] and bob.errors == []


def test_error_messages(login: Callable[[str], User]) -> None:
    alice = login("alice")
    fresh = "new SkapiRealtime(skapi.config)"

    assert settle(alice, f"{fresh}.connectRealtime('not a function')") == {
        "rejected": {"code": "INVALID_REQUEST", "message": "Callback must be a function."}
    }
    assert settle(alice, f"{fresh}.postRealtime('hello', 'someone')") == {
        "rejected": {"code": "INVALID_REQUEST", "message": NO_CONNECTION}
    }
    assert settle(alice, f"{fresh}.joinRealtime({{group: 'Somewhere'}})") == {
        "rejected": {"code": "INVALID_REQUEST", "message": NO_CONNECTION}
    }
    nowhere = "new SkapiRealtime(Object.assign({}, skapi.config, {socketPath: '/ws/nowhere/'}))"
    assert settle(alice, f"{nowhere}.connectRealtime(() => {{}})") == {
        "rejected": {"code": "ERROR", "message": "Skapi: WebSocket connection error."}
    }

    # The page's own client is connected: a group it has not joined is refused.
    group = unique("NotJoined")
    assert settle(alice, "skapi.postRealtime('hello', arg)", group) == {
        "rejected": {
            "code": "INVALID_REQUEST",
            "message": f"User has not joined to the recipient group. Run joinRealtime('{group}')",
        }
    }
    # data-auth="token": the socket authenticates with a handshake token.
    token_client = alice.evaluate(
        """async () => {
            const client = new SkapiRealtime(Object.assign({}, skapi.config, {auth: 'token'}));
            const socket = await client.connectRealtime(() => {});
            const url = socket.url;
            await client.closeRealtime();
            return url;
        }"""
    )
    assert "/ws/realtime/?token=" in token_client

    # The ES module gives the same client.
    module = alice.evaluate(
        """async () => {
            const m = await import('/static/skapi_channels/skapi-realtime.mjs');
            return [typeof m.SkapiRealtime, m.default === window.skapi];
        }"""
    )
    assert module == ["function", True]

    # After closeRealtime there is no connection any more.
    alice.evaluate("() => skapi.closeRealtime()")
    assert settle(alice, "skapi.postRealtime('hello', 'someone')") == {
        "rejected": {"code": "INVALID_REQUEST", "message": NO_CONNECTION}
    }
    assert settle(alice, "skapi.joinRealtime({group: 'x'})") == {
        "rejected": {"code": "INVALID_REQUEST", "message": NO_CONNECTION}
    }
    assert alice.errors == []


@pytest.mark.timeout(180)
def test_restart_reconnects_and_rejoins(login: Callable[[str], User], server: Server) -> None:
    alice, bob = login("alice"), login("bob")
    alice_id, bob_id = user_id(alice), user_id(bob)
    group = unique("Restart")
    join_with_form(alice, group)
    join_with_form(bob, group)
    person(alice, bob_id).wait_for()

    server.stop()
    alice.log_entry(".system", "Reconnecting to WebSocket server...1")
    bob.log_entry(".system", "Reconnecting to WebSocket server...1")
    # While the server is down, nothing can be sent.
    assert settle(alice, "skapi.postRealtime('lost?', arg)", group) == {
        "rejected": {"code": "INVALID_REQUEST", "message": NOT_OPEN}
    }

    server.start()
    for user in (alice, bob):
        user.page.wait_for_selector("#status[data-state=open]", timeout=60_000)
        assert user.evaluate("skapi.group") == group
    # Both are in the group again: a broadcast goes through and arrives.
    send_to_group(alice, "back again")
    bob.log_entry(".message", "back again")
    users = alice.evaluate("(g) => skapi.getRealtimeUsers({group: g})", group)
    assert {alice_id, bob_id} <= {row["user_id"] for row in users["list"]}
    assert alice.errors == [] and bob.errors == []
