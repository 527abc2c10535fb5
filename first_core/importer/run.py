"""`python -m first_core import PATH`: any supported file or folder into the store.

`importers.convert` turns PATH (the importer's own table, an lm-eval output folder or samples
file, an OpenAI Batch output with `--gold`, lighteval details, or a .zip of a folder) into
runs of the importer's per-option layout; each run is then validated by
`importer.validate_cells` exactly like a CSV, its metrics computed, and all runs are stored
in one transaction (`store_imports.write_imported_runs`): one pipeline per run, named after
its task (see `_pipeline`). Nothing is written when any check fails.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from . import formats as importers
from ..errors import DataError
from .table import NAME, run_rows, validate_cells
from .formats.base import ConvertedRun
from ..store.imports import ImportRows, check_import, write_imported_runs

WORKERS = 2  # the machines this is sized for have two cores


@dataclass(frozen=True)
class ImportResult:
    """What `import_file` stored: the store, (pipeline, run id, rows) per run, and notes
    for the user (what was skipped or not found, e.g. options missing from a top-k)."""

    store: Path
    runs: list[tuple[str, str, int]]
    notes: list[str]


def _pipeline(run: ConvertedRun, name: str | None, tasks: int) -> str:
    """A run's pipeline name: NAME for a table or Batch file; for a tool's tasks the task
    (NAME itself when NAME is given for one task, NAME-TASK for several), plus the run's
    variant (`TASK-acc_norm`)."""
    if run.task is None:
        if not name:
            raise DataError("--name: required for this file (it names no task)", run.path)
        base = name
    else:
        base = name if name and tasks == 1 else "-".join(p for p in (name, run.task) if p)
    full = f"{base}-{run.variant}" if run.variant else base
    if not NAME.fullmatch(full):
        raise DataError(f"pipeline name {full!r}: 1-64 letters, digits, '.', '_' or '-'; "
                        "give a shorter --name", run.path)
    return full


def _check_accuracy(metric_rows: pd.DataFrame, expected: tuple[float, str]) -> None:
    """The tool's own accuracy (value, where it is written) must be what is stored."""
    value, where = expected
    got = metric_rows.loc[(metric_rows["convention"] == "paper")
                          & (metric_rows["metric"] == "accuracy"), "value"].to_list()
    if got != [value]:
        raise DataError(f"the tool reports accuracy {value!r}, its per-item rows give "
                        f"{got[0] if got else None!r}: the files are not from one run", where)


def import_file(path: str | Path, name: str | None = None,
                store_path: str | Path | None = None, model: str | None = None,
                fmt: str = "auto", gold: str | Path | None = None) -> ImportResult:
    """Convert, validate and store PATH (see the module docstring); `model` overrides the
    model name a tool's files give."""
    if name is not None and not NAME.fullmatch(name):
        raise DataError("--name: 1-64 letters, digits, '.', '_' or '-', starting with a letter "
                        f"or digit; got {name!r}")
    converted = importers.convert(Path(path), fmt, gold=Path(gold) if gold else None)
    tasks = len({r.task for r in converted.runs})
    names = [_pipeline(r, name, tasks) for r in converted.runs]
    if len(set(names)) != len(names):
        dup = sorted({n for n in names if names.count(n) > 1})
        raise DataError(f"several runs would be named {dup}; import them one by one", path)
    for pipeline in names:
        check_import(store_path, pipeline)

    def rows_of(run: ConvertedRun, pipeline: str) -> ImportRows:
        preds, examples = validate_cells(run.cells, run.path, run.choices)
        one = run_rows(preds, examples, pipeline, model or run.model or "unknown",
                       {"imported_from": run.path.name, **run.config}, run.path)
        if run.expected_accuracy is not None:
            _check_accuracy(one.metrics.loc[one.metrics["split"] == "test"],
                            run.expected_accuracy)
        return one

    # the runs are independent (their own frames, seeded bootstraps): two threads overlap
    # the numpy / Arrow work of one with the Python of another; results and the first
    # error come back in the runs' order, so messages do not depend on timing
    workers = min(WORKERS, len(converted.runs))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        rows = list(pool.map(rows_of, converted.runs, names))
    written = write_imported_runs(store_path, rows)
    return ImportResult(written, [(r.pipeline, r.run_id, len(r.predictions)) for r in rows],
                        converted.notes)
