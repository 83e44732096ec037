"""WebRTC calls between two users' pages in Chromium (protocol section 12): the
signalling goes through the real daphne, media and data peer to peer on this
machine.

Where the peer traffic goes: Chromium 156 gathers no 127.0.0.1 host candidate,
whatever was tried (``--allow-loopback-in-peer-connection``, with
``--force-webrtc-ip-handling-policy=default``, with
``--enable-features=WebRtcAllowLoopback``); it gathers the addresses of the
machine's interfaces. Traffic between two addresses of one machine never leaves
it: Linux routes it over the loopback device (``ip route get <own address>``
answers ``local ... dev lo``). The call test asserts that both ends of the
selected candidate pair are addresses of this machine, so the call cannot have
gone through the network. mDNS candidate names are turned off
(``WebRtcHideLocalIpsWithMdns``): nothing here resolves ``.local`` names."""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import Any

import pytest

from tests.browser.harness import User
from tests.browser.test_chat import unique, user_id

pytestmark = [pytest.mark.browser, pytest.mark.timeout(120)]

# `window.c`: a fresh Skapi in the group, recording realtime and call events.
SETUP = """
async (group) => {
    const log = [];
    const note = (kind, e) => log.push({
        kind, type: e.type, state: e.state === undefined ? null : e.state,
        data: typeof e.data === 'string' ? e.data : null,
        sender: e.sender === undefined ? null : e.sender,
        sender_cid: e.sender_cid === undefined ? null : e.sender_cid,
        candidate: typeof e.candidate === 'string' ? e.candidate : null,
    });
    const client = new Skapi('service', 'owner');
    window.c = { client, log, incoming: null, call: null, connection: null,
                 rtc: e => note('rtc', e) };
    await client.connectRealtime(e => {
        note('realtime', e);
        if (e.type === 'rtc:incoming') window.c.incoming = e;
    });
    await client.joinRealtime({ group });
    return true;
}
"""


# The addresses of the candidate pair the call's transport selected.
SELECTED_PAIR = """
async () => {
    const stats = await c.connection.target.getStats();
    let local = null, remote = null;
    stats.forEach(report => {
        if (report.type === 'transport' && report.selectedCandidatePairId) {
            const pair = stats.get(report.selectedCandidatePairId);
            local = stats.get(pair.localCandidateId).address;
            remote = stats.get(pair.remoteCandidateId).address;
        }
    });
    return { local, remote };
}
"""


