"""The bad-input matrix of issue 5, at the user's level: the real CLI, its exit code, its
message and what it leaves on disk.

Every case must end with a message naming the file, line, field or argument, a non-zero exit
status (2 for `run`, 1 for `check-data` findings), no traceback, and nothing that looks
finished: no stage record for the stage that failed, no store file when the data check fails.
The unit tests of each module (test_data, test_topk, test_store, test_models, test_config)
cover the messages in detail; this file checks that they reach the user intact.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import duckdb
import pytest

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "tiny.toml"
SPLIT_FILES = ("train", "val", "test", "test_ood")
SMALL = ("data.n_train=120", "data.n_val=40", "data.n_test=40", "data.n_ood=40",
         "eval.n_boot=10")


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "first_core", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"})


def run(work: Path, *sets: str, data_dir: Path | None = None, store: Path | None = None,
        extra: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    """`run --config tiny.toml` inside `work`; `data_dir` switches to user data files."""
    return cli(*run_args(work, *sets, data_dir=data_dir, store=store, extra=extra), cwd=work)


def run_args(work: Path, *sets: str, data_dir: Path | None = None, store: Path | None = None,
             extra: tuple[str, ...] = ()) -> list[str]:
    """The arguments of `run` above."""
    args = ["run", "--config", str(TINY), "--set", f"runs_dir='{work / 'runs'}'",
            "--store", str(store or work / "first.duckdb")]
    if data_dir is None:
        args += ["--set", f"data.dir='{work / 'data'}'"]
    else:
        args += ["--set", "data.embedded=false", "--set", f"data.dir='{data_dir}'"]
    for s in (*SMALL, *sets):
        args += ["--set", s]
    return [*args, *extra]


def assert_user_error(proc: subprocess.CompletedProcess, *words: str, code: int = 2) -> None:
    """Exit `code`, no traceback, and every word in the message."""
    text = proc.stderr + proc.stdout
    assert proc.returncode == code, text[-3000:]
    assert "Traceback" not in text, text[-3000:]
    for w in words:
        assert w in text, f"{w!r} not in:\n{text[-3000:]}"


def records(work: Path) -> set[str]:
    """Names of the stage records of the run in `work`."""
    return {p.stem for p in (work / "runs" / "tiny" / "stages").glob("*.json")}


# ------------------------------------------------------------------------------ data files


def csqa(i: int, answer: str = "A", labels: tuple[str, ...] = ("A", "B", "C", "D"),
         id_: str | None = None, **drop: bool) -> str:
    """One CommonsenseQA line (original layout); `drop` names top-level keys to leave out."""
    rec = {"answerKey": answer, "id": id_ or f"q{i}",
           "question": {"stem": f"which word number {i} ?",
                        "choices": [{"label": lab, "text": f"word {lab.lower()} {i}"}
                                    for lab in labels]}}
    return json.dumps({k: v for k, v in rec.items() if not drop.get(k)})


def write_lines(path: Path, lines: list[str | bytes]) -> Path:
    path.write_bytes(b"".join((x if isinstance(x, bytes) else x.encode()) + b"\n"
                              for x in lines))
    return path


def user_data(folder: Path, **splits: list[str | bytes]) -> Path:
    """Four split files of 6 clean questions each, with `splits` replacing some of them."""
    folder.mkdir(parents=True, exist_ok=True)
    for k, split in enumerate(SPLIT_FILES):  # other questions in each split: no leakage
        lines = splits.get(split, [csqa(100 * k + i, "ABCD"[i % 4]) for i in range(6)])
        write_lines(folder / f"{split}.jsonl", lines)
    return folder


GOOD = [csqa(i) for i in range(6)]

# (name, train.jsonl lines, bad line, field, words in the message)
BAD_DATA = [
    ("malformed-json", [GOOD[0], GOOD[1], '{"answerKey": "A", "id": ', GOOD[2]], 3, None,
     "malformed JSON"),
    ("missing-answerKey", [GOOD[0], csqa(1, answerKey=True), GOOD[2]], 2, "answerKey",
     "missing"),
    ("answer-not-a-label", [GOOD[0], GOOD[1], csqa(2, answer="F")], 3, "answerKey",
     "'F' is not among the choice labels"),
    ("duplicate-id", [GOOD[0], GOOD[1], csqa(2, id_="q0")], 3, "id", "duplicate id 'q0'"),
    ("single-choice", [GOOD[0], csqa(1, labels=("A",))], 2, "question.choices",
     "at least 2 choices"),
    ("non-utf8", [GOOD[0], b'{"answerKey": "A", "id": "x\xff"}', GOOD[1]], 2, None,
     "not valid UTF-8"),
]


@pytest.mark.parametrize("lines, line, field, words",
                         [pytest.param(*case[1:], id=case[0]) for case in BAD_DATA])
def test_bad_data_file_is_named_by_check_data_and_stops_the_run_before_anything(
        tmp_path: Path, lines: list, line: int, field: str | None, words: str) -> None:
    data = user_data(tmp_path / "d", train=lines)
    where = f"{data / 'train.jsonl'}:{line}: {field + ': ' if field else ''}"

    checked = cli("check-data", str(data / "train.jsonl"), cwd=tmp_path)
    assert_user_error(checked, where, words, code=1)

    proc = run(tmp_path, data_dir=data)
    assert_user_error(proc, where, words)
    assert records(tmp_path) == set()
    assert not (tmp_path / "first.duckdb").exists()


@pytest.mark.parametrize("content", ["", "\n  \n\n"], ids=["empty-file", "blank-lines"])
def test_empty_split_is_named(tmp_path: Path, content: str) -> None:
    data = user_data(tmp_path / "d")
    (data / "val.jsonl").write_text(content)
    assert_user_error(cli("check-data", str(data / "val.jsonl"), cwd=tmp_path),
                      f"{data / 'val.jsonl'}: no examples", code=1)
    proc = run(tmp_path, data_dir=data)
    assert_user_error(proc, f"{data / 'val.jsonl'}: no examples")
    assert records(tmp_path) == set() and not (tmp_path / "first.duckdb").exists()


def test_missing_data_files_are_each_named(tmp_path: Path) -> None:
    proc = run(tmp_path, data_dir=tmp_path / "nowhere")
    assert_user_error(proc, "4 problem(s)",
                      *(f"{tmp_path / 'nowhere' / s}.jsonl: no such file" for s in SPLIT_FILES))
    assert records(tmp_path) == set() and not (tmp_path / "first.duckdb").exists()


def test_check_data_reports_every_problem_with_its_line(tmp_path: Path) -> None:
    lines = [GOOD[0], "not json", csqa(2, answerKey=True), GOOD[3], csqa(4, id_="q0"),
             b"\xfe\xff", csqa(6, labels=("A",)), csqa(7, answer="Z"), GOOD[5]]
    bad_lines = {2, 3, 5, 6, 7, 8}
    path = write_lines(tmp_path / "many.jsonl", lines)
    proc = cli("check-data", str(path), cwd=tmp_path)
    assert_user_error(proc, f"{len(bad_lines)} problem(s)", code=1)
    reported = [line for line in proc.stdout.splitlines() if line]
    assert all(line.startswith(f"{path}:") for line in reported)
    assert {int(line.split(":")[1]) for line in reported} == bad_lines
    assert len(reported) == len(bad_lines)
    # the pipeline runs the same checks and lists them all, before training anything
    data = user_data(tmp_path / "d", test=lines)
    proc = run(tmp_path, data_dir=data)
    assert_user_error(proc, f"the data has {len(bad_lines)} problem(s)",
                      *(f"{data / 'test.jsonl'}:{n}:" for n in bad_lines))
    assert records(tmp_path) == set() and not (tmp_path / "first.duckdb").exists()


def test_check_data_on_a_clean_file_prints_one_summary_line(shared_csqa: Path,
                                                            tmp_path: Path) -> None:
    rows = [json.loads(x) for x in shared_csqa.read_text(encoding="utf-8").splitlines()
            if x.strip()]
    proc = cli("check-data", str(shared_csqa), "--format", "csqa", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    (line,) = proc.stdout.splitlines()
    n_choices = {len(r["question"]["choices"]) for r in rows}
    assert line.startswith(f"{shared_csqa}: ok: {len(rows)} examples; ")
    assert f"{n_choices.pop()} choices per question" in line
    for label, n in Counter(r["answerKey"] for r in rows).items():
        assert f"{label} {n} (" in line


def test_check_data_with_the_wrong_format_flags_every_line(shared_csqa: Path,
                                                           tmp_path: Path) -> None:
    n = sum(1 for x in shared_csqa.read_text(encoding="utf-8").splitlines() if x.strip())
    proc = cli("check-data", str(shared_csqa), "--format", "boolq", cwd=tmp_path)
    assert_user_error(proc, f"{n} problem(s)", code=1)
    assert len([x for x in proc.stdout.splitlines() if x.startswith(f"{shared_csqa}:")]) == n


def test_check_data_on_a_missing_file(tmp_path: Path) -> None:
    proc = cli("check-data", str(tmp_path / "nope.jsonl"), cwd=tmp_path)
    assert_user_error(proc, f"{tmp_path / 'nope.jsonl'}: no such file", code=1)


def test_answer_labels_split_into_several_tokens_are_explained(tmp_path: Path) -> None:
    labels = ("A-1", "B-1", "C-1", "D-1")
    data = user_data(tmp_path / "d", **{s: [csqa(100 * k + i, labels[i % 4], labels=labels)
                                            for i in range(6)]
                                        for k, s in enumerate(SPLIT_FILES)})
    assert cli("check-data", str(data / "train.jsonl"), cwd=tmp_path).returncode == 0
    proc = run(tmp_path, data_dir=data)
    assert_user_error(proc, "answer label 'A-1'", "becomes 3 tokens", "exactly one")
    assert "teacher_ft" not in records(tmp_path)
    assert not (tmp_path / "runs" / "tiny" / "models" / "teacher_ft" / "final").exists()


# ------------------------------------------------------------------------------ config


@pytest.mark.parametrize("sets, words", [
    (("teacher_train.epoch=3",), ("teacher_train", "'epoch'", "unknown key")),
    (("topk.k='five'",), ("topk.k", "'five'")),
    (("topk.k=0",), ("topk.k", "in [1, 1000]")),
    (("topk.k=-3",), ("topk.k", "in [1, 1000]")),
    (("teacher_train.learning_rate=nan",), ("teacher_train.learning_rate", "finite")),
    (("calibration.temperature_grid=[nan, 0.3]",), ("calibration.temperature_grid[0]",
                                                    "finite")),
    (("eval.batch_size=0",), ("eval.batch_size", ">= 1")),
    (("name='../../x'",), ("name", "'../../x'", "plain folder name")),
    (("distill.student_side='softmax'",), ("distill.student_side", "'softmax'")),
    (("distill.student_temperature=0.3",), ("distill", "'student_temperature'",
                                            "unknown key")),
], ids=["unknown-key", "wrong-type", "k-0", "k-negative", "lr-nan", "grid-nan", "batch-0",
        "name-escapes", "student-side", "removed-key"])
def test_bad_config_values_stop_before_any_output(tmp_path: Path, sets: tuple[str, ...],
                                                  words: tuple[str, ...]) -> None:
    # no data: a value the config lets through fails fast at the data stage instead of
    # training first (and then misses the key in its message)
    proc = run(tmp_path, *sets, data_dir=tmp_path / "no-data")
    assert_user_error(proc, str(TINY), *words)
    assert not (tmp_path / "runs").exists() and not (tmp_path / "first.duckdb").exists()


def test_config_file_with_a_wrong_type_and_one_that_is_not_toml(tmp_path: Path) -> None:
    for text, words in (('[topk]\nk = "five"\n', ("topk.k",)),
                        ("[topk\nk = 5\n", ("not valid TOML",))):
        bad = tmp_path / "bad.toml"
        bad.write_text(text)
        assert_user_error(cli("run", "--config", str(bad), cwd=tmp_path), str(bad), *words)
    assert not (tmp_path / "runs").exists()


# ------------------------------------------------------------------- against a finished run


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished small run (teacher, top-k, calibration, one FIRST student, store)."""
    work = tmp_path_factory.mktemp("finished")
    proc = run(work, 'methods=["teacher_ft","first_ts"]')
    assert proc.returncode == 0, proc.stderr[-3000:]
    return work


