"""The admin: read-only presence lists for staff, the actions, the monitoring page."""

from __future__ import annotations

import time
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.test import Client

from skapi_channels.models import Connection, RealtimeGroup
from tests.conftest import in_db
from tests.rows import series, server_with

CHANGELISTS = {
    "group": "/admin/skapi_channels/realtimegroup/",
    "connection": "/admin/skapi_channels/connection/",
    "server": "/admin/skapi_channels/serverprocess/",
}
MONITORING = "/admin/skapi_channels/serverprocess/monitoring/"


def admin_client(**fields: Any) -> Client:
    user = get_user_model().objects.create_user(
        fields.pop("username", "boss"), password="pw-12345678", is_staff=True, **fields
    )
    client = Client()
    client.force_login(user)
    return client


def staff_with(*codenames: str) -> Client:
    user = get_user_model().objects.create_user(
        "-".join(codenames) or "staff", password="pw-12345678", is_staff=True
    )
    user.user_permissions.set(
        Permission.objects.filter(content_type__app_label="skapi_channels", codename__in=codenames)
    )
    client = Client()
    client.force_login(user)
    return client


@pytest.fixture
def rows(db: None) -> None:
    now = time.time()
    server_with(
        "a" * 32,
        [("c1", "1", "lobby"), ("c2", "2", "lobby"), ("c3", "2", "lobby"), ("c4", "3", None)],
        stats={"group_messages": 30, "series": series(now - 20, [0, 10, 20, 30])},
    )
    server_with("b" * 32, [("c5", "3", "kitchen")], age=3600, host="web-2", pid=200)


# Who may see what.


@pytest.mark.parametrize("url", [*CHANGELISTS.values(), MONITORING])
def test_pages_render_for_staff(rows, url):
    response = admin_client(is_superuser=True).get(url)
    assert response.status_code == 200, response
    assert b"monitoring" in response.content.lower()


@pytest.mark.parametrize("url", [*CHANGELISTS.values(), MONITORING])
def test_pages_refuse_anonymous_and_non_staff(db, url):
    assert Client().get(url).status_code == 302  # to the admin login
    user = get_user_model().objects.create_user("visitor", password="pw-12345678")
    client = Client()
    client.force_login(user)
    response = client.get(url)
    assert response.status_code == 302
    assert response["Location"].startswith("/admin/login/")


@pytest.mark.parametrize("url", [*CHANGELISTS.values(), MONITORING])
def test_staff_without_permission_is_refused(db, url):
    assert staff_with().get(url).status_code == 403


def test_view_permission_is_enough_to_look(rows):
    client = staff_with("view_serverprocess", "view_connection", "view_realtimegroup")
    for url in [*CHANGELISTS.values(), MONITORING]:
        assert client.get(url).status_code == 200
    # ... but not to act: the actions need delete_connection / change_realtimegroup.
    assert b"Disconnect the selected" not in client.get(CHANGELISTS["connection"]).content
    assert b"Send a notice" not in client.get(CHANGELISTS["group"]).content


def test_presence_rows_cannot_be_edited(rows):
    client = admin_client(is_superuser=True)
    rows = (("realtimegroup", "lobby"), ("connection", "c1"), ("serverprocess", "a" * 32))
    for model, pk in rows:
        base = f"/admin/skapi_channels/{model}/"
        assert client.get(base + "add/").status_code == 403
        assert client.get(f"{base}{pk}/delete/").status_code == 403
        detail = client.get(f"{base}{pk}/change/")
        assert detail.status_code == 200
        assert b'name="_save"' not in detail.content
        assert client.post(f"{base}{pk}/change/", {}).status_code == 403
    changelist = client.get(CHANGELISTS["connection"]).content
    assert b"delete_selected" not in changelist
    assert Connection.objects.count() == 5


# The lists.


