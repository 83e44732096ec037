"""One run of the benchmark suite (``bench/run.py``) in a process of its own, for
the scripts that compare several runs (``scaleout.py``, ``history.py``)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def run_suite(args: list[str], out: Path) -> dict[str, Any]:
    """Run ``bench/run.py`` with ``args``, writing into ``out``, and answer what it
    wrote to ``latest.json``."""
    subprocess.run(
        [sys.executable, str(ROOT / "bench" / "run.py"), *args, "--out", str(out)],
        cwd=ROOT,
        timeout=900,
        check=False,
        stdout=subprocess.DEVNULL,
    )
    data: dict[str, Any] = json.loads((out / "latest.json").read_text())
    return data