@pytest.fixture
def copy(finished: Path, tmp_path: Path) -> Path:
    """A private copy of the finished run (its data records still point at the original)."""
    work = tmp_path / "w"
    shutil.copytree(finished, work)
    return work


def rerun(work: Path, *sets: str, force: str, store: Path | None = None
          ) -> subprocess.CompletedProcess:
    """The finished run's command again, with `sets`, redoing stage `force` onwards.

    `data.dir` stays the one the run was made with (a copy's records point there): the
    config check refuses a change that reaches an earlier stage than `force`, even forced."""
    made = json.loads((work / "runs" / "tiny" / "config.json").read_text())["data"]["dir"]
    return run(work, 'methods=["teacher_ft","first_ts"]', f"data.dir='{made}'", *sets,
               store=store, extra=("--force", force))


def topk_dir(work: Path, split: str = "val") -> Path:
    return work / "runs" / "tiny" / "topk" / split


def edit_manifest(work: Path, **changes: object) -> None:
    path = topk_dir(work) / "manifest.json"
    raw = json.loads(path.read_text())
    path.write_text(json.dumps({**raw, **changes}))


def assert_calibration_not_redone(work: Path) -> None:
    assert "calibrate" not in records(work)
    assert not (work / "runs" / "tiny" / "calibration.json").exists()


