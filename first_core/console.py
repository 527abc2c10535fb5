"""What the command line shows while a pipeline runs, and what it keeps quiet.

A run used to print every library's own chatter: a "Loading weights" / "Writing model shards"
bar on every load and save, and the Trainer's log dict on every logging step (358 lines for
the three-seed demo). The CLI now shows one line per stage, one progress bar per training
stage (steps, loss, time left) on a terminal only, and for several seeds one summary line
per seed; `--verbose` gives everything back. Nothing here changes what is recorded: the
Trainer's `log_history` still goes to each checkpoint's `trainer_state.json` (and
`training.trainer.train_and_save` keeps all of it beside the final model).

The pipeline knows nothing of this: it says `StageLine`s, which are plain strings to any
other `echo`. A library caller that never calls `configure` keeps the libraries' defaults.
Importing this module loads no first_core module and no torch; transformers is imported
only inside its functions, which the CLI calls after pinning the CPU kernels (numerics.py).
"""

from __future__ import annotations

import logging
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from types import ModuleType
from typing import Any, TextIO

CLEAR = "\r\033[K"  # back to the start of the terminal line and erase it


@dataclass
class _State:
    verbose: bool | None = None  # set by `configure`; None: the libraries' own defaults
    label: str | None = None  # the running stage, as its progress bar names it

    @property
    def quiet(self) -> bool:
        return self.verbose is False


_STATE = _State()


def configure(verbose: bool | None) -> None:
    """Quiet the libraries (their logs below ERROR, their progress bars) unless `verbose`,
    in which case their defaults come back (None: back to not configured, as a library
    caller has it). Imports transformers' logging module: call it after
    `numerics.pin_cpu_kernels`."""
    _STATE.verbose = verbose
    verbose = verbose is not False
    level = logging.WARNING if verbose else logging.ERROR
    from transformers.utils import logging as hf_logging  # its bars are huggingface_hub's too
    hf_logging.set_verbosity(level)
    (hf_logging.enable_progress_bar if verbose else hf_logging.disable_progress_bar)()
    from huggingface_hub.utils import logging as hub_logging
    hub_logging.set_verbosity(level)
    # accelerate logs through python's logging alone: back to inheriting the root's level
    logging.getLogger("accelerate").setLevel(logging.NOTSET if verbose else logging.ERROR)
    if "datasets" in sys.modules:  # else when hf_data imports it (a second of import time)
        _datasets_switches(quiet=not verbose)


def configure_datasets() -> None:
    """datasets' logging and bars as `configure` set the other libraries' (nothing when it
    was never called). `hf_data` calls this once it has imported datasets."""
    if _STATE.verbose is not None:
        _datasets_switches(quiet=_STATE.quiet)


@contextmanager
def quiet_module_bars(module: ModuleType):
    """When quiet (`configure`): inside this block the tqdm bars that `module` draws with its
    own `tqdm` import, which no library switch reaches, are off. Transformers' GGUF
    conversion is one such module: it drew a bar of 17 frames into the demo's log."""
    bar = getattr(module, "tqdm", None)
    if not _STATE.quiet or bar is None:
        yield
        return
    module.tqdm = partial(bar, disable=True)
    try:
        yield
    finally:
        module.tqdm = bar


def _datasets_switches(quiet: bool) -> None:
    import datasets
    datasets.utils.logging.set_verbosity(logging.ERROR if quiet else logging.WARNING)
    (datasets.disable_progress_bars if quiet else datasets.enable_progress_bars)()


class StageLine(str):
    """One of `pipeline.run`'s stage lines: its usual text for any `echo`, and its parts for
    `StageEcho`. `status` is "start", "done" (with `seconds`) or "skipped"."""

    index: int
    total: int
    name: str
    status: str
    seconds: float | None

    def __new__(cls, index: int, total: int, name: str, status: str,
                seconds: float | None = None) -> StageLine:
        head = f"[{index}/{total}] {name}"
        text = {"start": f"{head} ...", "skipped": f"{head}: done earlier, skipped",
                "done": f"{head}: done in {seconds or 0:.1f} s"}[status]
        line = super().__new__(cls, text)
        line.index, line.total, line.name, line.status, line.seconds = (
            index, total, name, status, seconds)
        return line

    @property
    def head(self) -> str:
        return f"[{self.index}/{self.total}] {self.name}"


