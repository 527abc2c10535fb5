"""The whole pipeline on configs/tiny.toml, through the real CLI, checked in the store."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]
METHODS = {"teacher_ft", "student_ft", "student_distill", "first_ls", "first_ts"}
POSTHOC = {m + "+ts" for m in METHODS}  # each trained model after post-hoc temperature scaling


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
    assert set(runs.method) == METHODS | POSTHOC
    assert all(json.loads(c)["name"] == "tiny" for c in runs.config)
    counts = con.execute("select method, split, count(*) n from predictions join runs "
                         "using (run_id) group by all").df()
    assert set(counts.split) == {"val", "test", "test_ood"}
    assert len(counts) == 30 and (counts.n == 80).all()
    preds = con.execute("select * from predictions").df()
    assert preds.confidence.between(0, 1).all()
    assert (preds.topk_probs.map(len) == 5).all()
    # the paper's convention: correct iff the top-1 token is the gold letter
    assert (preds.correct == (preds.pred == preds.gold)).all()
    assert np.allclose(preds.option_probs.map(lambda p: np.sum(p) <= 1 + 1e-6), True)
    metrics = con.execute("select * from metrics").df()
    assert {"accuracy", "ece", "trust"} <= set(metrics.metric)
    ts = con.execute("select * from temperature_search").df()
    assert set(ts.kind) == {"TS", "LS", "posthoc"}
    assert ts.groupby(["run_id", "kind"]).chosen.sum().eq(1).all()
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
    assert proc.returncode == 0 and "[20/20] store ... done in" in proc.stdout


def test_cli_user_errors_exit_2_without_traceback(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[topk]\nk = 0\n")
    proc = cli("run", "--config", str(bad), cwd=tmp_path)
    assert proc.returncode == 2
    assert "topk.k" in proc.stderr and "Traceback" not in proc.stderr
    proc = cli("run", "--config", str(ROOT / "configs" / "tiny.toml"), "--force", "nope",
               cwd=tmp_path)
    assert proc.returncode == 2 and "unknown stage" in proc.stderr


def test_posthoc_rows_rescale_each_model_without_moving_its_answers(tiny_run) -> None:
    """Every trained model has a `+ts` run: its fitted T recorded (runs.temperature, the
    stage's fit.json), the same answers as the model itself on every split (dividing the
    logits by T keeps the arg-max) and, on validation, a lower NLL over the vocabulary."""
    work, proc = tiny_run
    con = duckdb.connect(str(work / "first.duckdb"), read_only=True)
    runs = con.execute("select run_id, method, temperature from runs").df().set_index("method")
    preds = con.execute("select r.method, p.split, p.example_id, p.pred, p.correct, "
                        "p.pred_option, p.confidence from predictions p join runs r "
                        "using (run_id) order by all").df()
    for method in METHODS:
        fit = json.loads((work / "runs" / "tiny" / "eval" / f"{method}+ts" / "fit.json")
                         .read_text())
        assert runs.loc[f"{method}+ts", "temperature"] == fit["temperature"] > 0
        assert fit["nll_after"] <= fit["nll_before"] and fit["stride"] == 1
        assert fit["n_positions"] == 80 and fit["temperature_ece"] in fit["grid"]
        base, ts = (preds[preds.method == m].reset_index(drop=True)
                    for m in (method, f"{method}+ts"))
        for col in ("split", "example_id", "pred", "correct", "pred_option"):
            assert base[col].tolist() == ts[col].tolist(), (method, col)
        if fit["temperature"] != 1.0:
            assert not np.allclose(base.confidence, ts.confidence)
    assert "METHOD+ts" in proc.stdout and "T (validation NLL)" in proc.stdout


def test_compare_page_shows_the_posthoc_rows(tiny_run, monkeypatch) -> None:
    from test_app import open_app  # the dashboard tests' way of opening a page

    work, _ = tiny_run
    at = open_app(monkeypatch, work / "first.duckdb", "pages/compare.py")
    shown = [d.value for d in at.dataframe if "method" in getattr(d.value, "columns", [])]
    assert shown and POSTHOC <= set(shown[-1]["method"])
    assert any("post-hoc temperature scaling" in c.value for c in at.caption)


def test_a_finished_run_resumes_adding_the_posthoc_rows_without_retraining(
        tiny_run, tmp_path) -> None:
    """A run made before the post-hoc stages existed (simulated: their records, outputs and
    store rows removed) gains them on a rerun of its command: nothing trains, every stored
    prediction of the five methods keeps its bits, and the `+ts` rows come back the same."""
    import shutil

    work, _ = tiny_run
    old = tmp_path / "old"
    shutil.copytree(work, old, ignore=shutil.ignore_patterns(".lock"))
    run_dir = old / "runs" / "tiny"
    for method in METHODS:
        (run_dir / "stages" / f"posthoc_{method}.json").unlink()
        shutil.rmtree(run_dir / "eval" / f"{method}+ts")
    query = ("select r.method, p.* exclude (run_id) from predictions p join runs r "
             "using (run_id) order by all")
    with duckdb.connect(str(old / "first.duckdb")) as con:
        before = con.execute(query).df()
        con.execute("delete from predictions where run_id like '%+ts%'")
        con.execute("delete from metrics where run_id like '%+ts%'")
        con.execute("delete from temperature_search where kind = 'posthoc'")
        con.execute("delete from runs where method like '%+ts'")
    proc = cli("run", "--config", str(ROOT / "configs" / "tiny.toml"),
               "--set", f"runs_dir='{old / 'runs'}'", "--set", f"data.dir='{work / 'data'}'",
               "--store", str(old / "first.duckdb"), cwd=old)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for stage in ("teacher_ft", "topk", "student_ft", "first_ts", "eval_first_ts"):
        assert f"{stage}: done earlier, skipped" in proc.stdout
    assert "posthoc_first_ts ... done in" in proc.stdout and "store ... done in" in proc.stdout
    with duckdb.connect(str(old / "first.duckdb"), read_only=True) as con:
        after = con.execute(query).df()
    pd.testing.assert_frame_equal(before, after)  # same bits, every row of every method


def test_each_setting_is_typed_and_builds_the_same_stage_names() -> None:
    """`[data] kind` picks a typed `Setting` (not a module read by attribute names); both
    settings make the same stages in the same order, so resume, `--force` and the config
    checks name them alike."""
    import dataclasses

    from first_core.config.settings import RunConfig
    from first_core.pipeline.mc_stages import MULTIPLE_CHOICE
    from first_core.pipeline.runner import setting_for, stages
    from first_core.pipeline.stage_base import Setting

    mc = RunConfig()
    instruct = dataclasses.replace(mc, data=dataclasses.replace(mc.data, kind="instruct"))
    assert setting_for(mc) is MULTIPLE_CHOICE
    other = setting_for(instruct)
    assert isinstance(other, Setting) and other is not MULTIPLE_CHOICE
    for setting in (MULTIPLE_CHOICE, other):
        assert all(callable(getattr(setting, f.name)) for f in dataclasses.fields(Setting)
                   if f.name != "name")
    assert [s.name for s in stages(mc)] == [s.name for s in stages(instruct)]
