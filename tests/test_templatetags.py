"""The ``{% skapi_realtime %}`` tag renders one exact script tag."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from django.template import Context, Template, TemplateSyntaxError
from django.test import override_settings

SCRIPT = (
    '<script src="/static/skapi_channels/skapi-realtime.js" '
    'data-socket-path="/ws/realtime/" data-groups-url="/realtime/groups/" '
    'data-users-url="/realtime/users/" data-token-url="/realtime/token/"'
)


def render(source: str, **context: Any) -> str:
    return Template("{% load skapi_channels %}" + source).render(Context(context))


def test_renders_script_tag() -> None:
    assert render("{% skapi_realtime %}") == SCRIPT + "></script>"


def test_nonce_from_context() -> None:
    html = render("{% skapi_realtime %}", csp_nonce="abc123")
    assert html == SCRIPT + ' nonce="abc123"></script>'


def test_nonce_from_request() -> None:
    request = SimpleNamespace(csp_nonce="r4nd0m")
    html = render("{% skapi_realtime %}", request=request)
    assert html == SCRIPT + ' nonce="r4nd0m"></script>'


def test_nonce_is_escaped() -> None:
    html = render("{% skapi_realtime %}", csp_nonce='"><script>')
    assert html == SCRIPT + ' nonce="&quot;&gt;&lt;script&gt;"></script>'


def test_token_auth() -> None:
    html = render('{% skapi_realtime auth="token" %}')
    assert html == SCRIPT + ' data-auth="token"></script>'


def test_bad_auth_is_refused() -> None:
    with pytest.raises(TemplateSyntaxError, match="auth must be"):
        render('{% skapi_realtime auth="basic" %}')


@override_settings(SKAPI_CHANNELS={"WEBSOCKET_PATH": "/sockets/skapi"}, STATIC_URL="/assets/")
def test_follows_settings() -> None:
    html = render("{% skapi_realtime %}")
    assert html.startswith('<script src="/assets/skapi_channels/skapi-realtime.js" ')
    assert 'data-socket-path="/sockets/skapi/"' in html


def test_user_id_of_a_logged_in_request() -> None:
    user = SimpleNamespace(pk=42, is_authenticated=True)
    html = render("{% skapi_realtime %}", request=SimpleNamespace(user=user))
    assert html == SCRIPT + ' data-user-id="42"></script>'


def test_no_user_id_for_an_anonymous_request() -> None:
    user = SimpleNamespace(pk=None, is_authenticated=False)
    html = render("{% skapi_realtime %}", request=SimpleNamespace(user=user))
    assert html == SCRIPT + "></script>"


@pytest.mark.parametrize("source,cookie", [("{% skapi_realtime %}", True), ("<p>hi</p>", False)])
def test_the_tag_makes_sure_of_the_csrf_cookie(rf: Any, source: str, cookie: bool) -> None:
    """A page with the tag sets the cookie the listing calls send back as X-CSRFToken."""
    from django.conf import settings
    from django.http import HttpResponse
    from django.middleware.csrf import CsrfViewMiddleware

    def view(request: Any) -> HttpResponse:
        return HttpResponse(render(source, request=request))

    response = CsrfViewMiddleware(view)(rf.get("/"))
    assert (settings.CSRF_COOKIE_NAME in response.cookies) is cookie


@override_settings(
    SKAPI_CHANNELS={"RTC_ICE_SERVERS": [{"urls": "stun:stun.example.com:3478"}]}
)
def test_ice_servers() -> None:
    html = render("{% skapi_realtime %}")
    assert html == (
        SCRIPT + ' data-ice-servers="[{&quot;urls&quot;: &quot;stun:stun.example.com:3478&quot;}]">'
        "</script>"
    )
