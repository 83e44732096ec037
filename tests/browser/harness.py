"""The pieces of the browser tests: a restartable daphne and a logged-in page.

The server runs in a subprocess on a file-backed SQLite database of its own, so
it can be stopped and started again on the same port and database.
"""

from __future__ import annotations

from typing import Any

from tests.live_server import PASSWORD, ROOT, USERS, Server, free_port  # noqa: F401

CHROMIUM = "/usr/bin/chromium"
INSTALL_HINT = "apt-get install chromium chromium-driver"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
    # Calls: fake camera and microphone, granted without a prompt; host candidates
    # shown as addresses rather than mDNS names (nothing resolves .local here).
    # Loopback is allowed too, though Chromium still gathers only the machine's
    # interface addresses (see tests/browser/test_calls.py).
    "--use-fake-device-for-media-stream",
    "--use-fake-ui-for-media-stream",
    "--allow-loopback-in-peer-connection",
    "--disable-features=WebRtcHideLocalIpsWithMdns",
]

try:
    from playwright.sync_api import BrowserContext, Page, sync_playwright
except ImportError:  # pragma: no cover - depends on the machine
    sync_playwright = None  # type: ignore[assignment]


class User:
    """One logged-in browser context on the chat page."""

    def __init__(self, name: str, context: BrowserContext, page: Page) -> None:
        self.name = name
        self.context = context
        self.page = page
        self.errors: list[str] = []
        page.on("pageerror", lambda error: self.errors.append(str(error)))

    def evaluate(self, script: str, arg: Any = None) -> Any:
        return self.page.evaluate(script, arg)

    def log_entry(self, selector: str, text: str, timeout: float = 10_000) -> None:
        """Wait until the chat log shows an entry matching ``selector`` and ``text``."""
        self.page.locator(f"#log li{selector}", has_text=text).first.wait_for(timeout=timeout)