def is_local_address(address: str) -> bool:
    """Whether ``address`` belongs to this machine: only then can a socket bind it."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as probe:
        try:
            probe.bind((address, 0))
        except OSError:
            return False
    return True


def log(user: User) -> list[dict[str, Any]]:
    return user.evaluate("() => c.log")  # type: ignore[no-any-return]


def wait_log(user: User, predicate: str, timeout: float = 20_000) -> None:
    user.page.wait_for_function(f"() => c.log.some(e => {predicate})", timeout=timeout)


def cid_in(user: User, group: str, of: User) -> str:
    users = user.evaluate("(g) => c.client.getRealtimeUsers({group: g})", group)
    cids = [row["cid"] for row in users["list"] if row["user_id"] == user_id(of)]
    assert len(cids) == 1, users
    return str(cids[0])


def call_setup(login: Callable[[str], User]) -> tuple[User, User, str]:
    alice, bob = login("alice"), login("bob")
    group = unique("Call")
    for user in (alice, bob):
        user.evaluate(SETUP, group)
    return alice, bob, cid_in(alice, group, bob)


def test_call_with_a_data_channel(login: Callable[[str], User]) -> None:
    alice, bob, bob_cid = call_setup(login)
    alice.evaluate(
        "async (cid) => { c.call = await c.client.connectRTC({cid, channels: ['text-chat']}, c.rtc);"
        " c.call.connection.then(r => { c.connection = r; }); }",
        bob_cid,
    )
    wait_log(bob, "e.type === 'rtc:incoming'")
    incoming = bob.evaluate(
        "() => ({sender: c.incoming.sender, cid: c.incoming.sender_cid,"
        " answer: typeof c.incoming.connectRTC, decline: typeof c.incoming.hangup,"
        " hasMessage: 'message' in c.incoming})"
    )
    assert incoming["sender"] == user_id(alice) and incoming["cid"].startswith("cid:")
    assert (incoming["answer"], incoming["decline"], incoming["hasMessage"]) == (
        "function",
        "function",
        False,
    )
    answered = bob.evaluate(
        "async () => { c.connection = await c.incoming.connectRTC({}, c.rtc);"
        " return Object.keys(c.connection).sort(); }"
    )
    assert answered == ["channels", "hangup", "media", "target"]
    # Answering resolves the caller's `connection`.
    alice.page.wait_for_function("() => c.connection !== null", timeout=20_000)
    assert alice.evaluate(
        "() => [c.connection.target instanceof RTCPeerConnection, Object.keys(c.connection.channels)]"
    ) == [True, ["text-chat"]]

    # The data channel opens on both sides, peer to peer between two addresses
    # of this machine (the kernel carries that traffic on the loopback device).
    for user in (alice, bob):
        wait_log(user, "e.kind === 'rtc' && e.type === 'open'")
    pair = alice.evaluate(SELECTED_PAIR)
    assert pair["local"] and pair["remote"], pair
    for address in (pair["local"], pair["remote"]):
        assert is_local_address(address), pair
    alice.evaluate("() => c.connection.channels['text-chat'].send('hello bob')")
    wait_log(bob, "e.type === 'message' && e.data === 'hello bob'")
    bob.evaluate("() => c.connection.channels['text-chat'].send('hello alice')")
    wait_log(alice, "e.type === 'message' && e.data === 'hello alice'")

    # Hanging up closes both sides; each is told with rtc:closed.
    alice.evaluate("() => c.connection.hangup()")
    for user in (alice, bob):
        wait_log(user, "e.type === 'rtc:closed'")
        assert user.evaluate("() => c.connection.target.connectionState") == "closed"
    closed = [e for e in log(bob) if e["type"] == "rtc:closed"]
    assert len(closed) == 1 and closed[0]["sender"] == user_id(alice)
    alice.page.wait_for_timeout(300)
    assert len([e for e in log(alice) if e["type"] == "rtc:closed"]) == 1
    assert alice.errors == [] and bob.errors == []


def test_declining_a_call(login: Callable[[str], User]) -> None:
    alice, bob, bob_cid = call_setup(login)
    alice.evaluate(
        "async (cid) => { c.call = await c.client.connectRTC({cid}, c.rtc);"
        " c.call.connection.then(r => { c.connection = r || 'null'; }); }",
        bob_cid,
    )
    wait_log(bob, "e.type === 'rtc:incoming'")
    bob.evaluate("() => c.incoming.hangup()")
    wait_log(alice, "e.type === 'rtc:closed'")
    wait_log(
        alice, "e.kind === 'rtc' && e.type === 'connectionstatechange' && e.state === 'closed'"
    )
    # As in skapi-js, a declined call's `connection` never resolves.
    alice.page.wait_for_timeout(300)
    assert alice.evaluate("() => c.connection") is None
    # Answering after declining does nothing.
    assert bob.evaluate("() => c.incoming.connectRTC({}, c.rtc)") is None
    # The caller hanging up before an answer ends the ringing at the callee.
    alice.evaluate("async (cid) => { c.call = await c.client.connectRTC({cid}, c.rtc); }", bob_cid)
    bob.page.wait_for_function("() => c.log.filter(e => e.type === 'rtc:incoming').length === 2")
    alice.evaluate("() => c.call.hangup()")
    bob.page.wait_for_function("() => c.log.filter(e => e.type === 'rtc:closed').length === 2")
    assert alice.errors == [] and bob.errors == []


def test_calling_a_closed_connection_rejects(login: Callable[[str], User]) -> None:
    alice, bob, bob_cid = call_setup(login)
    bob.evaluate("() => c.client.closeRealtime()")
    outcome = alice.evaluate(
        """async (cid) => {
            const answers = [];
            for (const params of [{cid}, {cid: 'no-prefix'}, {cid: 'cid:nobody'}]) {
                try {
                    await c.client.connectRTC(params, c.rtc);
                    answers.push('connected');
                } catch (err) {
                    answers.push([err instanceof SkapiError, err.code, err.message]);
                }
            }
            return answers;
        }""",
        bob_cid,
    )
    assert outcome == [
        [True, "INVALID_REQUEST", f"Connection '{bob_cid}' is not open."],
        [True, "INVALID_PARAMETER", '"cid" should be a valid connection id.'],
        [True, "INVALID_REQUEST", "Connection 'cid:nobody' is not open."],
    ]
    # A call that never rang ends without an rtc:closed or a closing state.
    ends = [e for e in log(alice) if e["type"] in ("rtc:closed", "connectionstatechange")]
    assert ends == []
    assert alice.errors == []


def test_demo_call_button_runs_the_documented_sample(login: Callable[[str], User]) -> None:
    from tests.browser.test_chat import join_with_form, person

    alice, bob = login("alice"), login("bob")
    group = unique("VideoCall")
    join_with_form(alice, group)
    join_with_form(bob, group)
    person(alice, user_id(bob)).wait_for()
    person(alice, user_id(bob)).get_by_role("button", name="Call").click()
    alice.page.locator("#call_dialog", has_text="Outgoing call").wait_for()
    bob.page.locator("#call_dialog", has_text="Incoming call").wait_for()
    bob.log_entry(".system", "alice is calling you.")
    bob.page.locator("#call_dialog").get_by_role("button", name="Accept").click()
    # Video both ways, from Chromium's fake camera.
    for user in (alice, bob):
        user.page.wait_for_function(
            "() => { const v = document.getElementById('remoteVideo');"
            " return !v.hidden && v.srcObject && v.srcObject.getVideoTracks().length === 1; }",
            timeout=20_000,
        )
        user.page.wait_for_function(
            "() => document.getElementById('localVideo').srcObject !== null", timeout=20_000
        )
    bob.page.click("#hangup")
    for user in (alice, bob):
        user.log_entry(".system", "The call ended.")
        user.page.wait_for_function("() => document.getElementById('remoteVideo').hidden")
    # The sample calls play() on each track event (audio, then video): the second
    # interrupts the first, whose promise the sample leaves unhandled.
    for user in (alice, bob):
        assert [e for e in user.errors if "play() request was interrupted" not in e] == []
