"""Imported predictions in the store (`python -m first_core import`): their own namespace and
their one-transaction write.

An import NAME is pipeline NAME with one run, `NAME/imported/seed0` (method `imported`), and
files its question texts under the data set key `import:NAME` (`dataset_key`). The pipeline's
own runs key theirs by a data set hash, which holds no ':', so neither can overwrite the
other's. A NAME that is already a pipeline of this project's own runs, or a data set key in
the store, is refused, so one name never means two things on the dashboard. Re-importing
NAME replaces everything the earlier import wrote: its runs row, predictions, metrics and
every question text, whichever splits they were in.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import pandas as pd

from ..config.settings import METHODS
from ..errors import FirstError, StoreError
from .connection import WRITE_TIMEOUT_S, connect, open_readonly, transaction
from .paths import default_store_path
from .schema import IMPORT_PREFIX, IMPORTED_METHOD, TABLES, RunRecord
from .writes import insert_frame, insert_run, validate_frame


def dataset_key(name: str) -> str:
    """The `runs.dataset` / `examples.dataset` of import `name`."""
    return IMPORT_PREFIX + name


def _refusal(con: duckdb.DuckDBPyConnection, name: str) -> str | None:
    """Why `name` cannot be imported into this store, or None."""
    owners = {r[0] for r in con.execute(
        "SELECT DISTINCT method FROM runs WHERE pipeline = ? AND method <> ?",
        [name, IMPORTED_METHOD]).fetchall()}
    if owners:
        return (f"pipeline {name!r} holds this project's own runs ({sorted(owners)}); "
                "import under another name")
    users = sorted(str(r[0]) for r in con.execute(
        "SELECT DISTINCT pipeline FROM runs WHERE dataset = ? AND method <> ?",
        [name, IMPORTED_METHOD]).fetchall())
    texts = con.execute("SELECT count(*) FROM examples WHERE dataset = ?", [name]).fetchall()
    if users or texts[0][0]:
        whose = f"the runs of pipeline(s) {users}" if users else "question texts in this store"
        return (f"name {name!r} is the data set key of {whose}; import under another name "
                "(a name that is also a data set key would mix up whose questions are whose)")
    return None


def check_import(path: str | os.PathLike[str] | None, name: str) -> None:
    """What can be refused before a long read of the file: a store path under a file, or a
    name the store refuses (checked again, under the write's lock, by `write_imported_run`)."""
    target = default_store_path(path)
    if not target.exists():
        blocker = next((p for p in target.parents if p.exists()), None)
        if blocker is not None and not blocker.is_dir():
            raise FirstError(f"store {target}: {blocker} is a file, not a folder")
        return
    with open_readonly(target) as con:
        why = _refusal(con, name)
    if why:
        raise StoreError(f"store {target}: {why}")


@dataclass(frozen=True)
class ImportRows:
    """One imported run's rows (`examples` without `dataset`: they go under
    `dataset_key(pipeline)`)."""

    pipeline: str
    run_id: str
    model: str
    predictions: pd.DataFrame
    metrics: pd.DataFrame
    examples: pd.DataFrame | None = None
    config: Mapping[str, Any] = field(default_factory=dict)


def write_imported_run(path: str | os.PathLike[str] | None, pipeline: str, run_id: str,
                       model: str, predictions: pd.DataFrame, metrics: pd.DataFrame,
                       examples: pd.DataFrame | None = None,
                       config: Mapping[str, Any] | None = None,
                       timeout: float = WRITE_TIMEOUT_S) -> Path:
    """`write_imported_runs` of one run."""
    return write_imported_runs(path, [ImportRows(pipeline, run_id, model, predictions,
                                                 metrics, examples, dict(config or {}))],
                               timeout)


def write_imported_runs(path: str | os.PathLike[str] | None, runs: Sequence[ImportRows],
                        timeout: float = WRITE_TIMEOUT_S) -> Path:
    """Store other models' predictions, one pipeline per run, in one transaction: each
    run's runs row, predictions, metrics and question texts land whole or not at all (all
    runs together: an lm-eval folder of 57 tasks is stored whole or not at all), each
    replacing an earlier import of the same name whole. A refused name raises `StoreError`
    and writes nothing."""
    names = [r.pipeline for r in runs]
    if not runs or len(set(names)) != len(names):
        raise ValueError(f"pipelines {names}: must be non-empty and distinct")
    if any(not r.pipeline or not r.run_id for r in runs):
        raise ValueError("pipeline, run_id: must be non-empty")
    # one INSERT per table for all runs (57 lm-eval tasks: 3 inserts, not 171)
    tables = {name: pd.concat([getattr(r, name).assign(run_id=r.run_id) for r in runs],
                              ignore_index=True) for name in ("predictions", "metrics")}
    texts = [r.examples.assign(dataset=dataset_key(r.pipeline)) for r in runs
             if r.examples is not None and len(r.examples)]
    for run in runs:  # per run: a table's unique keys hold within one run
        for name, fixed in (("predictions", {"run_id": run.run_id}),
                            ("metrics", {"run_id": run.run_id}),
                            ("examples", {"dataset": dataset_key(run.pipeline)})):
            if getattr(run, name) is not None:
                validate_frame(TABLES[name], getattr(run, name), fixed)
    if texts:
        texts = [pd.concat(texts, ignore_index=True)]
    target = default_store_path(path)
    with connect(target, read_only=False, timeout=timeout) as con, transaction(con):
        for run in runs:
            _clear_import(con, target, run)
        for name, frame in tables.items():
            insert_frame(con, TABLES[name], frame, {})
        if texts:
            insert_frame(con, TABLES["examples"], texts[0], {})
    return target


def _clear_import(con: duckdb.DuckDBPyConnection, target: Path, run: ImportRows) -> None:
    """Inside the caller's transaction: refuse a taken name, else delete what an earlier
    import of the name stored and write the new runs row."""
    key = dataset_key(run.pipeline)
    why = _refusal(con, run.pipeline)
    if why:
        raise StoreError(f"store {target}: {why}")
    row = RunRecord(run_id=run.run_id, method=METHODS[0], model=run.model, dataset=key,
                    seed=0, config=dict(run.config), pipeline=run.pipeline).row()
    row[1] = IMPORTED_METHOD  # RunRecord checks the project's own methods; this is not one
    old = [r[0] for r in con.execute("SELECT run_id FROM runs WHERE pipeline = ?",
                                     [run.pipeline]).fetchall()] + [run.run_id]
    for name in ("predictions", "metrics", "runs"):
        con.execute(f'DELETE FROM "{name}" WHERE list_contains(?, run_id)', [old])
    con.execute("DELETE FROM examples WHERE dataset = ?", [key])
    insert_run(con, row)
