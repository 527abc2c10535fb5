"""Kill -9 a real run of configs/tiny.toml mid-stage, rerun the same command, lose nothing.

One interrupted history, checked phase by phase against an uninterrupted run of the same
command (same seed) in another folder:

1. the run is killed while top-k extraction has written part of the train store;
2. the same command is rerun and killed again, this time inside student_ft right after the
   Trainer saved checkpoint-4;
3. the same command is rerun plainly and must finish, having skipped every finished stage
   and resumed the student from checkpoint-4; its store must equal the uninterrupted one.

The kill points come from `helpers/paused_cli.py`, which parks the real CLI at an exact
point (timing alone would race a stage that lasts a fraction of a second).

The top-k stage of both settings also resumes per split (a split whose finished store
matches is kept), checked on the stage itself.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pytest

from first_core.knowledge.reader import load_topk

ROOT = Path(__file__).resolve().parents[1]
PAUSED_CLI = ROOT / "tests" / "helpers" / "paused_cli.py"
CHECKPOINT_STEP = 4
# small checkpoints interval and shards, so each kill point exists; fewer bootstrap rounds
OVERRIDES = ("student_train.save_steps=2", "topk.shard_size=100", "eval.n_boot=20")
N_STAGES = 20  # 15 + one posthoc_* stage per method
TOL = 1e-6


def env(**extra: str) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", **extra}


def command(work: Path) -> list[str]:
    args = ["run", "--config", str(ROOT / "configs" / "tiny.toml"),
            "--set", f"runs_dir='{work / 'runs'}'", "--set", f"data.dir='{work / 'data'}'",
            "--store", str(work / "first.duckdb")]
    for o in OVERRIDES:
        args += ["--set", o]
    return args


def run_plain(work: Path, **extra_env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "first_core", *command(work)], cwd=work,
                          capture_output=True, text=True, timeout=300, env=env(**extra_env))


@dataclass
class Killed:
    """What a killed run printed and what its run directory held at the moment of the kill."""

    returncode: int
    stdout: str
    files: set[str]  # paths relative to the run dir


def run_and_kill(work: Path, pause_at: str, timeout: float = 240.0) -> Killed:
    """Start the paused CLI, wait until it parks at `pause_at`, SIGKILL it."""
    marker = work / f"parked-{pause_at}"
    marker.unlink(missing_ok=True)
    out = work / f"stdout-{pause_at}.txt"
    with out.open("w") as stdout:
        proc = subprocess.Popen(
            [sys.executable, str(PAUSED_CLI), *command(work)], cwd=work, stdout=stdout,
            stderr=subprocess.STDOUT, env=env(PAUSE_AT=pause_at, PAUSE_MARKER=str(marker),
                                              PAUSE_STEP=str(CHECKPOINT_STEP)))
        deadline = time.monotonic() + timeout
        while not marker.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                proc.wait()
                pytest.fail(f"run never reached {pause_at} (rc {proc.returncode}):\n"
                            f"{out.read_text()[-3000:]}")
            time.sleep(0.05)
        run_dir = work / "runs" / "tiny"
        files = {str(p.relative_to(run_dir)) for p in run_dir.rglob("*")}
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    return Killed(proc.returncode, out.read_text(), files)


@pytest.fixture(scope="module")
def baseline(tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("uninterrupted")
    proc = run_plain(work)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return work


@pytest.fixture(scope="module")
def history(tmp_path_factory: pytest.TempPathFactory) -> dict:
    work = tmp_path_factory.mktemp("interrupted")
    in_topk = run_and_kill(work, "topk")
    in_student = run_and_kill(work, "student_ft")
    final = run_plain(work, FIRST_LOG_LEVEL="INFO")
    return {"work": work, "topk": in_topk, "student_ft": in_student, "final": final}


def stage_line(i: int, name: str, what: str) -> str:
    return f"[{i}/{N_STAGES}] {name}{what}"


def test_kill_in_topk_leaves_a_partial_store_that_does_not_look_finished(history) -> None:
    killed: Killed = history["topk"]
    assert killed.returncode == -signal.SIGKILL
    assert stage_line(4, "topk", " ...") in killed.stdout
    assert any(f.startswith("topk/.train.partial/part-") for f in killed.files)
    assert "topk/train/manifest.json" not in killed.files
    assert "stages/topk.json" not in killed.files
    assert {"stages/data.json", "stages/models.json", "stages/teacher_ft.json"} <= killed.files


def test_rerun_after_topk_kill_skips_finished_stages_and_redoes_topk(history) -> None:
    out = history["student_ft"].stdout
    for i, name in enumerate(("data", "models", "teacher_ft"), 1):
        assert stage_line(i, name, ": done earlier, skipped") in out
    assert stage_line(4, "topk", " ... done in") in out
    assert "topk: done earlier" not in out


def test_kill_in_student_training_leaves_a_checkpoint_and_no_final_model(history) -> None:
    killed: Killed = history["student_ft"]
    assert killed.returncode == -signal.SIGKILL
    ckpt = f"models/student_ft/checkpoint-{CHECKPOINT_STEP}"
    assert f"{ckpt}/trainer_state.json" in killed.files
    assert not any(f.startswith("models/student_ft/final") for f in killed.files)
    assert "stages/student_ft.json" not in killed.files


def test_final_rerun_completes_and_resumes_student_from_its_checkpoint(history) -> None:
    final = history["final"]
    assert final.returncode == 0, final.stderr[-3000:]
    for i, name in enumerate(("data", "models", "teacher_ft", "topk", "calibrate"), 1):
        assert stage_line(i, name, ": done earlier, skipped") in final.stdout
    assert stage_line(6, "student_ft", " ...") in final.stdout
    resumed = [line for line in final.stderr.splitlines() if "resuming from" in line]
    assert len(resumed) == 1 and resumed[0].endswith(
        os.path.join("student_ft", f"checkpoint-{CHECKPOINT_STEP}")), final.stderr[-3000:]
    assert stage_line(N_STAGES, "store", " ... done in") in final.stdout


def read_store(work: Path) -> dict[str, pd.DataFrame]:
    con = duckdb.connect(str(work / "first.duckdb"), read_only=True)
    try:
        return {
            "runs": con.execute("SELECT run_id, method, model, dataset, seed, temperature, "
                                "smoothing, config FROM runs ORDER BY run_id").df(),
            "predictions": con.execute(
                "SELECT run_id, split, example_id, pred, confidence, pred_option, "
                "confidence_option, topk_ids FROM predictions "
                "ORDER BY run_id, split, example_id").df(),
            "metrics": con.execute("SELECT * FROM metrics ORDER BY run_id, split, convention, "
                                   "metric").df(),
            "temperature_search": con.execute("SELECT * FROM temperature_search "
                                              "ORDER BY run_id, kind, value").df(),
        }
    finally:
        con.close()


def portable(config: str) -> dict:
    """A stored run config without the paths, which differ between the two runs' folders."""
    cfg = json.loads(config)
    del cfg["runs_dir"], cfg["store"], cfg["data"]["dir"]
    return cfg


