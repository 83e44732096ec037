"""The benchmark suite runs: ``bench/run.py --quick --scenario fanout`` with a tiny N.

Not a timed assertion: it proves that the servers start, the load generator talks
to each of them and the table, JSON and chart are written, with nothing lost.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = [pytest.mark.bench, pytest.mark.timeout(300)]


def test_quick_fanout_run_writes_the_results(tmp_path: Path) -> None:
    done = subprocess.run(
        [
            sys.executable,
            "bench/run.py",
            "--quick",
            "--scenario",
            "fanout",
            "--n",
            "5",
            "--out",
            str(tmp_path),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=280,
        env={**os.environ, "SKAPI_BENCH_WORK": str(tmp_path / "work")},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "deliveries/s" in done.stdout
    data = json.loads((tmp_path / "latest.json").read_text())
    for target in ("app/embedded/daphne", "bare/inmemory/daphne", "websockets"):
        (row,) = data["results"][target]["fanout"]
        assert row["n"] == 5
        assert row["deliveries"] == 5 * row["messages"], row
        assert row["lost"] == 0
    assert (tmp_path / "latest.png").stat().st_size > 0
    assert "Fan-out" in (tmp_path / "README.md").read_text()


def test_quick_storm_run_connects_everyone_with_presence_exact(tmp_path: Path) -> None:
    done = subprocess.run(
        [
            sys.executable,
            "bench/run.py",
            "--quick",
            "--scenario",
            "storm",
            "--target",
            "app/embedded/daphne",
            "--out",
            str(tmp_path),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=280,
        env={**os.environ, "SKAPI_BENCH_WORK": str(tmp_path / "work")},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    storm = json.loads((tmp_path / "latest.json").read_text())["results"]["app/embedded/daphne"][
        "storm"
    ]
    assert storm["joined"] == storm["clients"] == 200, storm
    assert storm["presence_check"]["ok"] and storm["presence_check"]["all_connected"], storm
    (figures,) = storm["batches"]
    assert figures["presence_batched_requests"] > 0, figures  # published with a heartbeat
    assert "Reconnect storm" in (tmp_path / "README.md").read_text()
