"""Reads from the store: whitelisted columns of one table with bound filters, as DataFrames.

Each reader takes an open connection (several queries on one snapshot) or a path (opened
read-only just for the query, `connection.open_readonly`). `reading` and `select_rows` are
what the other readers (`prediction_reads`) build on.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import duckdb
import pandas as pd

from .connection import open_readonly
from .schema import SPLITS, TABLES, Table

Source = str | os.PathLike[str] | duckdb.DuckDBPyConnection


@contextmanager
def reading(source: Source | None) -> Iterator[duckdb.DuckDBPyConnection]:
    """Use an open connection as is, or open the path read-only just for this query."""
    if isinstance(source, duckdb.DuckDBPyConnection):
        yield source
    else:
        with open_readonly(source) as con:
            yield con


def _where(table: Table, filters: Mapping[str, Any], alias: str) -> tuple[str, list[Any]]:
    """A WHERE clause over whitelisted columns: a scalar is `=`, a list is membership."""
    clauses, params = [], []
    for col, value in filters.items():
        if col not in table.columns:
            raise ValueError(f"{table.name}: no column {col!r}")
        if value is None:
            continue
        if not pd.api.types.is_list_like(value):
            clauses.append(f'{alias}."{col}" = ?')
            params.append(value)
        else:
            clauses.append(f'list_contains(?, {alias}."{col}")')
            params.append(list(value))
    return (" WHERE " + " AND ".join(clauses)) if clauses else "", params


def select_rows(source: Source | None, name: str, filters: Mapping[str, Any],
            order: Sequence[str], columns: Sequence[str] | None = None) -> pd.DataFrame:
    """SELECT whitelisted columns of one table with bound filters, as a DataFrame."""
    table = TABLES[name]
    wanted = list(columns) if columns is not None else list(table.columns)
    unknown = [c for c in [*wanted, *order] if c not in table.columns]
    if unknown:
        raise ValueError(f"{name}: no column(s) {unknown}")
    where, params = _where(table, filters, "t")
    select = ", ".join(f't."{c}"' for c in wanted)
    order_by = ", ".join(f't."{c}"' for c in order)
    sql = f'SELECT {select} FROM "{name}" AS t{where} ORDER BY {order_by}'
    with reading(source) as con:
        return con.execute(sql, params).df()


def list_runs(source: Source | None = None, method: str | Sequence[str] | None = None
              ) -> pd.DataFrame:
    """All runs (optionally of some methods), oldest first; `config` is JSON text."""
    return select_rows(source, "runs", {"method": method}, ("created_at", "run_id"))


def load_predictions(source: Source | None = None, run_ids: str | Sequence[str] | None = None,
                     split: str | Sequence[str] | None = None,
                     columns: Sequence[str] | None = None) -> pd.DataFrame:
    """Predictions of some runs and splits; pass `columns` to skip the list columns."""
    return select_rows(source, "predictions", {"run_id": run_ids, "split": split},
                   ("run_id", "split", "example_id"), columns)


def load_metrics(source: Source | None = None, run_ids: str | Sequence[str] | None = None,
                 split: str | Sequence[str] | None = None,
                 convention: str | Sequence[str] | None = None,
                 metric: str | Sequence[str] | None = None) -> pd.DataFrame:
    """Metrics rows joined with their run's method, model, dataset and seed."""
    where, params = _where(TABLES["metrics"], {"run_id": run_ids, "split": split,
                                               "convention": convention, "metric": metric}, "m")
    sql = ("SELECT m.*, r.method, r.model, r.dataset, r.seed FROM metrics AS m "
           f"JOIN runs AS r USING (run_id){where} "
           "ORDER BY r.created_at, m.run_id, m.split, m.convention, m.metric")
    with reading(source) as con:
        return con.execute(sql, params).df()


def load_temperature_search(source: Source | None = None, run_id: str | None = None,
                            kind: str | None = None) -> pd.DataFrame:
    """The TS (value = c) and LS (value = delta) search curves."""
    return select_rows(source, "temperature_search", {"run_id": run_id, "kind": kind},
                   ("run_id", "kind", "value"))


def load_topk_coverage(source: Source | None = None, run_id: str | None = None) -> pd.DataFrame:
    """Cumulative top-K coverage of the teacher, K ascending."""
    return select_rows(source, "topk_coverage", {"run_id": run_id}, ("run_id", "k"))


def load_examples(source: Source | None = None,
                  example_ids: str | Sequence[str] | None = None,
                  dataset: str | None = None, split: str | None = None) -> pd.DataFrame:
    """Question text, options and gold answer of some examples."""
    return select_rows(source, "examples",
                   {"example_id": example_ids, "dataset": dataset, "split": split},
                   ("dataset", "split", "example_id"))


def available_splits(source: Source | None = None,
                     run_ids: str | Sequence[str] | None = None) -> list[str]:
    """The splits that have predictions (for these runs), in `SPLITS` order."""
    where, params = _where(TABLES["predictions"], {"run_id": run_ids}, "p")
    with reading(source) as con:
        found = {r[0] for r in con.execute(
            f"SELECT DISTINCT p.split FROM predictions AS p{where}", params).fetchall()}
    return [s for s in SPLITS if s in found]


# ---------------------------------------------------------------------------- pipelines

def list_pipelines(source: Source | None = None) -> pd.DataFrame:
    """One row per pipeline: pipeline, runs, methods (list), first created_at; oldest first."""
    sql = ("SELECT pipeline, count(*) AS runs, list(DISTINCT method ORDER BY method) AS methods, "
           "min(created_at) AS created_at FROM runs GROUP BY pipeline ORDER BY 4, 1")
    with reading(source) as con:
        return con.execute(sql).df()
