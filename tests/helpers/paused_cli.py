"""`python -m first_core` that parks itself at a chosen point, so a test can kill -9 it there.

Killing a run "during top-k extraction" by timing alone is a race: on a fast machine the
stage is over before the signal lands. This wrapper runs the real CLI unchanged except that,
at the point named by `$PAUSE_AT`, it touches `$PAUSE_MARKER` and sleeps; the test waits for
the marker and sends SIGKILL. Nothing is computed differently, so the rerun (the plain CLI)
must produce exactly what an uninterrupted run produces.

PAUSE_AT=topk        after the first Parquet shard of the train split is written (the store
                     sits half-built in its `.train.partial` folder, without a manifest)
PAUSE_AT=student_ft  after the Trainer has fully written checkpoint-`$PAUSE_STEP` of the
                     student_ft stage (the model is not final yet)
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from transformers import TrainerCallback

from first_core import __main__ as cli
from first_core.training import sft as finetune
from first_core.knowledge import shards


def _park() -> None:
    Path(os.environ["PAUSE_MARKER"]).touch()
    time.sleep(3600)  # the test kills us long before this ends


def _pause_in_topk() -> None:
    original = shards.ShardWriter._write

    def write(self: shards.ShardWriter, n: int) -> None:
        original(self, n)
        if self.folder.name == ".train.partial":
            _park()

    shards.ShardWriter._write = write


class _ParkAfterSave(TrainerCallback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_save(self, args, state, control, **kwargs):  # noqa: ANN001 - Trainer's signature
        if state.global_step == self.step and Path(args.output_dir).name == "student_ft":
            _park()


def _pause_in_student_ft() -> None:
    original = finetune.train_and_save

    def train_and_save(trainer, out_dir, *args):  # noqa: ANN001, ANN202 - as the original
        trainer.add_callback(_ParkAfterSave(int(os.environ.get("PAUSE_STEP", "4"))))
        return original(trainer, out_dir, *args)

    finetune.train_and_save = train_and_save


if __name__ == "__main__":
    {"topk": _pause_in_topk, "student_ft": _pause_in_student_ft}[os.environ["PAUSE_AT"]]()
    sys.exit(cli.main(sys.argv[1:]))
