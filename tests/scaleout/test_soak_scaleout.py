"""The soak (tests/soak/soak.py) in short forms on two daphne processes sharing
PostgreSQL and Redis: nothing lost, duplicated or reordered, presence equal to a
fresh count; and across a Redis restart, every lost delivery told."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.scaleout.conftest import services

SOAK = Path(__file__).resolve().parents[1] / "soak" / "soak.py"

pytestmark = [pytest.mark.scaleout, pytest.mark.timeout(300)]


def soak(*args: str, verdict: bool = True) -> dict[str, Any]:
    """Run the soak and return its figures; with ``verdict``, it must also pass by
    its own rules (nothing lost at all)."""
    database_url, redis_url = services()
    env = {**os.environ, "DATABASE_URL": database_url, "REDIS_URL": redis_url}
    result = subprocess.run(
        [sys.executable, str(SOAK), "--processes", "2", *args],
        capture_output=True,
        text=True,
        timeout=280,
        env=env,
    )
    output = result.stdout
    if verdict or "{" not in output:
        assert result.returncode == 0, output[-4000:] + result.stderr[-4000:]
    figures: dict[str, Any] = json.loads(output[output.index("{") : output.rindex("}") + 1])
    print(json.dumps(figures))
    return figures


def test_a_short_soak_on_two_processes_loses_nothing() -> None:
    figures = soak("--seconds", "15", "--connections", "60", "--seed", "3")
    assert figures["processes"] == 2 and figures["backend"] == "postgresql+redis"
    assert figures["acked"] > 0
    assert figures["lost"] == figures["duplicates"] == figures["out_of_order"] == 0
    assert figures["missing_before_told"] == 0
    assert figures["presence_problems"] == []


def test_a_redis_restart_in_a_soak_tells_every_lost_delivery() -> None:
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed, so no private Redis can be restarted")
    figures = soak(
        "--seconds", "25", "--connections", "60", "--seed", "4", "--restart-redis-at", "8",
        verdict=False,
    )
    assert figures["duplicates"] == figures["out_of_order"] == figures["unsent"] == 0
    assert figures["errors"] == 0 and figures["presence_problems"] == []
    # The restart's gap was told, every missing delivery of it (docs/protocol.md §10).
    assert figures["missing_before_told"] > 0 and figures["missed_notified"] > 0, figures
    assert figures["lost"] == 0, figures
