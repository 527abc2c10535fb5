"""Run folders and a store written by the previous version resume and open with this code.

tests/fixtures/old_version/v21e4f1d.tar.xz was written by commit 21e4f1d, the last commit
before the package redesign (issue 28): `configs/tiny.toml` and `configs/instruct-tiny.toml`
run into one store (the fixture's README says how). Training checkpoints and the trained
models' weights were left out to keep it small: nothing below reads them. What is read:
every stage record and config.json (resume), the model folders the preflight checks, the
top-k stores (calibration), the evaluation files, post-hoc fits and coverage (store stage),
and the DuckDB store itself (report, dashboard).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import duckdb
import pytest

from first_core.config.loading import load_config
from first_core.pipeline.runner import setting_for
from first_core.pipeline.stage_base import Context

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "tests" / "fixtures" / "old_version" / "v21e4f1d.tar.xz"
CONFIGS = {"tiny": ROOT / "configs" / "tiny.toml",
           "instruct-tiny": ROOT / "configs" / "instruct-tiny.toml"}
STORE = "data/first.duckdb"  # where the old runs stored, relative to the fixture's root
N_STAGES = 20


@pytest.fixture
def old(tmp_path: Path) -> Path:
    """A fresh copy of the old version's folder (runs/, data/, the store)."""
    with tarfile.open(FIXTURE) as tar:
        tar.extractall(tmp_path / "old", filter="data")
    return tmp_path / "old"


def cli(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "first_core", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)


def store_rows(path: Path) -> dict[str, list[tuple]]:
    """Every table's rows in a fixed order, `created_at` (a wall-clock time) left out."""
    out = {}
    with duckdb.connect(str(path), read_only=True) as con:
        for table in ("runs", "predictions", "metrics", "temperature_search",
                      "topk_coverage", "examples"):
            cols = [r[0] for r in con.execute(f"DESCRIBE {table}").fetchall()
                    if r[0] != "created_at"]
            out[table] = con.execute(f"SELECT {', '.join(cols)} FROM {table} "
                                     f"ORDER BY ALL").fetchall()
    return out


def test_the_fixture_holds_both_settings() -> None:
    with tarfile.open(FIXTURE) as tar:
        names = set(tar.getnames())
    for name in CONFIGS:
        assert f"./runs/{name}/stages/store.json" in names
        assert f"./runs/{name}/topk/train/manifest.json" in names
    assert f"./{STORE}" in names


def test_old_runs_resume_with_every_stage_skipped_and_the_store_untouched(old: Path) -> None:
    before = store_rows(old / STORE)
    for name, config in CONFIGS.items():
        proc = cli(old, "run", "--config", str(config), "--store", STORE)
        assert proc.returncode == 0, proc.stderr[-2000:]
        skipped = [line for line in proc.stdout.splitlines() if "done earlier, skipped" in line]
        assert len(skipped) == N_STAGES, proc.stdout
        assert "| first_ts |" in proc.stdout  # the summary, read from the old store
    assert store_rows(old / STORE) == before


def test_the_store_stage_rewrites_the_old_rows_from_the_old_files(old: Path) -> None:
    """`--force store` reads every old evaluation file, post-hoc fit, calibration and top-k
    manifest (coverage) with this code: the rows it writes equal the old ones."""
    before = store_rows(old / STORE)
    assert all(before[t] for t in before)
    for config in CONFIGS.values():
        proc = cli(old, "run", "--config", str(config), "--store", STORE, "--force", "store")
        assert proc.returncode == 0, proc.stderr[-2000:]
    assert store_rows(old / STORE) == before


@pytest.mark.parametrize("name", CONFIGS)
def test_the_old_topk_stores_give_the_old_calibration(old: Path, name: str,
                                                      monkeypatch) -> None:
    """This code's top-k reader on the old shards (both layouts): the calibrate stage
    chooses the same c and delta over the same grids, with the same ECEs."""
    monkeypatch.chdir(old)  # the old records name their files relative to it
    cfg = load_config(CONFIGS[name], [f'store="{STORE}"'])
    ctx = Context(cfg, old / "runs" / name)
    old_result = json.loads(ctx.path("calibration.json").read_text(encoding="utf-8"))
    old_record = ctx.record("calibrate")
    ctx.path("calibration.json").unlink()
    record = setting_for(cfg).calibrate(ctx)
    assert json.loads(ctx.path("calibration.json").read_text(encoding="utf-8")) == old_result
    assert record == {k: v for k, v in old_record.items() if k not in ("seconds", "cpu_kernels")}


def test_the_old_store_opens_in_report_and_the_dashboard(old: Path, monkeypatch) -> None:
    for name in CONFIGS:
        proc = cli(old, "report", "--store", STORE, "--pipeline", name)
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert f"**{name}**" in proc.stdout and "| first_ts+ts |" in proc.stdout
    from test_app import open_app

    for page in (None, "pages/reliability.py", "pages/compare.py", "pages/examples.py"):
        at = open_app(monkeypatch, old / STORE, page)
        assert not at.exception
