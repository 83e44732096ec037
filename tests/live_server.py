"""A real daphne process on the embedded default, for tests that need the server's
own sockets: restartable on the same port and SQLite database."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
PASSWORD = "browser-pass-1234"
USERS = ("alice", "bob")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Server:
    """``python -m daphne`` on a fixed port and database, restartable."""

    def __init__(
        self,
        workdir: Path,
        settings: dict[str, Any] | None = None,
        application: str = "project.asgi:application",
    ) -> None:
        self.workdir = workdir
        self.application = application
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "project.settings",
            "SQLITE_PATH": str(workdir / "db.sqlite3"),
            "DJANGO_ALLOWED_HOSTS": "127.0.0.1,localhost",
            "DJANGO_DEBUG": "1",
            "PYTHONUNBUFFERED": "1",
            "SKAPI_CHANNELS_JSON": json.dumps(settings or {}),
        }
        self.env.pop("DATABASE_URL", None)
        self.env.pop("REDIS_URL", None)
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def prepare(self) -> None:
        """Migrate the database and create the test users."""
        self._run([sys.executable, "manage.py", "migrate", "--verbosity", "0"])
        script = (
            "from django.contrib.auth import get_user_model\n"
            f"for name in {USERS!r}:\n"
            f"    get_user_model().objects.create_user(name, password={PASSWORD!r})\n"
        )
        self._run([sys.executable, "manage.py", "shell", "--no-imports", "-c", script])

    def _run(self, command: list[str]) -> None:
        done = subprocess.run(
            command, cwd=ROOT, env=self.env, capture_output=True, timeout=120, check=False
        )
        if done.returncode:
            raise RuntimeError(f"{command} failed:\n{done.stdout.decode()}\n{done.stderr.decode()}")

    @property
    def log_path(self) -> Path:
        return self.workdir / f"daphne-{self.starts}.log"

    def start(self, timeout: float = 30) -> None:
        assert self.process is None, "already running"
        self.starts += 1
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(self.port),
                 self.application],
                cwd=ROOT,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"daphne exited ({self.process.returncode}):\n{self.log()}")
            try:
                with urllib.request.urlopen(self.url + "/login/", timeout=2) as response:
                    if response.status == 200:
                        return
            except OSError:
                time.sleep(0.1)  # polling for the port to open
        self.stop()
        raise RuntimeError(f"daphne did not answer within {timeout} s:\n{self.log()}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15) -> None:
        process, self.process = self.process, None
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(sig)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout)

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-4000:]
        except OSError:
            return ""


def wait_for_port(
    port: int, timeout: float, process: subprocess.Popen[bytes] | None = None
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"process exited with {process.returncode} before listening")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on port {port} after {timeout} s")


class RedisServer:
    """A private redis-server on a free port, which a test may restart."""

    def __init__(self, directory: Path) -> None:
        self.port = free_port()
        self.directory = directory
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                "redis-server",
                "--bind",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.directory),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for_port(self.port, 10, self.process)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)
        self.process = None
