"""Import any model's predictions into the store, so every dashboard page works on them.
(Other tools' files, lm-evaluation-harness, OpenAI Batch logprobs and lighteval, are
converted to this module's per-option layout by `importers` and checked here too:
`importing.import_file`.)

    python -m first_core import FILE --name NAME [--store PATH] [--model MODEL]

FILE is CSV, Parquet or JSONL (by its suffix: .csv, .parquet / .pq, .jsonl / .ndjson), one
prediction per row, in one of two layouts:

- **per-option probabilities**: one column `p_<LABEL>` per answer option (at least two,
  e.g. `p_A, p_B, p_C, p_D`), each in [0, 1] with a row sum in (0, 1] (the rest of the
  vocabulary may keep some mass; a sum up to 1 + `metrics.checks.ROW_SUM_TOL` is taken as
  rounding, e.g. a softmax written with 6 decimals), and `gold`, the correct option's LABEL;
- **confidence + correct**: `confidence` in (0, 1] (the model's probability for its own
  answer: the largest of its probabilities, so never 0) and `correct` (true/false, 1/0).

Both bounds are `metrics.checks.row_sums_ok`, the rule the Reliability page checks its rows
with, so whatever is imported can be shown (issue 30, item 4).

Optional columns: `example_id` (unique per split, text or an integer; leave it out and rows
are named `row-LINE`, but give it on every row or on none), `split` (`val`, `test` or
`test_ood`; default `test`), `question` (text, shown as plain text on Examples and in the
drill-down; bytes or nested values are refused, not stored as their Python repr). Any other
column is an error, so a typo cannot be silently ignored; see `importer_read` for what is
refused while reading (repeated columns, names with spaces, unreadable lines).

How the store's two confidence conventions are filled: with per-option probabilities the
paper convention is the top-1 raw probability (its top-k are the options, largest first) and
the option convention is renormalised over the options, exactly like a pipeline run. With
confidence + correct there are no options: the paper convention is (confidence, correct)
as given, and the option convention is the binary question "is the answer right?"
(probabilities [confidence, 1 - confidence] over right / wrong).

Everything is checked, column by column without a loop over rows where the file's types
allow, before anything is written; every problem is reported as `FILE:LINE: field: what is
wrong` (CSV and JSONL lines of the file, Parquet rows counted from 1). The run lands in the
store in one transaction (`store_imports.write_imported_runs`) as pipeline NAME with the
method `imported`, its questions under the data set key `import:NAME`, replacing an earlier
import of the same name whole.
"""

from __future__ import annotations

import logging
import decimal
import math
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from ..metrics.checks import ROW_SUM_TOL, row_sums_ok
from ..store.schema import IMPORTED_METHOD, SPLITS
from ..errors import DataError
from ..evaluation.evaluate import compute_metrics
from .table_read import Cells, read_cells
from ..store.imports import ImportRows, check_import, write_imported_runs

log = logging.getLogger(__name__)
MAX_BYTES = 50 * 1024 * 1024  # the dashboard's upload limit (the CLI reads any size)
MAX_PROBLEMS = 20             # problems listed before "... and N more"
MAX_OPTIONS = 26
# used with fullmatch: `$` in re.match would let a trailing newline through (issue 30, item 3)
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
OPTION = re.compile(r"p_(.+)")
OPTIONAL = ("example_id", "split", "question")
TRUE, FALSE = {"true", "1", "1.0", "yes", "t", "y"}, {"false", "0", "0.0", "no", "f", "n"}
LARGE_ROWS = 1_000_000  # from here on, say that the metrics' bootstrap takes a while


