"""The whole pipeline on configs/tiny.toml, through the real CLI, checked in the store."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import duckdb
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
METHODS = {"teacher_ft", "student_ft", "student_distill", "first_ls", "first_ts"}


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "first_core", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=600,
                          env={**__import__("os").environ, "PYTHONPATH": str(ROOT),
                               "OMP_NUM_THREADS": "1"})


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess]:
    work = tmp_path_factory.mktemp("tiny")
    proc = cli("run", "--config", str(ROOT / "configs" / "tiny.toml"),
               "--set", f"runs_dir='{work / 'runs'}'", "--set", f"data.dir='{work / 'data'}'",
               "--store", str(work / "first.duckdb"), cwd=work)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return work, proc


def test_store_holds_every_method_split_and_table(tiny_run) -> None:
    work, proc = tiny_run
    con = duckdb.connect(str(work / "first.duckdb"), read_only=True)
    runs = con.execute("select run_id, method, seed, config from runs").df()
    assert set(runs.method) == METHODS
    assert all(json.loads(c)["name"] == "tiny" for c in runs.config)
    counts = con.execute("select method, split, count(*) n from predictions join runs "
                         "using (run_id) group by all").df()
    assert set(counts.split) == {"val", "test", "test_ood"}
    assert len(counts) == 15 and (counts.n == 80).all()
    preds = con.execute("select * from predictions").df()
    assert preds.confidence.between(0, 1).all()
    assert (preds.topk_probs.map(len) == 5).all()
    # the paper's convention: correct iff the top-1 token is the gold letter
    assert (preds.correct == (preds.pred == preds.gold)).all()
    assert np.allclose(preds.option_probs.map(lambda p: np.sum(p) <= 1 + 1e-6), True)
    metrics = con.execute("select * from metrics").df()
    assert {"accuracy", "ece", "trust"} <= set(metrics.metric)
    ts = con.execute("select * from temperature_search").df()
    assert set(ts.kind) == {"TS", "LS"} and ts.groupby("kind").chosen.sum().eq(1).all()
    cov = con.execute("select * from topk_coverage order by k").df()
    assert (np.diff(cov["mean"]) >= -1e-9).all()
    assert con.execute("select count(*) from examples").fetchone()[0] == 240
    assert "Table 1" in proc.stdout and "first_ts" in proc.stdout


def test_rerun_skips_finished_stages_and_force_redoes(tiny_run) -> None:
    work, _ = tiny_run
    args = ("run", "--config", str(ROOT / "configs" / "tiny.toml"),
            "--set", f"runs_dir='{work / 'runs'}'", "--set", f"data.dir='{work / 'data'}'",
            "--store", str(work / "first.duckdb"))
    proc = cli(*args, cwd=work)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("done earlier, skipped") >= 10
    proc = cli(*args, "--force", "store", cwd=work)
    assert proc.returncode == 0 and "[15/15] store ... done in" in proc.stdout


def test_cli_user_errors_exit_2_without_traceback(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[topk]\nk = 0\n")
    proc = cli("run", "--config", str(bad), cwd=tmp_path)
    assert proc.returncode == 2
    assert "topk.k" in proc.stderr and "Traceback" not in proc.stderr
    proc = cli("run", "--config", str(ROOT / "configs" / "tiny.toml"), "--force", "nope",
               cwd=tmp_path)
    assert proc.returncode == 2 and "unknown stage" in proc.stderr
