"""The demo chat page; everything realtime happens in the browser through ``skapi``."""

from __future__ import annotations

from django.contrib.auth import get_user_model
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.views.decorators.csrf import ensure_csrf_cookie

from skapi_channels.conf import conf

# A demo has a handful of users; the page shows names instead of bare ids.
MAX_NAMED_USERS = 200


@login_required
@ensure_csrf_cookie  # the client reads the csrftoken cookie for its POSTs
def chat(request: HttpRequest) -> HttpResponse:
    user_id = conf.USER_ID_FUNCTION
    users = get_user_model().objects.order_by("pk")[:MAX_NAMED_USERS]
    names = {user_id(user): user.get_username() for user in users}
    return render(
        request,
        "demo/chat.html",
        {"me": {"user_id": user_id(request.user), "name": request.user.get_username()}, "names": names},
    )
