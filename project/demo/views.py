"""The demo chat page; everything realtime happens in the browser through ``skapi``.

The page embeds no list of users: it learns user_ids from the listing endpoints
and the realtime events, and asks ``names`` for the names of those it shows.
"""

from __future__ import annotations

import json

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.views.decorators.csrf import ensure_csrf_cookie
from django.views.decorators.http import require_POST

from skapi_channels.conf import conf
from skapi_channels.history import retention
from skapi_channels.models import OnlineUser

# user_ids one names request may ask about (a page of participants).
MAX_NAMES = 100
# Recent messages a join shows: the page asks ``last`` of at most this many, and
# never more than the server keeps (docs/protocol.md section 11).
RECENT = 20


def recent_on_join() -> int:
    """The ``last`` the page's joins ask: ``RECENT``, or ``HISTORY_SIZE`` when that is
    smaller (the server refuses a larger ``last``); 0 while history is off (the page
    then asks none)."""
    return min(RECENT, retention()[0])


@login_required
@ensure_csrf_cookie  # the client reads the csrftoken cookie for its POSTs
def chat(request: HttpRequest) -> HttpResponse:
    user_id = conf.USER_ID_FUNCTION(request.user)
    me = {"user_id": user_id, "name": request.user.get_username()}
    return render(request, "demo/chat.html", {"me": me, "recent": recent_on_join()})


@require_POST
def names(request: HttpRequest) -> JsonResponse:
    """``{"user_ids": [...]}`` -> ``{"names": {user_id: username}}`` for the users
    among them who are connected now (whom the listings and events can show);
    anyone else is left out."""
    if not request.user.is_authenticated:
        return JsonResponse({"code": "INVALID_REQUEST", "message": "Log in first."}, status=401)
    try:
        body = json.loads(request.body or b"{}")
    except ValueError:
        body = None
    user_ids = body.get("user_ids") if isinstance(body, dict) else None
    if (
        not isinstance(user_ids, list)
        or len(user_ids) > MAX_NAMES
        or not all(isinstance(uid, str) for uid in user_ids)
    ):
        return JsonResponse(
            {
                "code": "INVALID_PARAMETER",
                "message": f'"user_ids" must be a list of at most {MAX_NAMES} strings.',
            },
            status=400,
        )
    online = set(
        OnlineUser.objects.filter(user_id__in=set(user_ids)).values_list("user_id", flat=True)
    )
    lookup = conf.USER_LOOKUP_FUNCTION  # active users only
    found = {}
    for uid in sorted(online):
        user = lookup(uid)
        if user is not None:
            found[uid] = user.get_username()
    return JsonResponse({"names": found})