def test_group_list_shows_counts_and_sorts_by_size(rows):
    response = admin_client(is_superuser=True).get(CHANGELISTS["group"])
    groups = [(g.name, g.number_of_users, g.open) for g in response.context["cl"].result_list]
    assert groups == [("lobby", 2, 3), ("kitchen", 1, 1)]
    searched = admin_client(username="other", is_superuser=True).get(
        CHANGELISTS["group"], {"q": "kit"}
    )
    assert [g.name for g in searched.context["cl"].result_list] == ["kitchen"]
    # Sorting by connection count, ascending (column 3).
    third = admin_client(username="third", is_superuser=True)
    by_size = third.get(CHANGELISTS["group"], {"o": "3"})
    assert [g.name for g in by_size.context["cl"].result_list] == ["kitchen", "lobby"]


def test_lists_count_in_the_query_not_per_row(db, db_queries):
    """The changelists run the same statements for 3 rows as for 30."""
    client = admin_client(is_superuser=True)

    def statements(url: str) -> int:
        db_queries.clear()
        assert client.get(url).status_code == 200
        return len(db_queries)

    server_with("s" * 32, [(f"c{i}", str(i), f"g{i}") for i in range(3)])
    before = {url: statements(url) for url in [*CHANGELISTS.values(), MONITORING]}
    server_with("t" * 32, [(f"d{i}", str(i), f"h{i}") for i in range(30)], host="web-2")
    after = {url: statements(url) for url in [*CHANGELISTS.values(), MONITORING]}
    assert after == before


def test_connection_list_filters_by_group_and_server_and_searches_users(rows):
    client = admin_client(is_superuser=True)

    def cids(**params: str) -> list[str]:
        response = client.get(CHANGELISTS["connection"], params)
        assert response.status_code == 200
        return sorted(c.cid for c in response.context["cl"].result_list)

    assert cids(group="lobby") == ["c1", "c2", "c3"]
    assert cids(group="-") == ["c4"]
    assert cids(server__id__exact="b" * 32) == ["c5"]
    assert cids(q="2") == ["c2", "c3"]
    get_user_model().objects.create_user("zed", password="pw-12345678")  # pk 2 after boss
    zed = get_user_model().objects.get(username="zed")
    assert cids(q="ze") == sorted(c.cid for c in Connection.objects.filter(user_id=str(zed.pk)))


def test_server_list_shows_alive_stale_and_connection_counts(rows):
    response = admin_client(is_superuser=True).get(CHANGELISTS["server"])
    shown = {
        (p.host, p.open, response.context["cl"].model_admin.alive(p))
        for p in response.context["cl"].result_list
    }
    assert shown == {("web-1", 4, True), ("web-2", 1, False)}
    stale = admin_client(username="x", is_superuser=True).get(
        CHANGELISTS["server"], {"state": "stale"}
    )
    assert [p.host for p in stale.context["cl"].result_list] == ["web-2"]


# The monitoring page.


def test_monitoring_page_shows_the_numbers_and_charts(rows):
    client = admin_client(is_superuser=True)
    response = client.get(MONITORING)
    html = response.content.decode()
    assert '<span class="number" id="skapi-connections">5</span>' in html
    assert '<span class="number" id="skapi-users">3</span>' in html
    assert '<span class="number" id="skapi-groups">2</span>' in html
    # 30 messages over the last 15 s of the live process's series.
    assert '<span class="number" id="skapi-rate">2.0</span>' in html
    assert "1 stale" in html
    assert html.count('<svg xmlns="http://www.w3.org/2000/svg" class="skapi-chart"') == 2
    assert "<polyline" in html
    # Nothing is loaded from elsewhere: no external script, style or image.
    assert "src=" not in html.split('id="skapi-monitoring"')[1]
    assert "setInterval" in html
    fragment = client.get(MONITORING, {"fragment": "1"})
    assert fragment.status_code == 200
    assert b"<html" not in fragment.content
    assert b'id="skapi-connections">5<' in fragment.content


# The actions, watched by real sockets.


