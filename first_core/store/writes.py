"""Writes to the store: frames checked against their table before they reach the database,
then inserted or replaced in one transaction.

`Store` is the pipeline's writer; `validate_frame`, `insert_frame` and `insert_run` are what
the other writers (`imports`, `pretrained`) build their one-transaction writes from, so every
row reaches the store through the same checks and the same INSERT.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from typing import Any

import duckdb
import pandas as pd

from ..errors import StoreError
from .connection import WRITE_TIMEOUT_S, connect, transaction
from .paths import default_store_path
from .schema import TABLES, RunRecord, Table

_INCOMING = "_incoming"  # name under which a frame being written is registered


def validate_frame(table: Table, frame: pd.DataFrame, fixed: Mapping[str, Any]) -> None:
    """Check a frame against `table`'s rules before it gets near the database."""
    if not isinstance(frame, pd.DataFrame):
        raise TypeError(f"{table.name}: expected a pandas DataFrame, got {type(frame).__name__}")
    unknown = sorted(set(frame.columns) - set(table.columns))
    if unknown:
        raise ValueError(f"{table.name}: unknown column(s) {unknown}; "
                         f"the table has {list(table.columns)}")
    missing = [c for c in table.required if c not in frame.columns and c not in fixed]
    if missing:
        raise ValueError(f"{table.name}: missing required column(s) {missing}")
    for col, value in fixed.items():
        if col in frame.columns and not (frame[col] == value).all():
            raise ValueError(f"{table.name}.{col}: every row must be {value!r}")
    for col in table.not_null:
        if col in frame.columns and frame[col].isna().any():
            raise ValueError(f"{table.name}.{col}: has missing values "
                             f"(first at row {int(frame[col].isna().to_numpy().argmax())})")
    for col, allowed in table.allowed.items():
        if col in frame.columns:
            bad = sorted(set(frame.loc[~frame[col].isin(allowed), col].astype(str)))
            if bad:
                raise ValueError(f"{table.name}.{col}: {bad} not in {allowed}")
    keys = [c for c in table.unique if c in frame.columns]
    if keys and frame.duplicated(keys).any():
        first = frame.loc[frame.duplicated(keys), keys].iloc[0].to_dict()
        raise ValueError(f"{table.name}: duplicate rows for key {first}")


def insert_frame(con: duckdb.DuckDBPyConnection, table: Table, frame: pd.DataFrame,
            fixed: Mapping[str, Any]) -> None:
    """INSERT ... SELECT from the registered frame; `fixed` columns are bound constants."""
    exprs, params = [], []
    for col in table.columns:
        if col in fixed:
            exprs.append(f'? AS "{col}"')
            params.append(fixed[col])
        elif col in frame.columns:
            exprs.append(f'"{col}"')
        else:
            exprs.append(f'NULL AS "{col}"')
    cols = ", ".join(f'"{c}"' for c in table.columns)
    with _registered(con, frame):
        con.execute(f'INSERT INTO "{table.name}" ({cols}) SELECT {", ".join(exprs)} '
                    f"FROM {_INCOMING}", params)


def insert_run(con: duckdb.DuckDBPyConnection, row: list[Any]) -> None:
    """INSERT one `runs` row, its values in `TABLES['runs']` column order (`RunRecord.row`)."""
    cols = ", ".join(f'"{c}"' for c in TABLES["runs"].columns)
    marks = ", ".join("?" for _ in TABLES["runs"].columns)
    con.execute(f"INSERT INTO runs ({cols}) VALUES ({marks})", row)


@contextmanager
def _registered(con: duckdb.DuckDBPyConnection, frame: pd.DataFrame) -> Iterator[None]:
    """`frame` as the view `_INCOMING` for the block. Unregistering after a failed statement
    fails too (the transaction is aborted): that second error is dropped, so the first one
    (a full disk's IOException) is what the caller sees."""
    con.register(_INCOMING, frame)
    try:
        yield
    except BaseException:
        with suppress(duckdb.Error):
            con.unregister(_INCOMING)
        raise
    con.unregister(_INCOMING)


