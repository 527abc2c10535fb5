"""Issue 30 item 18: the CLI says one line per stage (one per seed for several seeds), draws
one progress bar per training stage on a terminal only, keeps the libraries' chatter off
unless --verbose, and still records the Trainer's full training log.

Two seeds of a small tiny run (teacher and student SFT only: 7 stages) through the real CLI,
then two one-stage reruns: quiet with stderr on a pseudo-terminal, and --verbose.
"""

from __future__ import annotations

import fcntl
import io
import json
import os
import pty
import struct
import subprocess
import sys
import termios
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest
from test_bad_inputs import SMALL, TINY, cli

from first_core.console import CLEAR, StageEcho, StageLine, training_bar
from first_core.training.trainer import TRAINING_LOG

PLAIN = 'methods=["teacher_ft","student_ft"]'  # no top-k, no distillation: 7 stages
CHATTER = ("Loading weights", "Writing model shards", "train_runtime", "{'", "it/s]")


def args(work: Path, *extra: str) -> list[str]:
    sets = [*SMALL, PLAIN, "teacher_train.save_steps=2", "student_train.save_steps=2",
            f"runs_dir='{work / 'runs'}'", f"data.dir='{work / 'data'}'"]
    return ["run", "--config", str(TINY), "--store", str(work / "first.duckdb"),
            *[a for s in sets for a in ("--set", s)], *extra]


def run_with_tty_stderr(argv: list[str], cwd: Path) -> tuple[int, str, str]:
    """The CLI with stdout a pipe and stderr a pseudo-terminal: (status, stdout, terminal)."""
    master, slave = pty.openpty()
    # 24 x 200: a new pseudo-terminal is 0 columns wide, where tqdm draws nothing
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 200, 0, 0))
    proc = subprocess.Popen([sys.executable, "-m", "first_core", *argv], cwd=cwd,
                            stdout=subprocess.PIPE, stderr=slave, text=True,
                            env={**os.environ, "PYTHONPATH": str(Path(TINY).parents[1]),
                                 "OMP_NUM_THREADS": "1"})
    os.close(slave)
    seen: list[bytes] = []

    def drain() -> None:  # a full terminal buffer would block the run
        while True:
            try:
                chunk = os.read(master, 4096)
            except OSError:  # the last writer closed it
                return
            if not chunk:
                return
            seen.append(chunk)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    out, _ = proc.communicate(timeout=300)
    reader.join(timeout=10)
    os.close(master)
    return proc.returncode, out, b"".join(seen).decode(errors="replace")


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict:
    work = tmp_path_factory.mktemp("console")
    two = cli(*args(work, "--seeds", "0", "1"), cwd=work)
    assert two.returncode == 0, two.stderr[-3000:]
    tty = run_with_tty_stderr(args(work, "--seeds", "0", "--force", "student_ft"), work)
    assert tty[0] == 0, tty[2][-3000:]
    loud = cli(*args(work, "--seeds", "0", "--force", "student_ft", "--verbose"), cwd=work)
    assert loud.returncode == 0, loud.stderr[-3000:]
    return {"work": work, "two": two, "tty": tty, "loud": loud}


def test_two_seeds_print_one_line_per_seed_and_the_table(runs) -> None:
    two = runs["two"]
    lines = two.stdout.splitlines()
    # 2 seed lines + Table 1 (4 rows: each method and its post-hoc row) + the post-hoc
    # temperatures (2 rows); it was 35 lines before the console was quieted
    assert len(lines) <= 22, two.stdout
    assert sum(line.startswith("[seed 0, 1/2] 9 stages done in ") for line in lines) == 1
    assert sum(line.startswith("[seed 1, 2/2] 9 stages done in ") for line in lines) == 1
    assert "| student_ft |" in two.stdout
    assert not any(word in two.stdout + two.stderr for word in CHATTER), two.stderr[-2000:]
    assert two.stderr.strip() == ""


def test_the_training_log_is_still_recorded(runs) -> None:
    """The losses the console no longer prints: in every checkpoint's trainer_state.json as
    before, and all of the log, with the end-of-training summary, beside the final model."""
    for seed in (0, 1):
        models = runs["work"] / "runs" / "tiny" / f"seed{seed}" / "models"
        for method in ("teacher_ft", "student_ft"):
            (state,) = (models / method).glob("checkpoint-*/trainer_state.json")
            history = json.loads(state.read_text())["log_history"]
            assert [h["step"] for h in history if "loss" in h] == [2, 4]
            log = json.loads((models / method / "final" / TRAINING_LOG).read_text())
            assert log[:-1] == history and "train_loss" in log[-1]


def test_one_seed_prints_one_line_per_stage_and_a_bar_on_the_terminal(runs) -> None:
    status, out, terminal = runs["tty"]
    for i, name in enumerate(("data", "models", "teacher_ft"), 1):
        assert f"[{i}/9] {name}: done earlier, skipped\n" in out
    for i, name in ((4, "student_ft"), (6, "eval_student_ft"), (8, "posthoc_student_ft"),
                    (9, "store")):
        assert sum(line.startswith(f"[{i}/9] {name} ") for line in out.splitlines()) == 1
        assert f"[{i}/9] {name} ... done in " in out
    assert not any(word in out + terminal for word in CHATTER), terminal[-2000:]
    # the one training stage drew its bar, named after it, with steps and the logged loss
    assert "[4/9] student_ft:" in terminal and "4/4" in terminal and "loss=" in terminal
    assert terminal.count("loss=") >= 1 and "teacher_ft" not in terminal