class StageEcho:
    """The CLI's `echo` for one `pipeline.run` when not verbose.

    Alone (`seed=None`): one line per stage, "[3/15] teacher_ft ... done in 2.0 s", begun
    when the stage starts (a killed run shows where it was) and finished when it ends. For
    one of several seeds (`seed="[seed 0, 1/3]"`): the stages show only on a terminal, on
    one line that each next stage overwrites, and `summary` prints the seed's one line. Used
    as a context manager, it prints the running stage with "failed" when the run raises.
    `plain` (--verbose): every line as `print` would show it, two per stage, as before.
    """

    def __init__(self, seed: str | None = None, plain: bool = False,
                 out: TextIO | None = None) -> None:
        self.seed, self.plain = seed, plain
        self.out = out or sys.stdout
        self.tty = self.out.isatty()
        self.running: str | None = None  # the started stage's label, until it ends
        self.shown = False  # its begun line is on screen, unfinished
        self.ran = self.skipped = 0
        self.t0 = time.perf_counter()

    def __call__(self, line: str) -> None:
        if self.plain or not isinstance(line, StageLine):
            self._break()
            self._write(f"{line}\n")
            return
        label = f"{self.seed} {line.head}" if self.seed else line.head
        if line.status == "skipped":
            self.skipped += 1
            if self.seed is None:
                self._break()
                self._write(f"{line}\n")
        elif line.status == "start":
            self._break()
            self.running = _STATE.label = label
            if self.seed is None or self.tty:
                self._write(f"{label} ...")
                self.shown = True
        else:
            self.ran += 1
            if self.seed is not None:
                self._write(CLEAR if self.tty else "")
            else:  # on a terminal a progress bar may have drawn over the begun line
                self._write(f"{self._begun(label)} done in {line.seconds or 0:.1f} s\n")
            self.running = _STATE.label = None
            self.shown = False

    def summary(self) -> None:
        """The seed's line: how many stages ran, in how long, how many were done earlier."""
        self._break()
        n = self.ran + self.skipped
        took = f"done in {time.perf_counter() - self.t0:.1f} s"
        if not self.skipped:
            what = f"{n} stages {took}"
        elif not self.ran:
            what = f"{n} stages: all done earlier, skipped"
        else:
            what = f"{n} stages: {self.skipped} done earlier, {self.ran} {took}"
        self._write(f"{self.seed} {what}\n" if self.seed else f"{what}\n")

    def __enter__(self) -> StageEcho:
        return self

    def __exit__(self, kind, exc, tb) -> bool:
        if kind is not None and self.running is not None:
            what = "interrupted" if issubclass(kind, KeyboardInterrupt) else "failed"
            self._write(f"{self._begun(self.running)} {what}\n")
        self.running = _STATE.label = None
        self.shown = False
        return False

    def _begun(self, label: str) -> str:
        """What completes the running stage's line: nothing where its begun line still
        stands, the whole begun line again where it does not (a terminal line a progress
        bar drew over is erased first)."""
        if self.tty:
            return f"{CLEAR}{label} ..."
        return "" if self.shown else f"{label} ..."

    def _break(self) -> None:
        """End a begun line before another line is written (it is finished in full)."""
        if self.shown:
            self._write(CLEAR if self.tty else "\n")
            self.shown = False

    def _write(self, text: str) -> None:
        if text:
            self.out.write(text)
            self.out.flush()


def training_bar(label: str, stream: TextIO | None = None):
    """A `TrainerCallback` drawing one progress bar (steps, last logged loss, time left) on
    `stream` (stderr) when it is a terminal, on the local main process; nothing otherwise."""
    from tqdm.auto import tqdm
    from transformers import TrainerCallback

    class TrainingBar(TrainerCallback):
        def __init__(self) -> None:
            self.bar = None

        def on_train_begin(self, args, state, control, **kwargs: Any):
            out = stream or sys.stderr
            if state.is_local_process_zero and out.isatty():
                self.bar = tqdm(total=state.max_steps, initial=state.global_step, desc=label,
                                unit="step", leave=False, dynamic_ncols=True, file=out)

        def on_step_end(self, args, state, control, **kwargs: Any):
            if self.bar is not None:
                self.bar.update(state.global_step - self.bar.n)

        def on_log(self, args, state, control, logs=None, **kwargs: Any):
            loss = (logs or {}).get("loss")
            if self.bar is not None and isinstance(loss, (int, float)):
                self.bar.set_postfix(loss=f"{loss:.4g}")

        def on_train_end(self, args, state, control, **kwargs: Any):
            if self.bar is not None:
                self.bar.close()
                self.bar = None

    return TrainingBar()


def quiet_trainer(trainer, default_label: str) -> None:
    """When quiet (`configure`): the Trainer's own log printer and progress bar give way to
    `training_bar`, named after the running stage. Its `log_history` is untouched (the
    Trainer records it before any callback runs, and saves it with every checkpoint)."""
    if not _STATE.quiet:
        return
    from transformers.trainer import DEFAULT_PROGRESS_CALLBACK
    from transformers.trainer_callback import PrinterCallback, ProgressCallback
    for cls in {PrinterCallback, ProgressCallback, DEFAULT_PROGRESS_CALLBACK}:
        trainer.remove_callback(cls)
    trainer.add_callback(training_bar(_STATE.label or default_label))
