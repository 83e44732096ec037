"""The JS client's drop-in surface and its hardening, in Chromium on a real daphne:
the Skapi class and SkapiError, closing while opening, callbacks after a close,
close codes that end reconnecting, refused handshakes, messages JSON cannot
encode, resuming after giving up, keepAlive off the main thread."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable
from typing import Any

import pytest

from tests.browser.harness import PASSWORD, Server, User
from tests.browser.test_chat import settle, unique, user_id

pytestmark = pytest.mark.browser

with contextlib.suppress(ImportError):  # no playwright: the tests skip
    from playwright.sync_api import Browser

MAKE_ROOT = (
    "from django.contrib.auth import get_user_model\n"
    "User = get_user_model()\n"
    "if not User.objects.filter(username='root').exists():\n"
    f"    User.objects.create_superuser('root', password={PASSWORD!r})\n"
)

# `window.t`: a fresh client recording its events; options over the page's config.
CLIENT = """
(options) => {
    const events = [];
    const client = new SkapiRealtime(Object.assign({}, skapi.config, options || {}));
    window.t = { client, events, record: event => events.push(event) };
    return true;
}
"""


def events(user: User, name: str = "t") -> list[dict[str, Any]]:
    return user.evaluate(  # type: ignore[no-any-return]
        f"() => window.{name}.events.map(e => JSON.parse(JSON.stringify(e)))"
    )


def wait_for(user: User, predicate: str, timeout: float = 15_000) -> None:
    user.page.wait_for_function(predicate, timeout=timeout)


def connect_and_join(user: User, group: str, **join: Any) -> None:
    """``t.client`` connects, recording its events, and joins ``group`` (with the
    other ``joinRealtime`` options given)."""
    user.evaluate(
        "async ([g, extra]) => { await t.client.connectRealtime(t.record);"
        " await t.client.joinRealtime(Object.assign({group: g}, extra)); }",
        [group, join],
    )


def test_skapi_class_and_errors(login: Callable[[str], User]) -> None:
    alice = login("alice")
    group = unique("Klass")
    result = alice.evaluate(
        """async (group) => {
            const seen = [];
            const skapi2 = new Skapi('service-id', 'owner-id', { keepAlive: 5000 });
            await skapi2.connectRealtime(e => seen.push(e.type));
            const joined = await skapi2.joinRealtime({ group });
            await skapi2.postRealtime('hi', group);
            const users = await skapi2.getRealtimeUsers({ group });
            let error = null;
            try {
                await skapi2.postRealtime('x', 'NotAGroupNorAUser-' + group);
            } catch (err) {
                error = err;
            }
            await skapi2.closeRealtime();
            return {
                joined, seen, rows: users.list.length,
                classes: [skapi2 instanceof SkapiRealtime, skapi instanceof Skapi,
                          error instanceof Error, error instanceof SkapiError],
                error: { name: error.name, code: error.code, message: error.message },
                user: skapi2.user, service: skapi2.service, owner: skapi2.owner,
                keepAlive: skapi2.config.keepAlive,
            };
        }""",
        group,
    )
    assert result["joined"]["message"] == f'Joined realtime message group: "{group}".'
    assert result["seen"][:2] == ["success", "message"] and result["rows"] == 1
    assert result["classes"] == [True, True, True, True]
    assert result["error"]["code"] == "INVALID_REQUEST" and result["error"]["name"] == "SKAPI"
    assert result["user"] == {"user_id": user_id(alice)}
    assert (result["service"], result["owner"], result["keepAlive"]) == (
        "service-id",
        "owner-id",
        5000,
    )
    # The module build exports the same classes.
    module = alice.evaluate(
        """async () => {
            const m = await import('/static/skapi_channels/skapi-realtime.mjs');
            return [m.Skapi === Skapi, m.SkapiError === SkapiError, m.default === skapi];
        }"""
    )
    assert module == [True, True, True]
    assert alice.errors == []


def test_closing_while_opening_and_callbacks(login: Callable[[str], User]) -> None:
    alice = login("alice")
    group = unique("Race")
    # closeRealtime() while the socket opens settles connectRealtime and the
    # join waiting on it (cookie auth: the socket exists; token auth: the token
    # request is in flight).
    for auth in ("cookie", "token"):
        outcome = alice.evaluate(
            """async ([auth, group]) => {
                const events = [];
                const client = new SkapiRealtime(Object.assign({}, skapi.config, { auth }));
                const opening = client.connectRealtime(e => events.push(e.type));
                const joining = client.joinRealtime({ group });
                // cookie: the socket exists and is still connecting; token: it does not yet.
                for (let i = 0; auth === 'cookie' && !client._socket && i < 100; i++) {
                    await Promise.resolve();
                }
                const phase = client._socket ? client._socket.readyState : 'no socket';
                const closed = await client.closeRealtime();
                const settled = await Promise.race([
                    Promise.allSettled([opening, joining]),
                    new Promise(r => setTimeout(() => r('pending'), 5000)),
                ]);
                return { closed, state: client.state, events, phase,
                         settled: settled === 'pending' ? settled : settled.map(s => s.status) };
            }""",
            [auth, group],
        )
        assert outcome["settled"] == ["rejected", "rejected"], (auth, outcome)
        assert outcome["closed"] is None and outcome["state"] == "closed"
        assert outcome["phase"] == (0 if auth == "cookie" else "no socket")

    # closeRealtime(); connectRealtime(cb2) without awaiting: the close event
    # goes to the first callback only.
    outcome = alice.evaluate(
        """async () => {
            const first = [], second = [];
            const client = new SkapiRealtime(skapi.config);
            await client.connectRealtime(e => first.push(e.type));
            const closing = client.closeRealtime();
            await client.connectRealtime(e => second.push(e.type));
            await closing;
            await new Promise(r => setTimeout(r, 300));
            await client.closeRealtime();
            return { first, second };
        }"""
    )
    assert outcome == {"first": ["success", "close"], "second": ["success", "close"]}

    # connectRealtime(cb2) while connected: cb2 gets what follows, as in skapi-js;
    # a server error answering no pending call reaches the callback.
    outcome = alice.evaluate(
        """async (me) => {
            const first = [], second = [];
            const client = new SkapiRealtime(skapi.config);
            const socket = await client.connectRealtime(e => first.push(e.type));
            const again = await client.connectRealtime(e => second.push([e.type, e.code]));
            await client.postRealtime('to myself', me);
            socket.send('not json');
            await new Promise(r => setTimeout(r, 500));
            await client.closeRealtime();
            return { same: again === socket, first, second };
        }""",
        user_id(alice),
    )
    assert outcome["same"] is True and outcome["first"] == ["success"]
    assert outcome["second"] == [["private", None], ["error", "INVALID_REQUEST"], ["close", None]]

    # A message JSON cannot encode is refused before sending; nothing waits for it.
    outcome = alice.evaluate(
        """async (group) => {
            const client = new SkapiRealtime(skapi.config);
            await client.connectRealtime(() => {});
            await client.joinRealtime({ group });
            const cycle = {}; cycle.self = cycle;
            const answers = [];
            for (const bad of [cycle, { n: 10n }]) {
                try {
                    await client.postRealtime(bad, group);
                    answers.push('sent');
                } catch (err) {
                    answers.push([err instanceof SkapiError, err.code]);
                }
            }
            const pending = Object.keys(client._pending).length;
            const after = await client.postRealtime('still fine', group);
            await client.closeRealtime();
            return { answers, pending, after };
        }""",
        group,
    )
    assert outcome["answers"] == [[True, "INVALID_PARAMETER"], [True, "INVALID_PARAMETER"]]
    assert outcome["pending"] == 0
    assert outcome["after"] == {"type": "success", "message": "Message sent."}
    assert alice.errors == []


# Each code as the socket reports it (4008 takes ten seconds of flooding to get
# for real); a real 4000 from the admin and a real 4001 from a logout follow below.
@pytest.mark.parametrize("code", [4000, 4001, 4008])
def test_final_close_codes_stop_reconnecting(login: Callable[[str], User], code: int) -> None:
    alice = login("alice")
    group = unique("Final")
    alice.evaluate(CLIENT, {"reconnectDelay": 50})
    connect_and_join(alice, group)
    # The server's close, as the socket reports it (a client cannot make the
    # server echo these codes), then the socket really closes.
    alice.evaluate(
        "(code) => { const s = t.client._socket; s.onclose(new CloseEvent('close', {code})); s.close(); }",
        code,
    )
    wait_for(alice, "() => t.events.some(e => e.type === 'error')")
    alice.page.wait_for_timeout(600)  # several backoff steps: nothing follows
    seen = events(alice)
    assert [e["type"] for e in seen] == ["success", "error"]
    error = seen[-1]
    assert error["close_code"] == code
    assert error["code"] == {4000: "CLOSED_BY_SERVER", 4001: "REVOKED", 4008: "FLOODING"}[code]
    assert alice.evaluate("() => [t.client.state, t.client.group]") == ["closed", group]
    # connectRealtime() starts again and rejoins the remembered group.
    alice.evaluate("() => t.client.connectRealtime(t.record)")
    wait_for(alice, "() => t.events.filter(e => e.type === 'success').length === 2")
    sent = settle(alice, "t.client.postRealtime('back', arg)", group)
    assert sent == {"type": "success", "message": "Message sent."}
    wait_for(alice, "() => t.events.some(e => e.type === 'message' && e.sender_rid !== null)")
    alice.evaluate("() => t.client.closeRealtime()")


def test_other_closes_reconnect(login: Callable[[str], User]) -> None:
    alice = login("alice")
    alice.evaluate(CLIENT, {"reconnectDelay": 50})
    alice.evaluate("() => t.client.connectRealtime(t.record)")
    wait_for(alice, "() => t.events.some(e => e.type === 'success')")
    alice.evaluate("() => t.client._socket.close(3000)")
    wait_for(alice, "() => t.events.filter(e => e.type === 'success').length === 2")
    assert [e["type"] for e in events(alice)] == ["success", "reconnect", "success"]
    alice.evaluate("() => t.client.closeRealtime()")


def test_refused_handshake_stops_reconnecting(login: Callable[[str], User]) -> None:
    alice = login("alice")
    # Fill alice's connections up to the server's limit, then lose one socket
    # and take its place: its reconnection is refused (403) while the server
    # answers HTTP, so it stops instead of retrying.
    outcome = alice.evaluate(
        """async () => {
            const extra = [];
            for (let i = 0; i < 20; i++) {
                const c = new SkapiRealtime(skapi.config);
                try { await c.connectRealtime(() => {}); } catch (err) { break; }
                extra.push(c);
            }
            const victim = extra.pop();
            const events = [];
            let filler = null;
            await new Promise(resolve => {
                victim.connectRealtime(e => {
                    events.push(JSON.parse(JSON.stringify(e)));
                    if (e.type === 'reconnect' && filler === null) {
                        filler = new SkapiRealtime(skapi.config);
                        filler.connectRealtime(() => {});
                    }
                    if (e.type === 'error') resolve();
                });
                victim._socket.close(3000);
            });
            await new Promise(r => setTimeout(r, 1500));
            const result = { opened: extra.length + 1, events, state: victim.state };
            for (const c of extra.concat([filler])) await c.closeRealtime();
            return result;
        }"""
    )
    kinds = [e["type"] for e in outcome["events"]]
    assert kinds[0] == "reconnect" and kinds[-1] == "error", outcome
    assert outcome["events"][-1]["code"] == "REFUSED"
    assert outcome["state"] == "closed"


def test_resume_after_giving_up(login: Callable[[str], User]) -> None:
    alice, bob = login("alice"), login("bob")
    group = unique("Resume")
    bob.evaluate(CLIENT)
    connect_and_join(bob, group)
    alice.evaluate(CLIENT, {"reconnectAttempts": 1, "reconnectDelay": 50})
    connect_and_join(alice, group)
    # The server becomes unreachable for this client: it gives up, keeping its group.
    alice.evaluate(
        "() => { t.client._socketUrl = () => Promise.resolve('ws://127.0.0.1:9/'); t.client._socket.close(3000); }"
    )
    wait_for(alice, "() => t.client.state === 'closed'")
    assert alice.evaluate("() => t.client.group") == group
    assert [e["type"] for e in events(alice)][-1] == "error"
    assert (
        settle(alice, "t.client.postRealtime('lost', arg)", group)["rejected"]["code"]
        == "INVALID_REQUEST"
    )
    # Reachable again; the browser says it is online: it reconnects and rejoins.
    alice.evaluate(
        "() => { delete t.client._socketUrl; window.dispatchEvent(new Event('online')); }"
    )
    wait_for(
        alice,
        "() => t.client.state === 'open' && t.events.filter(e => e.type === 'success').length === 2",
    )
    sent = settle(alice, "t.client.postRealtime('resumed', arg)", group)
    assert sent == {"type": "success", "message": "Message sent."}
    wait_for(bob, "() => t.events.some(e => e.type === 'message' && e.message === 'resumed')")
    got = [e for e in events(bob) if e["type"] == "message"][-1]
    assert got["sender_rid"] == group
    # Once more, resumed by the tab becoming visible, as skapi-js does.
    alice.evaluate(
        "() => { t.client._socketUrl = () => Promise.resolve('ws://127.0.0.1:9/'); t.client._socket.close(3000); }"
    )
    wait_for(alice, "() => t.client.state === 'closed'")
    alice.evaluate(
        "() => { delete t.client._socketUrl; document.dispatchEvent(new Event('visibilitychange')); }"
    )
    wait_for(
        alice,
        "() => t.client.state === 'open' && t.events.filter(e => e.type === 'success').length === 3",
    )
    assert alice.evaluate("() => t.client.group") == group
    for user in (alice, bob):
        user.evaluate("() => t.client.closeRealtime()")


def test_keepalive_runs_in_a_worker(login: Callable[[str], User]) -> None:
    alice = login("alice")
    outcome = alice.evaluate(
        """async () => {
            const client = new SkapiRealtime(Object.assign({}, skapi.config, { keepAlive: 100 }));
            const socket = await client.connectRealtime(() => {});
            const send = socket.send.bind(socket);
            let pings = 0;
            socket.send = text => { if (text.includes('keepAlive')) pings++; send(text); };
            await new Promise(r => setTimeout(r, 700));
            const kind = client._keepAlive && client._keepAlive.kind;
            await client.closeRealtime();
            return { kind, pings, after: client._keepAlive };
        }"""
    )
    assert outcome["kind"] == "worker"
    assert outcome["pings"] >= 2
    assert outcome["after"] is None


def test_admin_disconnect_is_final(
    login: Callable[[str], User], server: Server, browser: Browser
) -> None:
    """A real 4000: the admin's disconnect action closes the socket; the client
    says so and does not come back."""
    server._run([sys.executable, "manage.py", "shell", "--no-imports", "-c", MAKE_ROOT])
    alice = login("alice")
    group = unique("Admin")
    alice.evaluate(CLIENT, {"reconnectDelay": 50})
    connect_and_join(alice, group)
    rows = alice.evaluate("(g) => t.client.getRealtimeUsers({group: g})", group)["list"]
    assert len(rows) == 1
    cid = rows[0]["cid"][len("cid:") :]

    context = browser.new_context()
    try:
        with contextlib.suppress(Exception):
            context.grant_permissions(["local-network-access"], origin=server.url)
        admin = context.new_page()
        admin.goto(server.url + "/admin/login/?next=/admin/skapi_channels/connection/")
        admin.fill("#id_username", "root")
        admin.fill("#id_password", PASSWORD)
        admin.click("input[type=submit]")
        admin.check(f'input[name="_selected_action"][value="{cid}"]')
        admin.select_option("select[name=action]", "disconnect")
        admin.click("button[name=index]")
        admin.locator(".messagelist", has_text="Asked 1 connection to close").wait_for()
    finally:
        context.close()

    wait_for(alice, "() => t.events.some(e => e.type === 'error')")
    alice.page.wait_for_timeout(600)  # several backoff steps: nothing follows
    seen = events(alice)
    assert [e["type"] for e in seen] == ["success", "error"]
    assert (seen[-1]["code"], seen[-1]["close_code"]) == ("CLOSED_BY_SERVER", 4000)
    assert alice.evaluate("() => [t.client.state, t.client.group]") == ["closed", group]


CSP_PAGE = """<!doctype html><meta charset="utf-8"><title>CSP</title>
<script src="/static/skapi_channels/skapi-realtime.js"></script>"""


def test_keepalive_falls_back_to_a_timer_under_csp(
    login: Callable[[str], User], server: Server
) -> None:
    alice = login("alice")
    page = alice.context.new_page()
    page.route(
        server.url + "/csp-page/",
        lambda route: route.fulfill(
            status=200,
            content_type="text/html",
            headers={"Content-Security-Policy": "worker-src 'none'"},
            body=CSP_PAGE,
        ),
    )
    page.goto(server.url + "/csp-page/")
    outcome = page.evaluate(
        """async () => {
            const client = new SkapiRealtime({ keepAlive: 100 });
            const socket = await client.connectRealtime(() => {});
            const send = socket.send.bind(socket);
            let pings = 0;
            socket.send = text => { if (text.includes('keepAlive')) pings++; send(text); };
            await new Promise(r => setTimeout(r, 800));
            const kind = client._keepAlive && client._keepAlive.kind;
            await client.closeRealtime();
            return { kind, pings };
        }"""
    )
    assert outcome["kind"] == "timer"
    assert outcome["pings"] >= 2


def test_logging_out_is_final(login: Callable[[str], User]) -> None:
    """A real 4001: logging out closes the user's sockets (revocation), and the
    client says so instead of reconnecting."""
    bob = login("bob")
    group = unique("Revoked")
    bob.evaluate(CLIENT, {"reconnectDelay": 50})
    connect_and_join(bob, group)
    status = bob.evaluate(
        """async () => {
            const csrf = document.cookie.match(/csrftoken=([^;]+)/)[1];
            const response = await fetch('/logout/', {
                method: 'POST', credentials: 'same-origin', headers: { 'X-CSRFToken': csrf },
            });
            return response.status;
        }"""
    )
    assert status in (200, 302)
    wait_for(bob, "() => t.events.some(e => e.type === 'error')")
    bob.page.wait_for_timeout(600)  # several backoff steps: nothing follows
    seen = events(bob)
    assert [e["type"] for e in seen] == ["success", "error"]
    assert (seen[-1]["code"], seen[-1]["close_code"]) == ("REVOKED", 4001)
    assert bob.evaluate("() => t.client.state") == "closed"
