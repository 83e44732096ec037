"""A logged-in browser-like HTTP session against a live server (cookies and CSRF)."""

from __future__ import annotations

import http.cookiejar
import urllib.parse
import urllib.request

from tests.live_server import PASSWORD, Server


class Browser:
    def __init__(self, server: Server) -> None:
        self.server = server
        self.jar = http.cookiejar.CookieJar()
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(self.jar))

    def cookie(self, name: str) -> str:
        return next(cookie.value for cookie in self.jar if cookie.name == name)

    def post_form(self, path: str, fields: dict[str, str]) -> int:
        fields = {"csrfmiddlewaretoken": self.cookie("csrftoken"), **fields}
        request = urllib.request.Request(
            self.server.url + path,
            data=urllib.parse.urlencode(fields).encode(),
            headers={"Referer": self.server.url + path, "Origin": self.server.url},
        )
        with self.opener.open(request, timeout=10) as response:
            return int(response.status)

    def log_in(self, username: str, password: str = PASSWORD) -> str:
        """Log in through the login form; returns the session key."""
        self.opener.open(self.server.url + "/login/", timeout=10).read()
        self.post_form("/login/", {"username": username, "password": password})
        return self.cookie("sessionid")

    def log_out(self) -> None:
        self.post_form("/logout/", {})