def _replace(con: duckdb.DuckDBPyConnection, table: Table, frame: pd.DataFrame) -> None:
    """Delete the rows sharing `table.replace_by` keys with the frame, then insert it."""
    on = " AND ".join(f'"{table.name}"."{c}" = k."{c}"' for c in table.replace_by)
    keys = ", ".join(f'"{c}"' for c in table.replace_by)
    with _registered(con, frame):
        con.execute(f'DELETE FROM "{table.name}" USING '
                    f"(SELECT DISTINCT {keys} FROM {_INCOMING}) AS k WHERE {on}")
    insert_frame(con, table, frame, {})


class Store:
    """The pipeline's writer. Each method opens the file, writes in one transaction, closes.

    Re-running a write replaces what it wrote before (same run id, same search kind, same
    data set split), so a resumed or forced stage leaves the same store as a clean run.
    """

    def __init__(self, path: str | os.PathLike[str] | None = None,
                 timeout: float = WRITE_TIMEOUT_S) -> None:
        self.path = default_store_path(path)
        self.timeout = timeout
        self._con: duckdb.DuckDBPyConnection | None = None  # set inside `batch()`
        with self._writing():  # create and check the schema now, not at the first write
            pass

    @contextmanager
    def batch(self) -> Iterator[Store]:
        """Every write inside the block goes into one transaction: all of it lands or none.

        The pipeline stores one whole run directory this way, so a crash or a bad row midway
        leaves the store exactly as it was. Prepare the frames first: the file stays locked
        (readers wait) until the block ends.
        """
        if self._con is not None:
            raise RuntimeError("Store.batch: already inside a batch")
        with self._writing() as con:
            self._con = con
            try:
                yield self
            finally:
                self._con = None

    @contextmanager
    def _writing(self) -> Iterator[duckdb.DuckDBPyConnection]:
        if self._con is not None:  # inside `batch()`: its transaction covers this write
            yield self._con
            return
        with connect(self.path, read_only=False, timeout=self.timeout) as con:
            try:
                with transaction(con, self.path):
                    yield con
            except duckdb.IOException as exc:  # a full disk, an I/O error: rolled back, say so
                raise StoreError(f"store {self.path}: write failed, nothing was written: "
                                 f"{exc}") from exc

    def write_run(self, run: RunRecord, predictions: pd.DataFrame, metrics: pd.DataFrame) -> None:
        """Replace run `run.run_id` (its runs row, predictions and metrics) atomically.

        `predictions` and `metrics` may omit `run_id`; if present it must equal the run's.
        """
        fixed = {"run_id": run.run_id}
        for name, frame in (("predictions", predictions), ("metrics", metrics)):
            validate_frame(TABLES[name], frame, fixed)
        with self._writing() as con:
            for name in ("predictions", "metrics", "runs"):
                con.execute(f'DELETE FROM "{name}" WHERE run_id = ?', [run.run_id])
            insert_run(con, run.row())
            insert_frame(con, TABLES["predictions"], predictions, fixed)
            insert_frame(con, TABLES["metrics"], metrics, fixed)

    def _write_table(self, name: str, frame: pd.DataFrame) -> None:
        validate_frame(TABLES[name], frame, {})
        with self._writing() as con:
            _replace(con, TABLES[name], frame)

    def write_temperature_search(self, frame: pd.DataFrame) -> None:
        """Replace the search curves for each (run_id, kind) in `frame`."""
        self._write_table("temperature_search", frame)

    def write_topk_coverage(self, frame: pd.DataFrame) -> None:
        """Replace the coverage rows for each run_id in `frame`."""
        self._write_table("topk_coverage", frame)

    def write_examples(self, frame: pd.DataFrame) -> None:
        """Replace the examples of each (dataset, split) in `frame`."""
        self._write_table("examples", frame)


@contextmanager
def open_store(path: str | os.PathLike[str] | None = None,
               timeout: float = WRITE_TIMEOUT_S) -> Iterator[Store]:
    """`with open_store(path) as st: st.write_run(...)`: a `Store` writer for the block.

    The `Store` holds no connection between writes, so the block may be long; readers use
    `open_readonly`.
    """
    yield Store(path, timeout)
