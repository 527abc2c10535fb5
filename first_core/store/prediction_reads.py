"""Bounded and columnar reads of one run's predictions, for pages that must stay fast on
imports of millions of rows.

`reads.load_predictions` returns a whole run and split as a pandas frame, list columns as
Python lists: fine for a pipeline's few thousand rows, but 2,000,000 imported predictions
take ~14 s to read that way and the Examples page, which showed them all, over a minute to
render. Here:

- `read_matches`: the Examples filter runs in DuckDB; the page gets the counts and only the
  `SHOWN_ROWS` most striking matches (the rows it used to show first), never the rest;
- `read_rows`: the predictions of some example ids only (the teacher's row for one example,
  a reliability bin's rows);
- `read_arrays`: the Reliability page's dense arrays straight from Arrow buffers (list
  columns flattened as one array each, the gold letter's column found by DuckDB), about 4x
  faster than through pandas lists, every row kept so the cards match the stored metrics.

All values are bound parameters; table and column names come from `schema.TABLES`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from ..views.run_arrays import PredictionArrays
from .reads import Source, reading, select_rows

SHOWN_ROWS = 1_000  # Examples: at most this many matching predictions are read and listed
MATCH_COLUMNS = ("example_id", "gold", "pred_option", "confidence_option", "correct_option",
                 "pred", "confidence", "correct", "option_labels", "option_probs")
_CONVENTION = {"option": ("confidence_option", "correct_option"),
               "paper": ("confidence", "correct")}
_FILTERS = {"all": "TRUE", "wrong": "NOT {ok}", "wrong_confident": "NOT {ok} AND {conf} >= ?",
            "right_unsure": "{ok} AND {conf} < ?"}


class Matches(NamedTuple):
    """The first `SHOWN_ROWS` matches, most striking first, and the counts behind them."""

    rows: pd.DataFrame
    matched: int  # predictions of the run and split that match the filter
    total: int    # predictions of the run and split


def read_matches(source: Source | None, run_id: str, split: str, kind: str,
                 convention: str = "option", confident: float = 0.8, unsure: float = 0.5,
                 limit: int | None = None) -> Matches:
    """The Examples filter (`views.example_rows.FILTERS`) in SQL: "wrong_confident" is wrong
    with confidence >= `confident`, "right_unsure" right with confidence < `unsure`,
    "wrong" every wrong one, "all" everything; ordered by confidence (ascending for
    "right_unsure", else descending), then example id, like `example_rows.filter_predictions`.
    """
    if kind not in _FILTERS:
        raise ValueError(f"kind: {kind!r} is not one of {list(_FILTERS)}")
    if convention not in _CONVENTION:
        raise ValueError(f"convention: {convention!r} is not one of {list(_CONVENTION)}")
    conf, ok = (f'"{c}"' for c in _CONVENTION[convention])
    cond = _FILTERS[kind].format(conf=conf, ok=ok)
    bound = {"wrong_confident": [float(confident)], "right_unsure": [float(unsure)]}.get(kind, [])
    where = "run_id = ? AND split = ?"
    order = "ASC" if kind == "right_unsure" else "DESC"
    columns = ", ".join(f'"{c}"' for c in MATCH_COLUMNS)
    with reading(source) as con:
        matched, total = con.execute(
            f"SELECT count(*) FILTER (WHERE {cond}), count(*) FROM predictions WHERE {where}",
            [*bound, run_id, split]).fetchone()
        rows = con.execute(
            f"SELECT {columns} FROM predictions WHERE {where} AND ({cond}) "
            f"ORDER BY {conf} {order}, example_id LIMIT ?",
            [run_id, split, *bound, int(SHOWN_ROWS if limit is None else limit)]).df()
    return Matches(rows, int(matched), int(total))


def read_rows(source: Source | None, run_ids: str | Sequence[str], split: str,
              example_ids: str | Sequence[str], columns: Sequence[str] | None = None
              ) -> pd.DataFrame:
    """The predictions of these runs and split for these example ids only."""
    return select_rows(source, "predictions",
                       {"run_id": run_ids, "split": split, "example_id": example_ids},
                       ("run_id", "split", "example_id"), columns)


def _dense(column: pa.ChunkedArray, name: str, dtype) -> np.ndarray:
    """A list column as an N x k array from its Arrow buffers; ragged rows name the column."""
    column = column.combine_chunks() if column.num_chunks else pa.array([], column.type)
    if not len(column):
        return np.zeros((0, 0), dtype=dtype)
    lengths = pc.list_value_length(column).to_numpy(zero_copy_only=False)
    if (lengths != lengths[0]).any():
        row = int(np.flatnonzero(lengths != lengths[0])[0])
        raise ValueError(f"predictions.{name}: rows have different lengths "
                         f"({lengths[0]} and {lengths[row]} at row {row})")
    values = pc.list_flatten(column).to_numpy(zero_copy_only=False)
    return values.astype(dtype, copy=False).reshape(len(column), int(lengths[0]))


def read_arrays(source: Source | None, run_id: str, split: str) -> PredictionArrays:
    """One run and split as the Reliability page's `PredictionArrays`, every row, validated
    like `run_arrays.prediction_arrays` (missing values, ragged rows, a gold label that is
    not an option are `ValueError`s naming the column and row)."""
    sql = ("SELECT example_id, correct, topk_probs, option_probs, gold, "
           "option_labels IS NULL AS no_labels, "
           "list_position(option_labels, gold) - 1 AS gold_option "
           "FROM predictions "
           "WHERE run_id = ? AND split = ? ORDER BY example_id")
    with reading(source) as con:
        table = con.sql(sql, params=[run_id, split]).to_arrow_table()  # no extra copy
    needed = ("correct", "topk_probs", "option_probs", "gold")
    missing = [c for c in needed if table[c].null_count]
    if pc.any(table["no_labels"]).as_py():
        missing.append("option_labels")
    if missing:
        raise ValueError(f"predictions: missing values in {missing}")
    gold_option = table["gold_option"]
    if gold_option.null_count:
        row = int(np.flatnonzero(gold_option.is_null().to_numpy(zero_copy_only=False))[0])
        raise ValueError(f"predictions.gold: {table['gold'][row].as_py()!r} (row {row}) is "
                         "not among option_labels")
    arrays = PredictionArrays(
        topk_probs=_dense(table["topk_probs"], "topk_probs", np.float64),
        correct=table["correct"].to_numpy().astype(bool, copy=False),
        option_probs=_dense(table["option_probs"], "option_probs", np.float64),
        gold_option=gold_option.to_numpy().astype(np.int64, copy=False),
        example_ids=table["example_id"].to_numpy())  # str objects, as read
    for array in (arrays.topk_probs, arrays.correct, arrays.option_probs, arrays.gold_option,
                  arrays.example_ids):
        array.flags.writeable = False  # shared through st.cache_resource: nobody may mutate
    return arrays
