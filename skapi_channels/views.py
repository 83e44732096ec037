"""JSON endpoints: group and user listings and handshake tokens (docs/protocol.md §2, 7, 8).

Authentication is the session cookie, which must pass Django's CSRF check, or a
handshake token as ``Authorization: Bearer``, which needs none. Every refusal is
JSON: 400 bad parameters, 401 not logged in, 403 CSRF, 405 not POST, 413 a body
over ``DATA_UPLOAD_MAX_MEMORY_SIZE``, 415 a form instead of JSON.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from django.core.exceptions import RequestDataTooBig, SuspiciousOperation
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.middleware.csrf import CsrfViewMiddleware
from django.views.decorators.csrf import csrf_exempt

from skapi_channels.protocol import loads
from skapi_channels.queries import (
    InvalidParameter,
    list_groups,
    list_users,
    parse_group_query,
    parse_user_query,
)
from skapi_channels.tokens import issue_token, token_user

Handler = Callable[[HttpRequest, Any, dict[str, Any]], HttpResponse]


def json_error(status: int, code: str, message: str) -> JsonResponse:
    return JsonResponse({"code": code, "message": message}, status=status)


class _CsrfCheck(CsrfViewMiddleware):
    def _reject(self, request: HttpRequest, reason: str) -> str:  # type: ignore[override]
        return reason


def csrf_problem(request: HttpRequest) -> str | None:
    """Why the request fails Django's CSRF check, or None when it passes."""
    check = _CsrfCheck(lambda request: HttpResponse())
    check.process_request(request)
    return check.process_view(request, None, (), {})  # type: ignore[arg-type,return-value]


def bearer_token(request: HttpRequest) -> str | None:
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


FORMS = ("multipart/form-data", "application/x-www-form-urlencoded")


def body_refusal(request: HttpRequest) -> HttpResponse | None:
    """A JSON refusal of a body these endpoints cannot read, or None.

    Forms are refused before anything reads them (Django's CSRF check would parse
    them, after which the raw body is gone), and the body is read here once, so
    Django's size limit answers JSON rather than its HTML 400."""
    if request.content_type in FORMS:
        return json_error(
            415, "INVALID_REQUEST", "The body must be JSON (Content-Type: application/json)."
        )
    try:
        request.body  # noqa: B018 (read once, cached by Django)
    except RequestDataTooBig:
        return json_error(413, "INVALID_REQUEST", "The body is too large.")
    except SuspiciousOperation:
        return json_error(400, "INVALID_REQUEST", "The body cannot be read.")
    return None


def endpoint(*, bearer: bool = True) -> Callable[[Handler], Callable[[HttpRequest], HttpResponse]]:
    """POST only, authenticated, JSON-object body; ``bearer`` allows token auth."""

    def decorate(handler: Handler) -> Callable[[HttpRequest], HttpResponse]:
        @csrf_exempt  # checked below, for cookie-authenticated requests only
        @functools.wraps(handler)
        def view(request: HttpRequest) -> HttpResponse:
            if request.method != "POST":
                response = json_error(405, "INVALID_REQUEST", "Only POST is served here.")
                response["Allow"] = "POST"
                return response
            refusal = body_refusal(request)
            if refusal is not None:
                return refusal
            token = bearer_token(request) if bearer else None
            if token is not None:
                user = token_user(token)
                if user is None:
                    return json_error(401, "INVALID_REQUEST", "The token is invalid or expired.")
            else:
                user = request.user
                if not user.is_authenticated:
                    return json_error(401, "INVALID_REQUEST", "Log in to use this endpoint.")
                problem = csrf_problem(request)
                if problem is not None:
                    return json_error(403, "INVALID_REQUEST", f"CSRF check failed: {problem}")
            try:
                body = loads(request.body) if request.body.strip() else {}
            except (ValueError, RecursionError):
                return json_error(400, "INVALID_PARAMETER", "The body must be JSON.")
            if not isinstance(body, dict):
                return json_error(400, "INVALID_PARAMETER", "The body must be a JSON object.")
            try:
                return handler(request, user, body)
            except InvalidParameter as error:
                return json_error(400, "INVALID_PARAMETER", str(error))

        return view

    return decorate


@endpoint()
def groups(request: HttpRequest, user: Any, body: dict[str, Any]) -> HttpResponse:
    return JsonResponse(list_groups(parse_group_query(body)).as_json())


@endpoint()
def users(request: HttpRequest, user: Any, body: dict[str, Any]) -> HttpResponse:
    return JsonResponse(list_users(parse_user_query(body)).as_json())


# A token is renewed only by the session: a stolen token cannot extend itself.
@endpoint(bearer=False)
def token(request: HttpRequest, user: Any, body: dict[str, Any]) -> HttpResponse:
    value, expires = issue_token(user)
    return JsonResponse({"token": value, "expires": expires})