class _Problems:
    """Collects `FILE:LINE: field: message` lines; `raise_if_any` raises them as one error.

    `lines()` maps rows to file lines; it is called only once a problem is found."""

    def __init__(self, path: Path, lines: Callable[[], np.ndarray]) -> None:
        self.path, self.lines, self.found, self.total = path, lines, [], 0

    def add(self, mask: np.ndarray, field: str, message: str | Callable[[int], str]) -> None:
        rows = np.flatnonzero(mask)
        if not len(rows):
            return
        self.total += len(rows)
        lines = self.lines()
        for r in rows[:MAX_PROBLEMS]:
            text = message(int(r)) if callable(message) else message
            self.found.append((int(lines[r]), f"{self.path}:{lines[r]}: {field}: {text}"))

    def raise_if_any(self) -> None:
        if not self.found:
            return
        found = sorted(self.found, key=lambda p: p[0])[:MAX_PROBLEMS]
        text = [m for _, m in found]
        if self.total > len(found):
            text.append(f"... and {self.total - len(found)} more problem(s)")
        raise DataError("\n".join(text))


# ------------------------------------------------------------------------------ cells

def _float(v: object) -> float:
    """One JSON / Parquet object cell as a float (NaN when it is not a number)."""
    if isinstance(v, bool):
        return np.nan
    if isinstance(v, (int, float, str, decimal.Decimal)):  # Parquet decimals: exact numbers
        try:
            return float(v)
        except OverflowError:  # an integer of 400 digits
            return np.inf
        except ValueError:
            return np.nan
    return np.nan


def _describe(cell: object, value: float) -> str:
    """Why a non-missing cell is not a usable number."""
    if isinstance(cell, str) and cell.strip().lower() in ("nan", "+nan", "-nan") or (
            isinstance(cell, float) and math.isnan(cell)):
        return "NaN is not a probability"
    if np.isinf(value):
        what = (f"an integer of {len(str(abs(cell)))} digits" if isinstance(cell, int)
                else str(cell)[:40])
        return f"not a finite number ({what})"
    return f"not a number: {repr(cell)[:60]}"


def _numbers(column: pd.Series, field: str, problems: _Problems) -> np.ndarray:
    """Floats of a column; missing, non-numeric or non-finite cells are problems."""
    if pd.api.types.is_bool_dtype(column.dtype):
        values = np.full(len(column), np.nan)
    elif pd.api.types.is_numeric_dtype(column.dtype):
        values = column.to_numpy(dtype=np.float64, na_value=np.nan)
    elif isinstance(column.dtype, pd.StringDtype):  # CSV: vectorised parsing
        values = pd.to_numeric(column, errors="coerce").to_numpy(np.float64, na_value=np.nan)
    else:  # JSONL / Parquet objects
        values = np.fromiter(map(_float, column), dtype=np.float64, count=len(column))
    missing = column.isna().to_numpy()
    problems.add(missing, field, "missing value")
    problems.add(~missing & ~np.isfinite(values), field,
                 lambda r: _describe(column.iloc[r], values[r]))
    return values


