"""`python -m first_core ...` in a subprocess, and configs/instruct-tiny.toml run once into a
fresh folder: shared by tests/test_instruct.py and the dashboard test (tests/test_app.py)
through the session fixture `tiny_instruct_run` in tests/conftest.py, so it runs once."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
INSTRUCT_TINY = ROOT / "configs" / "instruct-tiny.toml"


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "first_core", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"})


def run_instruct_tiny(work: Path) -> subprocess.CompletedProcess:
    """The tiny instruction pipeline with its runs, data and store all under `work`."""
    return cli("run", "--config", str(INSTRUCT_TINY), "--set", f"runs_dir='{work / 'runs'}'",
               "--set", f"data.dir='{work / 'data' / 'mc'}'",
               "--set", f"instruct.dir='{work / 'data' / 'instruct'}'",
               "--store", str(work / "first.duckdb"), cwd=work)
