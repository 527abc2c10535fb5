"""A store whose pipeline `demo` holds runs of two configs (issue 23 item 2): seeds 0 and 2
with the defaults (seed 2 also from another runs_dir and store: not another config), seed 1
with other settings, as two `run`s with the same `name` would leave it."""

from __future__ import annotations

import json
from pathlib import Path

import duckdb

from first_core.config.loading import load_config
from first_core.fixtures import write_fixture_store

OTHER = ["teacher_train.epochs=2", "calibration.strategy='nll'", "distill.student_side='renorm'",
         "distill.ce_weight=0.5", "topk.dtype='float16'"]
DIFFERING = ("teacher_train.epochs", "calibration.strategy", "distill.student_side",
             "distill.ce_weight", "topk.dtype")
SETTINGS = {0: ["name='demo'", "seed=0"],
            1: ["name='demo'", "seed=1", *OTHER],
            2: ["name='demo'", "seed=2", "runs_dir='elsewhere'", "store='other.duckdb'"]}


def write_mixed_store(path: Path) -> Path:
    for seed, sets in SETTINGS.items():
        write_fixture_store(path, 40, seed=seed, pipeline="demo")
        with duckdb.connect(str(path)) as con:
            con.execute("UPDATE runs SET config = ? WHERE pipeline = 'demo' AND seed = ?",
                        [json.dumps(load_config(None, sets).to_dict()), seed])
    return path
