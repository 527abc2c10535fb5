"""Issue 10 through the real CLI: fail early, fail whole, never block the fix.

Each case runs `python -m first_core` the way a careless or hostile user would and checks the
exit status, that no traceback is shown, that the message names the file, line, field or
setting, and that nothing already written changed. docs/ROBUSTNESS.md lists the cases. Most
fail before the first stage, so they cost a process start; one finished tiny run is shared.
"""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import io
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import duckdb
import pytest
from test_bad_inputs import (ROOT, SMALL, TINY, assert_user_error, cli, csqa, records, run,
                             run_args, user_data, write_lines)

from first_core.data import examples as data
from first_core.pipeline import runner as pipeline
from first_core.store.connection import connect
from first_core.store.schema import TABLES
from first_core.store.writes import Store
from first_core.config.loading import load_config

PLAIN = 'methods=["teacher_ft","student_ft"]'  # no distilled student: no top-k, no calibrate


def run_here(work: Path, *sets: str, **kw) -> subprocess.CompletedProcess:
    """`run` through the CLI's own `main` in this process: the same parsing, checks and error
    printing, without an interpreter start per case. For cases that stop before any training;
    an uncaught exception (a traceback) fails the test."""
    from first_core.__main__ import main
    out, err, cwd = io.StringIO(), io.StringIO(), os.getcwd()
    args = run_args(work, *sets, **kw)
    os.chdir(work)
    try:
        with redirect_stdout(out), redirect_stderr(err):
            code = main(args)
    finally:
        os.chdir(cwd)
    return subprocess.CompletedProcess(args, code, out.getvalue(), err.getvalue())


def tree(folder: Path) -> dict[str, str]:
    """Every file under `folder` (the lock file aside) -> its content hash."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != ".lock"}


def no_stage_started(proc: subprocess.CompletedProcess) -> bool:
    return "[1/" not in proc.stdout


def store_rows(path: Path) -> dict[str, list]:
    """The whole content of a store, table by table, for before/after comparisons."""
    with duckdb.connect(str(path), read_only=True) as con:
        return {t: sorted(map(str, con.execute(f'SELECT * FROM "{t}"').fetchall()))
                for t in TABLES}


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Two failed attempts (a junk --store, a typo in data.dir), then the corrected command
    with a `methods` list that has no distilled student, run to the end."""
    work = tmp_path_factory.mktemp("plain")
    junk = work / "junk.duckdb"
    junk.write_bytes(os.urandom(4096))
    bad_store = run_here(work, PLAIN, store=junk)
    typo = run_here(work, PLAIN, data_dir=work / "typo")
    config_after_failures = (work / "runs" / "tiny" / "config.json").exists()
    fixed = run(work, PLAIN)
    return {"work": work, "junk": junk, "bad_store": bad_store, "typo": typo, "fixed": fixed,
            "config_after_failures": config_after_failures}


@pytest.fixture
def copy(finished: dict, tmp_path: Path) -> Path:
    """A private copy of the finished run (its data record still points at the original)."""
    work = tmp_path / "w"
    shutil.copytree(finished["work"], work)
    return work


def made_with(work: Path) -> str:
    """`data.dir=...` of the config the run in `work` was made with."""
    made = json.loads((work / "runs" / "tiny" / "config.json").read_text())["data"]["dir"]
    return f"data.dir='{made}'"


# ---------------------------------------------------------------- 1 and 2


def test_methods_without_a_distilled_student_run_to_the_end(finished: dict) -> None:
    proc, work = finished["fixed"], finished["work"]
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    assert records(work) == {"data", "models", "teacher_ft", "student_ft", "eval_teacher_ft",
                             "eval_student_ft", "posthoc_teacher_ft", "posthoc_student_ft",
                             "store"}
    with duckdb.connect(str(work / "first.duckdb"), read_only=True) as con:
        assert sorted(r[0] for r in con.execute("SELECT method FROM runs").fetchall()) == [
            "student_ft", "student_ft+ts", "teacher_ft", "teacher_ft+ts"]
        assert con.execute("SELECT count(*) FROM temperature_search WHERE kind <> 'posthoc'"
                           ).fetchone()[0] == 0  # no calibrate stage without students
        assert con.execute("SELECT count(*) FROM examples").fetchone()[0] == 120