def test_topk_store_for_another_data_set_is_refused(copy: Path) -> None:
    edit_manifest(copy, dataset_hash="0123456789abcdef")
    proc = rerun(copy, force="calibrate")
    assert_user_error(proc, str(topk_dir(copy) / "manifest.json"), "dataset_hash mismatch",
                      "0123456789abcdef")
    assert_calibration_not_redone(copy)


def test_topk_store_for_another_vocabulary_is_refused(copy: Path) -> None:
    vocab = json.loads((topk_dir(copy) / "manifest.json").read_text())["vocab_size"]
    edit_manifest(copy, vocab_size=vocab + 1000)
    proc = rerun(copy, force="calibrate")
    assert_user_error(proc, "vocab_size mismatch")


def test_topk_store_from_a_newer_schema_is_refused(copy: Path) -> None:
    edit_manifest(copy, schema_version=99)
    proc = rerun(copy, force="calibrate")
    assert_user_error(proc, str(topk_dir(copy) / "manifest.json"), "newer", "99")
    assert_calibration_not_redone(copy)


def test_truncated_parquet_shard_is_named(copy: Path) -> None:
    (shard,) = topk_dir(copy).glob("part-*.parquet")
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    proc = rerun(copy, force="calibrate")
    assert_user_error(proc, str(shard), "unreadable Parquet shard")
    assert_calibration_not_redone(copy)


