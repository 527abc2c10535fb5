"""A pretrained model's top-k coverage in the store, read as it was pretrained: its own
pipeline with one `runs` row (method `pretrained_zero_shot`, no predictions or metrics) and
its `topk_coverage` rows (`first_core/pipeline/pretrained_coverage.py` writes it).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from ..config.settings import METHODS
from .connection import WRITE_TIMEOUT_S, connect, transaction
from .paths import default_store_path
from .schema import PRETRAINED_METHOD, TABLES, RunRecord
from .writes import insert_frame, insert_run, validate_frame

def write_pretrained_coverage(path: str | os.PathLike[str] | None, pipeline: str, run_id: str,
                              model: str, dataset: str, coverage: pd.DataFrame,
                              config: Mapping[str, Any] | None = None,
                              timeout: float = WRITE_TIMEOUT_S) -> Path:
    """Store a pretrained model's top-k coverage, read as it was pretrained (no fine-tuning),
    as run `run_id` of pipeline `pipeline`: its runs row (method `pretrained_zero_shot`, no
    predictions or metrics) and its `topk_coverage` rows, in one transaction that replaces
    what this run id held before (`first_core/pipeline/pretrained_coverage.py` writes it)."""
    if not pipeline or not run_id:
        raise ValueError("pipeline, run_id: must be non-empty")
    fixed = {"run_id": run_id}
    validate_frame(TABLES["topk_coverage"], coverage, fixed)
    store = default_store_path(path)
    row = RunRecord(run_id=run_id, method=METHODS[0], model=model, dataset=dataset, seed=0,
                    config=dict(config or {}), pipeline=pipeline).row()
    row[1] = PRETRAINED_METHOD  # RunRecord checks the project's trained methods; not one
    with connect(store, read_only=False, timeout=timeout) as con, transaction(con):
        for name in ("predictions", "metrics", "topk_coverage", "runs"):
            con.execute(f'DELETE FROM "{name}" WHERE run_id = ?', [run_id])
        insert_run(con, row)
        insert_frame(con, TABLES["topk_coverage"], coverage, fixed)
    return store