def _texts(column: pd.Series, field: str, problems: _Problems,
           integers: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(text cells as an object array, None where missing, blank or wrong; the wrong ones).
    With `integers`, whole numbers count as text too; anything else (bytes, a dict, a float
    id) is a problem, not its Python repr."""
    none = np.zeros(len(column), dtype=bool)
    if pd.api.types.is_integer_dtype(column.dtype) and integers:
        return column.astype(str).to_numpy(dtype=object), none
    if isinstance(column.dtype, pd.StringDtype):
        out = column.to_numpy(dtype=object, na_value=None)
        out[column.str.strip().eq("").to_numpy(dtype=bool, na_value=False)] = None
        return out, none
    kinds = (str, int) if integers else (str,)
    cells = column.to_numpy(dtype=object)
    ok = np.fromiter((v is None or (isinstance(v, kinds) and not isinstance(v, bool))
                      or (isinstance(v, float) and math.isnan(v)) for v in cells), bool,
                     len(cells))
    expected = "text or an integer" if integers else "text"
    problems.add(~ok, field, lambda r: f"{type(cells[r]).__name__}, not {expected}")
    return np.fromiter((_text(v) if good else None for v, good in zip(cells, ok)), object,
                       len(cells)), ~ok


def _text(v: object) -> str | None:
    """A str or int cell as text; None for a missing (None / NaN) or blank cell."""
    if not isinstance(v, (str, int)):
        return None
    text = str(v)
    return text if text.strip() else None


def _booleans(column: pd.Series, field: str, problems: _Problems) -> np.ndarray:
    if pd.api.types.is_bool_dtype(column.dtype) and not column.isna().any():
        return column.to_numpy(dtype=bool)
    missing = column.isna().to_numpy()
    text = column.astype(object).where(~missing, "").astype(str).str.strip().str.lower()
    ok = text.isin(TRUE | FALSE).to_numpy()
    problems.add(missing, field, "missing value")  # a null is missing, not a wrong word
    problems.add(~ok & ~missing, field, "must be true/false or 1/0")
    return text.isin(TRUE).to_numpy()


def _example_ids(frame: pd.DataFrame, split: np.ndarray, problems: _Problems) -> np.ndarray:
    """`example_id` cells, or `row-LINE` without the column; missing ids are one problem
    (not one per row), and only given ids can be duplicates."""
    n = len(frame)
    if "example_id" not in frame:
        return np.asarray([f"row-{i}" for i in problems.lines()], dtype=object)
    ids, wrong = _texts(frame["example_id"], "example_id", problems, integers=True)
    missing = pd.isna(ids) & ~wrong
    if missing.any():
        lines = problems.lines()[missing]
        listed = ", ".join(map(str, lines[:8])) + (", ..." if len(lines) > 8 else "")
        problems.add(np.arange(n) == np.flatnonzero(missing)[0], "example_id",
                     f"missing on {len(lines)} of {n} rows (line{'s' * (len(lines) > 1)} "
                     f"{listed}); give every row an id, or leave the column out (rows are then "
                     "named row-LINE)")
    keys = pd.DataFrame({"s": split, "e": ids})
    group = keys.groupby(["s", "e"], sort=False, dropna=False).ngroup().to_numpy()
    first_row = np.unique(group, return_index=True)[1]
    dup = ~pd.isna(ids) & (np.arange(n) != first_row[group])
    problems.add(dup, "example_id", lambda r: "duplicate within its split (first on line "
                                              f"{problems.lines()[first_row[group[r]]]})")
    return ids


def _lists(values: np.ndarray) -> pd.Series:
    """Rows of an `[N, W]` float array as one Arrow-backed list column (no object per row)."""
    return _list_column(pa.array(values.ravel(), type=pa.float64()), *values.shape)


def _label_lists(names: list[str], index: np.ndarray) -> pd.Series:
    """Rows `names[index[i]]` of an `[N, W]` index array as an Arrow-backed list column."""
    flat = pa.array(names, type=pa.string()).take(pa.array(index.ravel()))
    return _list_column(flat, *index.shape)


def _list_column(flat: pa.Array, n: int, width: int) -> pd.Series:
    offsets = pa.array(np.arange(n + 1, dtype=np.int32) * width)
    return pd.Series(pd.arrays.ArrowExtensionArray(pa.ListArray.from_arrays(offsets, flat)))


# ------------------------------------------------------------------------------ layouts

def _option_rows(frame: pd.DataFrame, options: list[str], problems: _Problems
                 ) -> tuple[dict, list[str], np.ndarray]:
    """Store columns of the per-option layout, its labels and each row's gold label."""
    labels = [OPTION.fullmatch(c)[1] for c in options]
    probs = np.column_stack([_numbers(frame[c], c, problems) for c in options])
    finite = np.isfinite(probs)
    for j, c in enumerate(options):
        problems.add(finite[:, j] & ((probs[:, j] < 0) | (probs[:, j] > 1)), c,
                     "must be a probability in [0, 1]")
    total = np.where(finite, probs, 0).sum(axis=1)
    problems.add(finite.all(axis=1) & ~row_sums_ok(total),
                 "/".join(options), lambda r: f"probabilities sum to {total[r]:.7g}; they must "
                 f"sum to more than 0 and at most 1 (+{ROW_SUM_TOL:g} for rounding)")
    gold = _texts(frame["gold"], "gold", problems, integers=True)[0]
    gold_at = pd.Index(labels).get_indexer(gold)
    problems.add(gold_at < 0, "gold", f"must be one of {labels}")
    problems.raise_if_any()
    n, names = len(frame), np.asarray(labels, dtype=object)
    best = probs.argmax(axis=1)
    order = np.argsort(-probs, axis=1, kind="stable")[:, :5]
    pred, top = names[best], probs.max(axis=1)
    right = best == gold_at
    every = np.broadcast_to(np.arange(len(labels)), (n, len(labels)))
    return {"gold": names[gold_at], "pred": pred, "confidence": top, "correct": right,
            "pred_option": pred, "confidence_option": top / total, "correct_option": right,
            "option_labels": _label_lists(labels, every), "option_probs": _lists(probs),
            "topk_probs": _lists(np.take_along_axis(probs, order, axis=1)),
            "topk_tokens": _label_lists(labels, order)}, labels, names[gold_at]


def _confidence_rows(frame: pd.DataFrame, problems: _Problems) -> dict:
    """Store columns of the confidence + correct layout."""
    conf = _numbers(frame["confidence"], "confidence", problems)
    problems.add(np.isfinite(conf) & ((conf < 0) | (conf > 1)), "confidence",
                 "must be a probability in [0, 1]")
    problems.add(conf == 0, "confidence", "is 0, but a model's probability for its own "
                 "answer (the largest of its probabilities) is never 0; write the value "
                 "unrounded")
    correct = _booleans(frame["correct"], "correct", problems)
    problems.raise_if_any()
    n = len(frame)
    verdict = np.where(correct, "right", "wrong").astype(object)
    binary = np.column_stack([conf, 1 - conf])
    sure = np.where(conf >= 0.5, "right", "wrong").astype(object)
    return {"gold": verdict, "pred": "(the model's answer)", "confidence": conf,
            "correct": correct, "pred_option": sure, "confidence_option": binary.max(axis=1),
            "correct_option": sure == verdict,
            "option_labels": _label_lists(["right", "wrong"], np.tile([0, 1], (n, 1))),
            "option_probs": _lists(binary), "topk_probs": _lists(conf[:, None]),
            "topk_tokens": _label_lists(["(answer)"], np.zeros((n, 1), np.intp))}


def _layout(frame: pd.DataFrame, path: Path) -> list[str]:
    """The `p_<LABEL>` columns (empty: confidence + correct); refuses unknown or missing
    columns and a wrong number of options."""
    options = [c for c in frame.columns if OPTION.fullmatch(str(c))]
    known = set(OPTIONAL) | (set(options) | {"gold"} if options else {"confidence", "correct"})
    unknown = [str(c) for c in frame.columns if c not in known]
    if unknown:
        raise DataError(f"unknown column(s) {unknown}; expected p_<LABEL> columns + gold, or "
                        f"confidence + correct, and optionally {list(OPTIONAL)}", path)
    needed = ["gold"] if options else ["confidence", "correct"]
    missing = [c for c in needed if c not in frame.columns]
    if missing:
        hint = ("per-option probabilities need gold" if options
                else "give p_<LABEL> columns + gold, or confidence + correct")
        raise DataError(f"missing column(s) {missing} ({hint})", path)
    if options and not 2 <= len(options) <= MAX_OPTIONS:
        raise DataError(f"need 2 to {MAX_OPTIONS} p_<LABEL> columns, got {len(options)}", path)
    return options


def read_predictions(path: str | Path) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """Validate FILE and build (store predictions, examples without `dataset`) frames;
    raises `DataError` listing every problem (up to MAX_PROBLEMS) as `FILE:LINE: field:
    message`."""
    path = Path(path)
    return validate_cells(read_cells(path), path)


def validate_cells(cells: Cells, path: Path, choices: list[list[str]] | None = None
                   ) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """`read_predictions` on cells already read (from a file of this layout, or converted
    from another tool's file by `importers`); `choices`, one list of option texts per row,
    replaces the option labels as the stored choices (what Examples shows)."""
    frame = cells.frame
    if frame.empty:
        raise DataError("no predictions in the file", path)
    options = _layout(frame, path)
    problems = _Problems(path, cells.lines)
    n = len(frame)
    split = (_texts(frame["split"], "split", problems)[0] if "split" in frame
             else np.full(n, "test", dtype=object))
    problems.add(~pd.Series(split).isin(SPLITS).to_numpy(), "split",
                 f"must be one of {list(SPLITS)}")
    example_id = _example_ids(frame, split, problems)
    question = (_texts(frame["question"], "question", problems)[0] if "question" in frame
                else None)
    if options:
        columns, labels, answer = _option_rows(frame, options, problems)
    else:
        columns, labels, answer = _confidence_rows(frame, problems), [], np.full(n, "", object)
    preds = pd.DataFrame({"split": split, "example_id": example_id, **columns})
    if question is None:
        return preds, None
    keep = ~pd.isna(question)
    every = np.broadcast_to(np.arange(len(labels)), (int(keep.sum()), len(labels)))
    texts = (_label_lists(labels, every) if choices is None else pd.Series(
        pd.arrays.ArrowExtensionArray(pa.array([choices[i] for i in np.flatnonzero(keep)],
                                               type=pa.list_(pa.string())))))
    examples = pd.DataFrame({
        "split": split[keep], "example_id": example_id[keep], "question": question[keep],
        "labels": _label_lists(labels, every), "choices": texts, "answer": answer[keep]})
    return preds, examples


SAME_RTOL = 1e-12  # option confidences this close to the paper's are the same numbers


def _split_metrics(part: pd.DataFrame) -> pd.DataFrame:
    """`compute_metrics` of one split. Where the options hold all the probability (an
    lm-eval or lighteval softmax over the options) the two conventions are one: the same
    answers, confidences equal up to the rounding of a division by a sum of 1 +- 1e-16. Their
    bootstrap is then run once and the option convention's rows (less Brier and NLL) are
    the paper's too, which halves the import of a folder of 57 tasks."""
    same = (np.array_equal(part["correct"].to_numpy(), part["correct_option"].to_numpy())
            and np.allclose(part["confidence"], part["confidence_option"], rtol=SAME_RTOL,
                            atol=0))
    if not same:
        return compute_metrics(part)
    option = compute_metrics(part, conventions=("option",))
    paper = option[~option["metric"].isin(["brier", "nll"])].assign(convention="paper")
    return pd.concat([paper, option], ignore_index=True)


def run_rows(preds: pd.DataFrame, examples: pd.DataFrame | None, pipeline: str,
             model: str, config: dict, path: Path) -> ImportRows:
    """One validated run as the store's rows: its predictions, metrics (per split, both
    conventions, with their bootstrap intervals) and question texts."""
    if len(preds) >= LARGE_ROWS:
        log.warning("%s: %s rows; the metrics' bootstrap intervals resample them 1000 times "
                    "per split, which takes a few minutes", path, f"{len(preds):,}")
    metrics_rows = pd.concat([_split_metrics(part.reset_index(drop=True)).assign(split=split)
                              for split, part in preds.groupby("split", sort=False)],
                             ignore_index=True)
    return ImportRows(pipeline=pipeline, run_id=f"{pipeline}/{IMPORTED_METHOD}/seed0",
                      model=model, predictions=preds, metrics=metrics_rows, examples=examples,
                      config={**config, "rows": len(preds)})


def import_predictions(path: str | Path, name: str, store_path: str | Path | None = None,
                       model: str | None = None) -> tuple[Path, str, int]:
    """Validate FILE, compute its metrics and store it as pipeline `name`.

    Returns (store path, run id, number of predictions). Nothing is written when any check
    fails (a `DataError` / `StoreError` saying what and where). Other tools' files:
    `importing.import_file`.
    """
    if not NAME.fullmatch(name or ""):
        raise DataError("--name: 1-64 letters, digits, '.', '_' or '-', starting with a letter "
                        f"or digit; got {name!r}")
    check_import(store_path, name)  # before a read that may take minutes
    preds, examples = read_predictions(path)
    rows = run_rows(preds, examples, name, model or "unknown",
                    {"imported_from": Path(path).name}, Path(path))
    return write_imported_runs(store_path, [rows]), rows.run_id, len(preds)