def test_verbose_brings_the_libraries_and_the_trainer_back(runs) -> None:
    loud = runs["loud"]
    assert "Loading weights" in loud.stderr and "Writing model shards" in loud.stderr
    assert "'train_runtime'" in loud.stdout and "'loss'" in loud.stdout
    assert "[4/9] student_ft ...\n" in loud.stdout and "[4/9] student_ft: done in" in loud.stdout


def state(step: int, max_steps: int = 10, main: bool = True) -> SimpleNamespace:
    return SimpleNamespace(global_step=step, max_steps=max_steps, is_local_process_zero=main)


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def drive(stream: io.StringIO, main: bool = True) -> str:
    bar = training_bar("[3/15] teacher_ft", stream=stream)
    bar.on_train_begin(None, state(0, main=main), None)
    for step in range(1, 11):
        bar.on_step_end(None, state(step, main=main), None)
        if step % 5 == 0:
            bar.on_log(None, state(step, main=main), None, logs={"loss": 1.25 / step})
    bar.on_train_end(None, state(10, main=main), None)
    return stream.getvalue()


def test_the_progress_bar_renders_only_on_a_terminal_of_the_main_process() -> None:
    shown = drive(Terminal())
    assert "[3/15] teacher_ft" in shown and "10/10" in shown and "loss=0.125" in shown
    assert drive(io.StringIO()) == ""
    assert drive(Terminal(), main=False) == ""


def test_a_stage_line_is_finished_in_place_or_rewritten_after_a_bar() -> None:
    """The begun line is completed on a pipe; on a terminal it is written again (a bar may
    have drawn over it); a failing stage is named."""
    for stream, done in ((io.StringIO(), "[2/3] models ... done in 1.2 s\n"),
                         (Terminal(), f"[2/3] models ...{CLEAR}[2/3] models ... done in 1.2 s\n")):
        echo = StageEcho(out=stream)
        echo(StageLine(2, 3, "models", "start"))
        echo(StageLine(2, 3, "models", "done", 1.23))
        with pytest.raises(ValueError), echo:
            echo(StageLine(3, 3, "teacher_ft", "start"))
            raise ValueError
        assert stream.getvalue().startswith(done)
        assert stream.getvalue().endswith("teacher_ft ... failed\n")
    assert str(StageLine(2, 3, "models", "done", 1.23)) == "[2/3] models: done in 1.2 s"


DATASETS_RUN = """
import sys
from first_core.console import configure
configure(sys.argv[2] == "verbose")
assert "datasets" not in sys.modules  # imported by hf_rows, after configure
import datasets
datasets.config.HF_HUB_OFFLINE = True
datasets.config.HF_DATASETS_CACHE = sys.argv[1] + "/cache"
from first_core.data.hf_data import hf_rows
assert len(hf_rows(sys.argv[1], "train")[0]) == 2
"""


@pytest.mark.parametrize("mode", ["quiet", "verbose"])
def test_datasets_bars_follow_the_console(tmp_path, mode) -> None:
    """datasets is imported only for `[data] hf_dataset`, after `configure`: its bars are
    quieted then (hf_data applies the console's choice), and --verbose keeps them."""
    pytest.importorskip("datasets")
    (tmp_path / "train.jsonl").write_text('{"id": 1}\n{"id": 2}\n')
    proc = subprocess.run([sys.executable, "-c", DATASETS_RUN, str(tmp_path), mode],
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(Path(TINY).parents[1])})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert ("Generating train split" in proc.stderr) == (mode == "verbose"), proc.stderr


GGUF_RUN = """
import sys
from first_core import console
from first_core.models.builds import convert_gguf
from transformers import modeling_gguf_pytorch_utils as gguf_loading
console.configure(verbose=False)  # as the CLI without --verbose
before = gguf_loading.tqdm
convert_gguf(sys.argv[1], sys.argv[2])
assert gguf_loading.tqdm is before, "the module's tqdm was not given back"
"""


def test_the_gguf_conversion_draws_no_bar_when_quiet(tmp_path) -> None:
    """Transformers' GGUF conversion imports tqdm itself, out of reach of its progress-bar
    switch: the demo's log held its 17-frame "de-quantizing" bar."""
    from helpers.smollm2 import smollm2_missing

    from first_core.pipeline.pretrained_coverage import MODEL
    if (why := smollm2_missing()) is not None:
        pytest.skip(why)
    proc = subprocess.run([sys.executable, "-c", GGUF_RUN, MODEL, str(tmp_path / "built")],
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(Path(TINY).parents[1])})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (tmp_path / "built" / "model.safetensors").exists()
    assert "de-quantizing" not in proc.stderr and "it/s]" not in proc.stderr, proc.stderr[-2000:]


@pytest.mark.parametrize("verbose", [False, True, None])
def test_a_modules_own_bars_are_off_only_while_quiet(verbose) -> None:
    from tqdm import tqdm

    from first_core.console import configure, quiet_module_bars
    module = SimpleNamespace(tqdm=tqdm)
    configure(verbose)
    try:
        with quiet_module_bars(module):
            out = io.StringIO()
            for _ in module.tqdm(range(3), file=out, desc="bar"):
                pass
        assert ("bar" in out.getvalue()) == (verbose is not False)
        assert module.tqdm is tqdm
    finally:
        configure(None)
