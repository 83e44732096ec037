"""``{% load skapi_channels %}{% skapi_realtime %}``: the script tag of the JS client.

The script reads its configuration from the tag's ``data-*`` attributes, so the
page needs nothing else to call ``skapi.connectRealtime(...)``. Rendering the tag
also makes sure the response sets Django's CSRF cookie, which the listing calls
send back in ``X-CSRFToken``.
"""

from __future__ import annotations

import json
from typing import Any

from django import template
from django.http import HttpRequest
from django.middleware.csrf import get_token
from django.templatetags.static import static
from django.urls import reverse
from django.utils.html import format_html
from django.utils.safestring import SafeString, mark_safe

from skapi_channels.conf import conf

register = template.Library()


@register.simple_tag(takes_context=True)
def skapi_realtime(context: template.Context, auth: str = "") -> SafeString:
    """Render the client's ``<script>`` tag, with a CSP nonce when there is one.

    ``auth="token"`` makes the socket authenticate with a handshake token from the
    token endpoint instead of the session cookie. A logged-in request's user_id
    becomes ``data-user-id`` (the client's ``skapi.user``), and the
    ``RTC_ICE_SERVERS`` setting ``data-ice-servers`` (JSON) for calls.

    With the request in the context (Django's ``request`` context processor, on in
    new projects), ``get_token`` marks the response to carry the CSRF cookie, as
    ``{% csrf_token %}`` does.
    """
    if auth not in ("", "cookie", "token"):
        raise template.TemplateSyntaxError(
            f'skapi_realtime: auth must be "cookie" or "token", not {auth!r}.'
        )
    html = format_html(
        '<script src="{}" data-socket-path="{}" data-groups-url="{}" '
        'data-users-url="{}" data-token-url="{}"',
        static("skapi_channels/skapi-realtime.js"),
        "/" + conf.WEBSOCKET_PATH,
        reverse("skapi_channels:groups"),
        reverse("skapi_channels:users"),
        reverse("skapi_channels:token"),
    )
    if auth:
        html += format_html(' data-auth="{}"', auth)
    user_id = _user_id(context)
    if user_id is not None:
        html += format_html(' data-user-id="{}"', user_id)
    if conf.RTC_ICE_SERVERS:
        html += format_html(' data-ice-servers="{}"', json.dumps(conf.RTC_ICE_SERVERS))
    request = context.get("request")
    if isinstance(request, HttpRequest):
        get_token(request)
    nonce = _csp_nonce(context)
    if nonce:
        html += format_html(' nonce="{}"', nonce)
    return html + mark_safe("></script>")


def _user_id(context: template.Context) -> str | None:
    """The page user's user_id (the client's ``skapi.user``), when logged in."""
    request = context.get("request")
    user = getattr(request, "user", None)
    if user is None or not getattr(user, "is_authenticated", False):
        return None
    return str(conf.USER_ID_FUNCTION(user))


def _csp_nonce(context: template.Context) -> Any:
    nonce = context.get("csp_nonce")
    if not nonce:
        request = context.get("request")
        nonce = getattr(request, "csp_nonce", None)
    return str(nonce) if nonce else ""