def test_resumed_store_equals_an_uninterrupted_run(history, baseline) -> None:
    assert history["final"].returncode == 0
    got, want = read_store(history["work"]), read_store(baseline)
    assert ([portable(c) for c in got["runs"].pop("config")]
            == [portable(c) for c in want["runs"].pop("config")])
    pd.testing.assert_frame_equal(got["runs"], want["runs"])
    gp, wp = got["predictions"], want["predictions"]
    assert len(gp) == len(wp) == 2 * 5 * 3 * 80  # each method and its post-hoc row
    for col in ("run_id", "split", "example_id", "pred", "pred_option"):
        assert gp[col].tolist() == wp[col].tolist(), col
    assert gp.topk_ids.map(list).tolist() == wp.topk_ids.map(list).tolist()
    for col in ("confidence", "confidence_option"):
        np.testing.assert_allclose(gp[col], wp[col], rtol=0, atol=TOL, err_msg=col)
    gm, wm = got["metrics"], want["metrics"]
    assert gm[["run_id", "split", "convention", "metric"]].equals(
        wm[["run_id", "split", "convention", "metric"]])
    for col in ("value", "ci_low", "ci_high"):
        np.testing.assert_allclose(gm[col].astype(float), wm[col].astype(float), rtol=0,
                                   atol=TOL, err_msg=col)
    pd.testing.assert_frame_equal(got["temperature_search"], want["temperature_search"],
                                  rtol=0, atol=TOL)


def test_redone_topk_store_equals_the_uninterrupted_one(history, baseline) -> None:
    got, want = (load_topk(w / "runs" / "tiny" / "topk" / "train")
                 for w in (history["work"], baseline))
    assert list(got.example_ids) == list(want.example_ids)
    np.testing.assert_array_equal(got.ids, want.ids)
    np.testing.assert_allclose(got.probs, want.probs, rtol=0, atol=TOL)
    assert got.manifest.coverage == want.manifest.coverage


# ------------------------------------------------------------------ resume per split

@pytest.mark.parametrize("config", ["tiny.toml", "instruct-tiny.toml"])
def test_topk_keeps_each_split_whose_finished_store_matches(config: str, tmp_path: Path) -> None:
    """Both settings' topk stage resume per split (issue 28): rerun after a kill that came
    between two splits, it keeps each split whose finished store matches this run (config,
    k, examples), redoes the others, and records what an uninterrupted stage records; a
    store made under another config is redone."""
    import shutil

    from first_core.config.loading import load_config
    from first_core.knowledge.manifest import read_manifest
    from first_core.pipeline.runner import stages
    from first_core.pipeline.stage_base import Context, write_json_atomic

    sets = [f"runs_dir='{tmp_path / 'runs'}'", f"data.dir='{tmp_path / 'data'}'",
            f"instruct.dir='{tmp_path / 'instruct'}'", "teacher_train.epochs=0"]
    cfg = load_config(ROOT / "configs" / config, sets)
    ctx = Context(cfg, cfg.run_dir)
    by_name = {st.name: st.fn for st in stages(cfg)}
    for name in ("data", "models"):  # the teacher is used as given: no training needed
        write_json_atomic(ctx.path("stages", f"{name}.json"), by_name[name](ctx))
    splits = ("train", "val", "test")

    def stores() -> dict[str, int]:  # a redone store is a new folder with a new manifest
        return {s: (ctx.path("topk", s) / "manifest.json").stat().st_ino for s in splits}

    first = by_name["topk"](ctx)
    before = stores()
    shutil.rmtree(ctx.path("topk", "val"))  # killed while val was being extracted
    again = by_name["topk"](ctx)
    after = stores()
    assert (after["train"], after["test"]) == (before["train"], before["test"])
    assert again["dirs"] == first["dirs"]
    # one loop for both settings (knowledge_steps.extract_splits): both records say what was kept
    assert (first["kept"], again["kept"]) == ([], ["train", "test"])

    other = Context(load_config(ROOT / "configs" / config, [*sets, "topk.k=4"]), cfg.run_dir)
    by_name["topk"](other)
    assert all(read_manifest(ctx.path("topk", s)).k == 4 for s in splits)