def test_failed_forced_run_leaves_no_later_stage_marked_done(copy: Path) -> None:
    edit_manifest(copy, schema_version=99)
    assert rerun(copy, force="calibrate").returncode == 2
    assert not {"first_ts", "eval_first_ts", "store"} & records(copy)


def test_k_larger_than_the_vocabulary_is_refused_before_writing(copy: Path) -> None:
    # within the load-time cap (1000) but over the tiny vocabulary (47): the models are
    # there already, so the check before the first stage refuses it, naming file and key
    proc = rerun(copy, "topk.k=500", "topk.coverage_k=500", force="topk")
    assert_user_error(proc, f"{TINY}: topk.k: 500 is larger than the teacher's vocabulary")
    assert "topk" in records(copy)  # refused before --force removed anything
    assert (copy / "runs" / "tiny" / "topk" / "train").is_dir()  # its outputs kept
    proc = rerun(copy, "topk.k=100000", "topk.coverage_k=100000", force="topk")
    assert_user_error(proc, f"{TINY}: topk.k: must be in [1, 1000], got 100000")


def test_grid_with_no_valid_value_is_refused(copy: Path) -> None:
    proc = rerun(copy, "calibration.temperature_grid=[0.0, -1.0]", force="calibrate")
    assert_user_error(proc, "calibration.temperature_grid: no valid value", "[0.0, -1.0]")
    # refused while loading the config: the finished run is left exactly as it was
    assert "calibrate" in records(copy)
    assert (copy / "runs" / "tiny" / "calibration.json").exists()


def test_store_from_a_newer_schema_is_refused_and_left_alone(copy: Path) -> None:
    store = copy / "first.duckdb"
    with duckdb.connect(str(store)) as con:
        con.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
        n_runs = con.execute("SELECT count(*) FROM runs").fetchone()[0]
    done = records(copy)
    proc = rerun(copy, force="store")
    assert_user_error(proc, str(store), "schema version 99", "newer")
    with duckdb.connect(str(store), read_only=True) as con:
        assert con.execute("SELECT count(*) FROM runs").fetchone()[0] == n_runs
    assert records(copy) == done  # refused before the first stage: no record touched


def test_file_that_is_not_duckdb_is_refused_and_left_alone(copy: Path) -> None:
    junk = copy / "notes.duckdb"
    junk.write_text("these are my notes, not a database\n" * 50)
    before, done = junk.read_bytes(), records(copy)
    proc = rerun(copy, force="store", store=junk)
    assert_user_error(proc, str(junk), "not a DuckDB database file")
    assert junk.read_bytes() == before
    assert records(copy) == done  # refused before the first stage: no record touched


def test_model_path_without_safetensors_weights_is_refused(copy: Path) -> None:
    bare = copy / "my-model"
    bare.mkdir()
    init = copy / "runs" / "tiny" / "models" / "teacher_init"
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        shutil.copy(init / name, bare / name)
    (bare / "pytorch_model.bin").write_bytes(b"a pickle would run code when loaded")
    proc = rerun(copy, f"model.teacher='{bare}'", force="models")  # the first it affects
    assert_user_error(proc, f"model directory {bare}", "missing", "model.safetensors",
                      "pytorch_model.bin", "pickle", "refused")
    assert "teacher_ft" not in records(copy)
    assert not (copy / "runs" / "tiny" / "models" / "teacher_ft").exists()