def test_failed_attempts_never_block_the_corrected_command(finished: dict) -> None:
    assert_user_error(finished["bad_store"], str(finished["junk"]), "not a DuckDB database")
    assert no_stage_started(finished["bad_store"])
    assert_user_error(finished["typo"], f"{finished['work'] / 'typo' / 'train.jsonl'}: no such")
    # neither left a config behind, so the fixed command (checked above) was not refused
    assert not finished["config_after_failures"]
    assert "changed:" not in finished["fixed"].stderr


# ---------------------------------------------------------------- 3


def test_diverged_training_fails_the_stage_and_marks_nothing_done(tmp_path: Path) -> None:
    # 1e30, not a merely large rate: after one Adam step of ~1e30 the next forward overflows
    # float32 on every CPU; with 1e6 whether five clipped steps reach inf depended on the
    # machine's kernels (finite on an Intel AVX-512 machine)
    proc = run(tmp_path, 'methods=["teacher_ft"]', "teacher_train.learning_rate=1e30",
               "data.n_train=40", "teacher_train.batch_size=8")
    assert_user_error(proc, "teacher_train", "training diverged", "non-finite",
                      "learning_rate=1e+30")
    assert records(tmp_path) == {"data", "models"}
    assert not (tmp_path / "runs" / "tiny" / "models" / "teacher_ft" / "final").exists()
    assert not (tmp_path / "first.duckdb").exists()


@pytest.mark.parametrize("setting, words", [
    ("teacher_train.batch_size=0", ("teacher_train.batch_size", ">= 1")),
    ("eval.batch_size=0", ("eval.batch_size", ">= 1")),
    ("seed=-1", ("seed", "[0, 4294967295]")),
    ("calibration.n_bins=0", ("calibration.n_bins", "[1, 10000]")),
    ("eval.n_boot=0", ("eval.n_boot", "[1, 100000]")),
    ("topk.shard_size=0", ("topk.shard_size", ">= 1")),
    ("student_train.warmup_ratio=1.5", ("student_train.warmup_ratio", "[0, 1)")),
    ("teacher_train.learning_rate=inf", ("teacher_train.learning_rate", "finite")),
])
def test_out_of_range_settings_are_refused_before_anything(copy: Path, setting: str,
                                                           words: tuple[str, ...]) -> None:
    before = tree(copy)
    proc = run_here(copy, PLAIN, setting)
    assert_user_error(proc, str(TINY), *words)
    assert tree(copy) == before


# ---------------------------------------------------------------- 4 and 7


def _drop_column(path: Path) -> None:
    Store(path)
    with duckdb.connect(str(path)) as con:
        con.execute("ALTER TABLE predictions DROP COLUMN confidence")


def _drop_table(path: Path) -> None:
    Store(path)
    with duckdb.connect(str(path)) as con:
        con.execute("DROP TABLE metrics")


def _sqlite(path: Path) -> None:
    con = sqlite3.connect(path)
    con.execute("CREATE TABLE runs (run_id TEXT)")
    con.commit()
    con.close()


@pytest.mark.parametrize("make, words", [
    (lambda p: p.write_bytes(os.urandom(8192)), ("not a DuckDB database file",)),
    (_drop_column, ("table 'predictions' lacks column(s) ['confidence']",)),
    (_drop_table, ("table 'metrics' is missing",)),
    (_sqlite, ("a SQLite database",)),
], ids=["random-bytes", "dropped-column", "dropped-table", "sqlite"])
def test_a_bad_store_is_refused_before_the_first_stage(tmp_path: Path, make, words) -> None:
    path = tmp_path / "mine.duckdb"
    make(path)
    before = path.read_bytes()
    proc = run_here(tmp_path, PLAIN, store=path)
    assert_user_error(proc, str(path), *words)
    assert no_stage_started(proc) and records(tmp_path) == set()
    assert path.read_bytes() == before
    assert "http" not in proc.stderr  # no extension was fetched (issue 10, item 7)


def test_connections_never_fetch_or_load_extensions(tmp_path: Path) -> None:
    for read_only in (False, True):
        with connect(tmp_path / "s.duckdb", read_only=read_only) as con:
            assert con.execute("SELECT current_setting('autoinstall_known_extensions'), "
                               "current_setting('autoload_known_extensions')").fetchone() == (
                                   False, False)