async def test_disconnect_action_closes_the_socket_and_tells_the_group(
    users, connect, presence_is_true
):
    alice, bob = await connect(users.alice), await connect(users.bob)
    await alice.join("room")
    await bob.join("room")
    assert (await alice.receive())["#code"] == "USER_JOINED"
    bob_cid = await in_db(lambda: Connection.objects.get(user_id=str(users.bob.pk)).cid)
    client = await in_db(staff_with, "view_connection", "delete_connection")
    response = await in_db(
        client.post,
        CHANGELISTS["connection"],
        {"action": "disconnect", "_selected_action": [bob_cid], "index": 0},
        follow=True,
    )
    assert response.status_code == 200
    assert "Asked 1 connection to close" in response.content.decode()
    assert await bob.receive_close() == 4000
    await bob.communicator.disconnect(code=4000)  # as the ASGI server answers a close
    notice = await alice.receive()
    assert (notice["#code"], notice["#user_id"], notice["#scid"]) == (
        "USER_DISCONNECTED",
        str(users.bob.pk),
        bob_cid,
    )
    await alice.nothing()
    await in_db(presence_is_true)


async def test_disconnect_action_needs_its_permission(users, connect):
    alice = await connect(users.alice)
    cid = await in_db(lambda: Connection.objects.get().cid)
    client = await in_db(staff_with, "view_connection")
    response = await in_db(
        client.post,
        CHANGELISTS["connection"],
        {"action": "disconnect", "_selected_action": [cid], "index": 0},
    )
    assert response.status_code in (200, 302)
    await alice.nothing()


async def test_notice_action_asks_for_a_sentence_then_sends_it(users, connect):
    alice, bob = await connect(users.alice), await connect(users.bob)
    carol = await connect(users.carol)
    await alice.join("room")
    await bob.join("hall")
    await carol.join("other")
    client = await in_db(staff_with, "view_realtimegroup", "change_realtimegroup")
    form = await in_db(
        client.post,
        CHANGELISTS["group"],
        {"action": "send_notice", "_selected_action": ["room", "hall"], "index": 0},
    )
    assert form.status_code == 200
    assert b'name="sentence"' in form.content
    await alice.nothing()
    sent = await in_db(
        client.post,
        CHANGELISTS["group"],
        {
            "action": "send_notice",
            "_selected_action": ["room", "hall"],
            "apply": "1",
            "sentence": "Maintenance in 5 minutes.",
        },
        follow=True,
    )
    assert "Sent the notice to 2 groups." in sent.content.decode()
    for client_, group in ((alice, "room"), (bob, "hall")):
        assert await client_.receive() == {
            "#notice": "Maintenance in 5 minutes.",
            "#code": "SERVER_NOTICE",
            "#user_id": None,
            "#scid": None,
            "#srid": group,
        }
    await carol.nothing()
    assert await in_db(lambda: RealtimeGroup.objects.count()) == 3


async def test_notice_action_refuses_an_empty_sentence(users, connect):
    alice = await connect(users.alice)
    await alice.join("room")
    client = await in_db(staff_with, "view_realtimegroup", "change_realtimegroup")
    response = await in_db(
        client.post,
        CHANGELISTS["group"],
        {"action": "send_notice", "_selected_action": ["room"], "apply": "1", "sentence": ""},
    )
    assert response.status_code == 200
    assert b"This field is required" in response.content
    await alice.nothing()


# A group's kept history.


async def test_a_group_page_shows_its_kept_messages_to_staff_who_may_view(users, connect):
    from django.test import override_settings

    from skapi_channels import api

    alice = await connect(users.alice)
    await alice.join("kitchen-hist")
    await alice.send({"action": "broadcast", "rid": "kitchen-hist", "content": {"t": "<b>hi</b>"}})
    await api.abroadcast("kitchen-hist", "from the site")
    for _ in range(2):
        await alice.receive()
    pk = await in_db(lambda: RealtimeGroup.objects.get(name="kitchen-hist").pk)
    url = f"{CHANGELISTS['group']}{pk}/change/"
    viewer = await in_db(staff_with, "view_realtimegroup")
    page = (await in_db(viewer.get, url)).content.decode()
    assert "kept messages" in page.lower()
    assert "{&quot;t&quot;:&quot;&lt;b&gt;hi&lt;/b&gt;&quot;}" in page  # escaped
    assert "from the site" in page and "(server)" in page
    assert 'name="_save"' not in page
    nobody = await in_db(staff_with)
    assert (await in_db(nobody.get, url)).status_code == 403
    with override_settings(SKAPI_CHANNELS={"HISTORY_SIZE": 0}):
        off = (await in_db(viewer.get, url)).content.decode()
    assert "History is off" in off
