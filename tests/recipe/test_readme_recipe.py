"""The README's "Adding it to your project", followed from the README's own text.

A fresh ``django-admin startproject mysite`` gets the app from a wheel built from
this checkout, the README's fenced blocks marked ``<!-- recipe: ... -->`` applied
as they are written, and the README's commands run; then daphne serves it and two
users in headless Chromium log in, join, post, receive and list groups. When the
README changes, this test follows it, so the two cannot drift apart.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from tests.browser.harness import CHROMIUM, CHROMIUM_ARGS, INSTALL_HINT, sync_playwright
from tests.live_server import free_port

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
PASSWORD = "recipe-pass-1234"
USERS = ("alice", "bob")

pytestmark = [pytest.mark.recipe, pytest.mark.timeout(240)]

BLOCK = re.compile(
    r"<!-- recipe: (?P<target>\S+)(?: (?P<mode>append|write))? -->\n"
    r"```[\w-]*\n(?P<body>.*?)\n```",
    re.DOTALL,
)


def recipe_blocks() -> list[tuple[str, str | None, str]]:
    section = README.read_text()
    start = section.index("## Adding it to your project")
    end = section.index("\n## ", start + 1)
    found = [
        (m["target"], m["mode"], m["body"] + "\n") for m in BLOCK.finditer(section[start:end])
    ]
    assert found, "the README's recipe has no marked blocks"
    return found


def run(command: list[str], cwd: Path, env: dict[str, str], timeout: float = 120) -> str:
    done = subprocess.run(
        command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    assert done.returncode == 0, f"{command} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def install_wheel(workdir: Path, env: dict[str, str]) -> Path:
    """Build a wheel from this checkout and install it into a folder of its own (so
    the test sees only what the wheel holds), without touching the virtualenv."""
    source = workdir / "src"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    shutil.copytree(
        ROOT / "skapi_channels",
        source / "skapi_channels",
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", "dist", str(source)],
        workdir, env)
    [wheel] = (workdir / "dist").glob("skapi_channels-*.whl")
    run([*pip, "install", "--no-deps", "--no-index", "--target", "site", str(wheel)],
        workdir, env)
    return workdir / "site"


def commands_of(blocks: list[tuple[str, str | None, str]]) -> list[str]:
    [body] = [body for target, _, body in blocks if target == "commands"]
    return [line.strip() for line in body.splitlines() if line.strip()]


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Any:
    if sync_playwright is None or not os.path.exists(CHROMIUM):
        pytest.skip(f"needs Playwright and Chromium ({INSTALL_HINT})")
    workdir = tmp_path_factory.mktemp("recipe")
    env = {key: value for key, value in os.environ.items() if not key.startswith("DJANGO_")}
    env.pop("DATABASE_URL", None)
    env.pop("REDIS_URL", None)
    env["PYTHONUNBUFFERED"] = "1"

    readme = README.read_text()
    assert "pip wheel --no-deps -w dist" in readme  # the install the wheel build mirrors
    env["PYTHONPATH"] = str(install_wheel(workdir, env))

    project = workdir / "project"
    project.mkdir()
    run([sys.executable, "-m", "django", "startproject", "mysite", str(project)], workdir, env)
    blocks = recipe_blocks()
    for target, mode, body in blocks:
        if target == "commands":
            continue
        path = project / target
        path.parent.mkdir(parents=True, exist_ok=True)
        if mode == "append":
            assert path.exists(), f"the recipe appends to {target}, which startproject did not make"
            with open(path, "a") as file:
                file.write("\n" + body)
        else:
            path.write_text(body)

    where = run([sys.executable, "-c", "import skapi_channels; print(skapi_channels.__file__)"],
                project, env)
    assert where.startswith(env["PYTHONPATH"]), f"skapi_channels imported from {where}"
    # The recipe leaves nothing for manage.py check to warn about.
    run([sys.executable, "manage.py", "check", "--fail-level", "WARNING"], project, env)

    port = free_port()
    server: subprocess.Popen[bytes] | None = None
    log_path = workdir / "daphne.log"
    for line in commands_of(blocks):
        words = line.split()
        if words[:3] == ["python", "manage.py", "createsuperuser"]:
            for name in USERS:  # the same command, without its prompts
                run([sys.executable, *words[1:], "--noinput", "--username", name,
                     "--email", f"{name}@example.com"],
                    project, {**env, "DJANGO_SUPERUSER_PASSWORD": PASSWORD})
        elif words[:2] == ["python", "manage.py"]:
            run([sys.executable, *words[1:]], project, env)
        elif words[0] == "daphne":
            assert server is None
            with open(log_path, "wb") as log:
                server = subprocess.Popen(
                    [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port),
                     *words[1:]],
                    cwd=project, env=env, stdout=log, stderr=subprocess.STDOUT,
                )
        else:
            raise AssertionError(f"the test does not know how to run {line!r}")
    assert server is not None, "the recipe's commands start no server"
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_serving(url + "/accounts/login/", server, log_path)
        yield SimpleNamespace(url=url, project=project, env=env)
    finally:
        server.terminate()
        try:
            server.wait(15)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(15)


def wait_until_serving(url: str, server: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert server.poll() is None, f"daphne exited:\n{log.read_text(errors='replace')}"
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.2)  # polling for the port to open
    raise AssertionError(f"daphne did not answer:\n{log.read_text(errors='replace')}")


def test_a_fresh_project_set_up_from_the_readme_chats(site: Any) -> None:
    url = site.url
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            pages = {}
            errors: list[str] = []
            for name in USERS:
                context = browser.new_context()
                with contextlib.suppress(Exception):  # Chromium 156+: loopback sockets
                    context.grant_permissions(["local-network-access"], origin=url)
                context.set_default_timeout(15_000)
                page = context.new_page()
                page.on("pageerror", lambda error: errors.append(str(error)))
                page.goto(url + "/chat/")  # login_required: to the login page and back
                page.fill("#id_username", name)
                page.fill("#id_password", PASSWORD)
                page.click("button")
                page.wait_for_url(url + "/chat/")
                page.locator("#status", has_text="in HelloWorld").wait_for()
                pages[name] = page
            alice, bob = pages["alice"], pages["bob"]

            alice.fill("input[name=msg]", "hello from alice")
            alice.press("input[name=msg]", "Enter")
            bob.locator("#log li", has_text="hello from alice").wait_for()
            alice.locator("#log li", has_text="hello from alice").wait_for()  # own copy
            assert alice.input_value("input[name=msg]") == ""  # posted, then reset
            alice.locator("#log li", has_text="has joined the message group.").wait_for()

            # The login page set a CSRF cookie; without it, the chat page's own tag
            # must set one, or the listing calls fail ("CSRF cookie not set").
            alice.context.clear_cookies(name="csrftoken")
            alice.reload()
            alice.locator("#status", has_text="in HelloWorld").wait_for()
            groups = alice.evaluate("skapi.getRealtimeGroups()")
            assert groups["list"] == [{"group": "HelloWorld", "number_of_users": 2}]
            users = bob.evaluate("skapi.getRealtimeUsers({group: 'HelloWorld'})")
            assert len(users["list"]) == 2
            assert errors == []
        finally:
            browser.close()


PROJECT_TEST = """
async def test_a_room(realtime):
    alice, bob = await realtime.connect_users("alice", "bob")
    await alice.join("lobby")
    await bob.join("lobby")
    await alice.post("hi", "lobby")
    await bob.expect_message("hi", sender=alice.user_id)
    assert await realtime.list_users("lobby") == sorted([alice.user_id, bob.user_id])
"""


def test_the_installed_package_gives_the_project_its_pytest_fixture(site: Any) -> None:
    """The wheel's pytest11 entry point: the project's own tests get ``realtime``
    with no configuration beyond docs/testing.md's (a file-backed test database)."""
    tests = site.project / "realtime_tests"
    tests.mkdir()
    (tests / "settings.py").write_text(
        "from mysite.settings import *  # noqa\n"
        "DATABASES['default']['TEST'] = {'NAME': str(BASE_DIR / 'test-db.sqlite3')}\n"
    )
    (tests / "test_room.py").write_text(PROJECT_TEST)
    (tests / "__init__.py").write_text("")
    output = run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
         "--ds", "realtime_tests.settings", "-o", "asyncio_mode=auto",
         "-o", "asyncio_default_fixture_loop_scope=function", "realtime_tests"],
        site.project, {**site.env, "PYTEST_ADDOPTS": ""},
    )
    assert "1 passed" in output, output