@pytest.mark.parametrize("where", ["store", "runs_dir"])
def test_unwritable_store_or_run_directory_is_refused_before_the_first_stage(
        tmp_path: Path, where: str) -> None:
    # a regular file where a folder should be: refused even for root, unlike chmod
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    if where == "store":
        proc = run_here(tmp_path, PLAIN, store=blocker / "s.duckdb")
        words = (f"store {blocker / 's.duckdb'}: {blocker} is a file, not a folder",)
    else:
        proc = run_here(tmp_path, PLAIN, f"runs_dir='{blocker / 'runs'}'")
        words = (f"run directory {blocker / 'runs' / 'tiny'}: {blocker} is a file, not a folder",)
    assert_user_error(proc, *words)
    assert no_stage_started(proc) and blocker.read_text() == "not a folder"
    assert not (tmp_path / "s.duckdb").exists()


def test_a_full_disk_is_one_line_not_a_traceback(monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture) -> None:
    from first_core import __main__ as main_module

    def full(*_a, **_k):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "runs/tiny/stages/x.json")
    monkeypatch.setattr(pipeline, "run", full)
    assert main_module.main(["run", "--config", str(TINY)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: runs/tiny/stages/x.json: No space left on device")
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


# ---------------------------------------------------------------- 5


def test_nan_in_a_grid_is_refused_at_load_and_changes_nothing(copy: Path) -> None:
    before, rows = tree(copy / "runs"), store_rows(copy / "first.duckdb")
    proc = run_here(copy, PLAIN, "calibration.temperature_grid=[nan, 0.3]",
                    extra=("--force", "data"))
    assert_user_error(proc, "calibration.temperature_grid[0]", "finite", "nan")
    assert tree(copy / "runs") == before and store_rows(copy / "first.duckdb") == rows


def test_store_stage_is_one_transaction(copy: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A failure after some runs were written (as a kill would) leaves the old store whole."""
    path = copy / "first.duckdb"
    rows = store_rows(path)
    cfg = load_config(TINY, [f"runs_dir='{copy / 'runs'}'", f"store='{path}'",
                             made_with(copy), *SMALL, PLAIN])
    written = []
    real = Store.write_run

    def write_run(self, run_record, *a, **k):
        real(self, run_record, *a, **k)
        written.append(run_record.run_id)

    def fail(self, frame):
        raise RuntimeError("killed midway")
    monkeypatch.setattr(Store, "write_run", write_run)
    monkeypatch.setattr(Store, "write_examples", fail)
    with pytest.raises(RuntimeError, match="killed midway"):
        pipeline.run(cfg, force="store", echo=lambda _: None)
    assert len(written) == 4  # all runs (2 + their post-hoc rows) were written inside it
    assert store_rows(path) == rows
    assert "store" not in records(copy)


# ---------------------------------------------------------------- 6


@pytest.mark.parametrize("content, line, words", [
    (b"[" * 100_000 + b"]" * 100_000, 1, "JSON nested too deeply"),
    (json.dumps({"question": "q", "choices": ["a", "b"], "answer": "A"}).encode() + b"\n"
     + b'{"question": "x\\ud800", "choices": ["a", "b"], "answer": "A"}', 2,
     "question: a lone UTF-16 surrogate"),
    (json.dumps([{"question": "q", "choices": ["a", "b"], "answer": "A"}],
                indent=2).encode(), 1, "this looks like one JSON array, not JSON Lines"),
], ids=["deep-nesting", "lone-surrogate", "json-array"])
def test_check_data_names_the_line(tmp_path: Path, content: bytes, line: int,
                                   words: str) -> None:
    path = write_lines(tmp_path / "x.jsonl", [content])
    assert_user_error(cli("check-data", str(path), cwd=tmp_path), f"{path}:{line}: {words}",
                      code=1)


def test_check_data_on_a_path_over_255_characters(tmp_path: Path) -> None:
    path = tmp_path / ("a" * 300 + ".jsonl")
    assert_user_error(cli("check-data", str(path), cwd=tmp_path),
                      f"{path}: cannot read it: File name too long", code=1)


def test_unreadable_file_is_a_problem_not_a_traceback(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_lines(tmp_path / "x.jsonl", [csqa(0)])

    def denied(self):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(self))
    with monkeypatch.context() as m:  # root reads a mode-000 file, so fake the refusal here
        m.setattr(Path, "read_bytes", denied)
        (problem,) = data.check_file(path)
    assert str(problem) == f"{path}: cannot read it: Permission denied"
    path.chmod(0)
    try:
        if os.access(path, os.R_OK):
            pytest.skip("running as root: a mode-000 file is still readable here")
        assert_user_error(cli("check-data", str(path), cwd=tmp_path),
                          f"{path}: cannot read it: Permission denied", code=1)
    finally:
        path.chmod(0o644)


def test_test_set_copied_from_train_is_refused_with_counts(tmp_path: Path) -> None:
    train = [csqa(i, "ABCD"[i % 4]) for i in range(6)]
    folder = user_data(tmp_path / "d", train=train, test=train[:3] + [csqa(10 + i)
                                                                    for i in range(3)])
    proc = run_here(tmp_path, data_dir=folder)
    assert_user_error(proc, f"{folder / 'test.jsonl'}: train/test leakage",
                      "3 of 6 test examples (50.0%)", "more than 10%")
    assert records(tmp_path) == set()


def test_leakage_below_the_limit_is_a_warning_with_counts(tmp_path: Path) -> None:
    ex = [data.Example(f"q{i}", f"question {i}", ("A", "B"), ("x", "y"), "A") for i in range(40)]
    splits = {"train": ex[:20], "val": ex[20:], "test": ex[19:39], "test_ood": ex[20:]}
    files = {s: f"{s}.jsonl" for s in splits}
    assert data.split_overlap(splits) == {"val": 0, "test": 1, "test_ood": 0}
    warning = data.check_leakage(splits, files)
    assert warning == ("train/test leakage: 1 of 20 test examples (5.0%) repeat a question "
                       "of train.jsonl with the same choices")
    assert data.check_leakage({**splits, "test": ex[20:]}, files) is None


def test_the_leakage_warning_is_said_once_for_several_seeds(tmp_path: Path) -> None:
    """Each seed checks the same data again; the three-seed demo printed the line thrice."""
    train = [csqa(i, "ABCD"[i % 4]) for i in range(12)]
    test = train[:1] + [csqa(200 + i, "ABCD"[i % 4]) for i in range(19)]  # 1 of 20: 5%
    folder = user_data(tmp_path / "d", train=train, test=test)
    proc = cli(*run_args(tmp_path, PLAIN, "teacher_train.epochs=0.1",
                         "student_train.epochs=0.1", data_dir=folder,
                         extra=("--seeds", "0", "1")), cwd=tmp_path)  # its own logging
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stderr.count("train/test leakage: 1 of 20 test examples (5.0%)") == 1, \
        proc.stderr
    assert "[seed 1, 2/2]" in proc.stdout


# ---------------------------------------------------------------- 8


def test_a_second_run_on_the_same_directory_is_refused(copy: Path) -> None:
    from filelock import FileLock
    before = tree(copy)
    with FileLock(str(copy / "runs" / "tiny" / ".lock")):
        proc = run_here(copy, PLAIN, made_with(copy), extra=("--force", "eval_teacher_ft"))
    assert_user_error(proc, f"{copy / 'runs' / 'tiny'}: another run is using this run "
                            "directory")
    assert no_stage_started(proc) and tree(copy) == before


def test_a_name_that_leaves_runs_dir_is_refused(tmp_path: Path) -> None:
    proc = run_here(tmp_path, "name='../../x'")
    assert_user_error(proc, str(TINY), "name: '../../x' is not a plain folder name")
    assert not any(tmp_path.parent.parent.glob("x"))
    assert not (tmp_path / "runs").exists()


# ---------------------------------------------------------------- 9


def test_force_still_refuses_a_change_that_reaches_an_earlier_stage(copy: Path) -> None:
    before = tree(copy)
    proc = run_here(copy, PLAIN, made_with(copy), "data.n_train=100",
                    extra=("--force", "eval_teacher_ft"))
    assert_user_error(proc, "changed: data.n_train (affects data)", "--force data")
    assert no_stage_started(proc) and tree(copy) == before


def test_force_records_the_new_config_of_the_stages_it_redid(copy: Path) -> None:
    proc = run_here(copy, PLAIN, made_with(copy), "eval.n_boot=5",
                    extra=("--force", "eval_teacher_ft"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    recorded = json.loads((copy / "runs" / "tiny" / "config.json").read_text())
    assert recorded["eval"]["n_boot"] == 5
    assert "done earlier, skipped" in proc.stdout
    assert "[5/9] eval_teacher_ft ... done" in proc.stdout


def test_a_run_recorded_before_a_key_existed_resumes_under_its_default(copy: Path) -> None:
    """config.json of an older version lacks `cpu_kernels`: that version ran "native"."""
    path = copy / "runs" / "tiny" / "config.json"
    recorded = json.loads(path.read_text())
    assert recorded.pop("cpu_kernels") == "native"
    path.write_text(json.dumps(recorded))
    proc = run_here(copy, PLAIN, made_with(copy))
    assert proc.returncode == 0, proc.stderr[-3000:]
    for i, name in enumerate(["data", "models", "teacher_ft", "student_ft", "eval_teacher_ft",
                              "eval_student_ft"], 1):  # (the store is this copy's own)
        assert f"[{i}/9] {name}: done earlier, skipped" in proc.stdout


def test_other_cpu_kernels_reach_the_models(copy: Path, unpinned) -> None:
    before = tree(copy)
    proc = run_here(copy, PLAIN, made_with(copy), "cpu_kernels='avx2'")
    assert_user_error(proc, "changed: cpu_kernels (affects models)", "--force models")
    assert no_stage_started(proc) and tree(copy) == before


def test_a_changed_config_never_resumes_a_checkpoint_made_under_the_old_one(
        copy: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """After a diverged (or killed) training, the rerun with a fixed learning rate is
    accepted and starts that stage afresh: the old checkpoint goes before anything runs."""
    run_dir = copy / "runs" / "tiny"
    for name in ("student_ft", "eval_teacher_ft", "eval_student_ft", "posthoc_teacher_ft",
                 "posthoc_student_ft", "store"):
        (run_dir / "stages" / f"{name}.json").unlink()  # as if student_ft had been killed
    shutil.rmtree(run_dir / "models" / "student_ft")
    old = run_dir / "models" / "student_ft" / "checkpoint-3"
    old.mkdir(parents=True)
    (old / "trainer_state.json").write_text("{}")
    seen = []

    def stage_finetune(ctx, method):
        seen.append(old.exists())
        raise RuntimeError("stop here")
    from first_core.pipeline import mc_stages
    monkeypatch.setattr(mc_stages, "MULTIPLE_CHOICE",  # the setting `runner.setting_for` picks
                        dataclasses.replace(mc_stages.MULTIPLE_CHOICE, finetune=stage_finetune))
    cfg = load_config(TINY, [f"runs_dir='{run_dir.parent}'", f"store='{copy / 'first.duckdb'}'",
                             made_with(copy), *SMALL, PLAIN, "student_train.learning_rate=1e-4"])
    with pytest.raises(RuntimeError, match="stop here"):
        pipeline.run(cfg, echo=lambda _: None)
    assert seen == [False]  # the checkpoint of the old learning rate was gone before training
    recorded = json.loads((run_dir / "config.json").read_text())
    assert recorded["student_train"]["learning_rate"] == 1e-4
    assert {"data", "models", "teacher_ft"} <= records(copy) and "student_ft" not in records(copy)


@pytest.mark.parametrize("spec", ["./no-such-model", "mine/llama-typo"])
def test_a_local_model_path_that_does_not_exist_fails_at_once(tmp_path: Path,
                                                             spec: str) -> None:
    (tmp_path / "mine").mkdir()  # `mine/...` names a local folder, not a hub org
    proc = run_here(tmp_path, PLAIN, f"model.student='{spec}'")
    assert_user_error(proc, "model.student", f"model path '{spec}' does not exist")
    assert no_stage_started(proc)


def test_an_error_on_rank_0_alone_stops_every_rank(tmp_path: Path) -> None:
    """torchrun, two CPU ranks (gloo): the store check runs on rank 0 only; both must stop."""
    junk = tmp_path / "junk.duckdb"
    junk.write_bytes(b"junk" * 1000)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
           "2", "--monitor-interval", "1", "-m", "first_core", "run", "--config", str(TINY),
           "--set", f"runs_dir='{tmp_path / 'runs'}'", "--set", f"data.dir='{tmp_path / 'd'}'",
           "--store", str(junk)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the launcher and both ranks: a hang
        raise
    text = out + err
    assert proc.returncode != 0
    assert f"error: store {junk}: not a DuckDB database file" in text  # rank 0
    assert (f"error: rank 0 failed, so every rank stops: store {junk}: not a DuckDB "
            "database file") in text  # rank 1 learnt of it and stopped by itself
    assert "first_core" + os.sep not in "".join(
        line for line in text.splitlines() if line.lstrip().startswith("File "))
    assert not (tmp_path / "d").exists() and junk.read_bytes() == b"junk" * 1000


# ---------------------------------------------------------------- issue 23, item 7


@pytest.mark.parametrize("setting, words", [
    ("distill.ce_weight=1e30", ("distill.ce_weight", "[0, 1]", "1e+30")),
    ("eval.topk=100000", ("eval.topk", "100000")),
    ("model.dtype='int8'", ("model.dtype", "'int8'", "float32")),
    ("topk.coverage_k=1000000", ("topk.coverage_k", "1000000")),
    ("calibration.n_bins=1000000000", ("calibration.n_bins", "1000000000")),
    ("eval.n_boot=1000000000", ("eval.n_boot", "1000000000")),
    ("data.fmt='csv'", ("data.fmt", "'csv'")),
    ("teacher_train.weight_decay=1e4", ("teacher_train.weight_decay", "learning_rate")),
    ("student_train.bf16=true", ("student_train", "fp16")),
], ids=["ce_weight", "eval.topk", "model.dtype", "coverage_k", "n_bins", "n_boot", "fmt",
        "weight_decay", "bf16+fp16"])
def test_values_that_failed_after_training_are_refused_at_load(tmp_path: Path, setting: str,
                                                               words: tuple[str, ...]) -> None:
    """Each used to pass the load and fail at the stage that used it, after the teacher (and
    for ce_weight the students) had trained; now the load refuses it, naming file and key."""
    extra = ("student_train.fp16=true",) if "bf16" in setting else ()
    proc = run_here(tmp_path, *SMALL, setting, *extra)
    assert_user_error(proc, f"{TINY}: ", *words)
    assert no_stage_started(proc)


@pytest.mark.parametrize("setting, key", [("eval.topk=500", "eval.topk"),
                                          ("topk.k=60", "topk.k")])
def test_k_over_the_vocabulary_is_refused_at_the_models_stage(tmp_path: Path, setting: str,
                                                              key: str) -> None:
    """The vocabulary is known once the models stage has built or found the models: the run
    stops there, before any training, naming the key and the config file (tiny: 47 tokens)."""
    proc = run_here(tmp_path, *SMALL, setting, *(("topk.coverage_k=60",) if key == "topk.k"
                                                  else ()))
    assert_user_error(proc, f"{TINY}: {key}: ", "larger than the", "vocabulary (47 tokens)")
    assert "[2/" in proc.stdout and "[3/" not in proc.stdout
    assert records(tmp_path) == {"data"}


def test_fp16_without_a_gpu_is_refused_before_the_first_stage(tmp_path: Path) -> None:
    import torch
    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA GPU: fp16 is allowed")
    proc = run_here(tmp_path, *SMALL, "teacher_train.fp16=true")
    assert_user_error(proc, f"{TINY}: teacher_train.fp16: needs a CUDA GPU")
    assert no_stage_started(proc)


def test_a_k_raised_over_the_vocabulary_on_resume_is_refused_before_any_stage(
        copy: Path) -> None:
    """The models were built by an earlier run, the evaluation is redone with a larger k:
    the preflight checks it at once, before the first stage."""
    before = tree(copy)
    proc = run_here(copy, PLAIN, made_with(copy), "eval.topk=500",
                    extra=("--force", "eval_teacher_ft"))
    assert_user_error(proc, f"{TINY}: eval.topk: 500 is larger than the teacher's vocabulary")
    assert no_stage_started(proc) and tree(copy) == before


def test_coverage_k_over_the_vocabulary_is_allowed(monkeypatch) -> None:
    """demo.toml asks a 47-token teacher for top-100 coverage statistics, which clip at the
    vocabulary: the models-stage check must not refuse it (it did, and broke the demo)."""
    from first_core.models import checks as model_checks
    from first_core.config.loading import load_config

    cfg = load_config(ROOT / "configs" / "demo.toml")
    assert cfg.topk.coverage_k > 47
    monkeypatch.setattr(model_checks, "vocab_size", lambda *a, **k: 47)
    model_checks.check_vocabulary(cfg, {"teacher": "t", "student": "s"}, "demo.toml")
