"""Fixtures of the browser tests: headless Chromium (Debian's, driven by
Playwright) and a real daphne. Skipped where Chromium or Playwright is missing.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Callable, Iterator

import pytest

from tests.browser.harness import (
    CHROMIUM,
    CHROMIUM_ARGS,
    INSTALL_HINT,
    PASSWORD,
    Server,
    User,
    sync_playwright,
)

with contextlib.suppress(ImportError):  # no playwright: the tests skip
    from playwright.sync_api import Browser, BrowserContext


def chromium_path() -> str | None:
    return CHROMIUM if os.path.exists(CHROMIUM) else shutil.which("chromium")


def skip_unless_ready() -> None:
    if sync_playwright is None:
        pytest.skip(f"Playwright is not installed: pip install playwright; {INSTALL_HINT}")
    if chromium_path() is None:
        pytest.skip(f"Chromium is not installed at {CHROMIUM}: {INSTALL_HINT}")


@pytest.fixture(scope="package")  # playwright runs a loop in this thread: end it here
def browser() -> Iterator[Browser]:
    skip_unless_ready()
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=chromium_path(),
            args=CHROMIUM_ARGS,
        )
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture(scope="package")  # one daphne for every browser test: its start is slow
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    skip_unless_ready()
    running = Server(tmp_path_factory.mktemp("daphne"))
    running.prepare()
    running.start()
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture
def login(browser: Browser, server: Server) -> Iterator[Callable[[str], User]]:
    """``login("alice")``: a fresh browser context logged in on the chat page."""
    contexts: list[BrowserContext] = []

    def open_chat(name: str) -> User:
        context = browser.new_context(viewport={"width": 1280, "height": 800})
        contexts.append(context)
        # Chromium 156 may refuse loopback WebSockets from a page without it; older
        # ones do not know the permission.
        with contextlib.suppress(Exception):
            context.grant_permissions(["local-network-access"], origin=server.url)
        context.set_default_timeout(10_000)
        page = context.new_page()
        page.goto(server.url + "/login/")
        page.fill("#id_username", name)
        page.fill("#id_password", PASSWORD)
        page.click("button[type=submit]")
        page.wait_for_url(server.url + "/")
        page.wait_for_selector("#status[data-state=open]")
        return User(name, context, page)

    yield open_chat
    for context in contexts:
        context.close()
