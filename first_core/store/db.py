"""The DuckDB store: schema, short transactional writes, read-only reads that wait politely.

DuckDB lets one process write a file and refuses to open it at all (even read-only) while
another process holds it for writing. So nothing here keeps a connection open: the pipeline
opens, writes one run in one transaction and closes; the dashboard opens read-only, queries
and closes. Either side retries for a bounded time on the lock error and then gives up with
a `StoreError`, so the dashboard shows "run in progress" instead of a traceback and no reader
ever sees half a run. Every table and column name used in SQL comes from `TABLES` below;
every value is bound with `?`.
"""

from __future__ import annotations

import json
import os
import random
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager, suppress
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import duckdb
import pandas as pd

from ..config.settings import METHODS, RUN_METHODS
from ..errors import FirstError, StoreError

SCHEMA_VERSION = 2  # 2: imported runs file their questions under `import:<pipeline>`
MIGRATED_FROM = (1,)  # older versions read as they are and upgraded when opened for writing
DEFAULT_STORE = Path("data/first.duckdb")
STORE_ENV = "FIRST_STORE"
CREATE_COMMAND = ("`python -m first_core demo` or "
                  "`python -m first_core run --config configs/demo.toml`")
READ_TIMEOUT_S = 5.0    # how long the dashboard waits for a writer before saying "run in progress"
WRITE_TIMEOUT_S = 60.0  # readers hold the file for milliseconds; a writer can afford to wait

SPLITS = ("val", "test", "test_ood")
CONVENTIONS = ("paper", "option")
METRICS = ("accuracy", "confidence", "ece", "mce", "brier", "nll", "trust", "auroc", "aurc")
POSTHOC_KIND = "posthoc"  # a post-hoc run's validation ECE over T (its fitted T: chosen)
SEARCH_KINDS = ("TS", "LS", POSTHOC_KIND)
IMPORTED_METHOD = "imported"  # `runs.method` of predictions imported from another model
IMPORT_PREFIX = "import:"     # `runs.dataset` / `examples.dataset` of an import: prefix + name


@dataclass(frozen=True)
class Table:
    """One table: its columns (name -> SQL type) and the rules a frame must meet to be written.

    `required` columns must be present in a written frame (the rest become NULL when absent);
    `not_null` ones must also have no missing value; `unique` is the natural key, checked
    for duplicates; `replace_by` is the key whose existing rows a write replaces; `allowed`
    restricts a column to a fixed vocabulary.
    """

    name: str
    columns: Mapping[str, str]
    required: tuple[str, ...] = ()
    not_null: tuple[str, ...] = ()
    unique: tuple[str, ...] = ()
    replace_by: tuple[str, ...] = ()
    allowed: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    def ddl(self) -> str:
        cols = ", ".join(f'"{c}" {t}' for c, t in self.columns.items())
        return f'CREATE TABLE IF NOT EXISTS "{self.name}" ({cols})'


TABLES: dict[str, Table] = {t.name: t for t in (
    Table("meta", {"key": "VARCHAR PRIMARY KEY", "value": "VARCHAR"}),
    Table("runs", {
        "run_id": "VARCHAR PRIMARY KEY", "method": "VARCHAR", "model": "VARCHAR",
        "dataset": "VARCHAR", "seed": "INTEGER", "temperature": "DOUBLE", "smoothing": "DOUBLE",
        "config": "JSON", "created_at": "TIMESTAMP", "pipeline": "VARCHAR"},
        allowed={"method": RUN_METHODS}),
    Table("predictions", {
        "run_id": "VARCHAR", "split": "VARCHAR", "example_id": "VARCHAR", "gold": "VARCHAR",
        "pred": "VARCHAR", "confidence": "DOUBLE", "correct": "BOOLEAN",
        "pred_option": "VARCHAR", "confidence_option": "DOUBLE", "correct_option": "BOOLEAN",
        "option_labels": "VARCHAR[]", "option_probs": "DOUBLE[]", "topk_ids": "INTEGER[]",
        "topk_probs": "DOUBLE[]", "topk_tokens": "VARCHAR[]"},
        required=("split", "example_id", "gold", "pred", "confidence", "correct",
                  "pred_option", "confidence_option", "correct_option"),
        not_null=("split", "example_id"), unique=("split", "example_id"),
        replace_by=("run_id",), allowed={"split": SPLITS}),
    Table("metrics", {
        "run_id": "VARCHAR", "split": "VARCHAR", "convention": "VARCHAR", "metric": "VARCHAR",
        "value": "DOUBLE", "ci_low": "DOUBLE", "ci_high": "DOUBLE"},
        required=("split", "convention", "metric", "value"),
        not_null=("split", "convention", "metric"), unique=("split", "convention", "metric"),
        replace_by=("run_id",),
        allowed={"split": SPLITS, "convention": CONVENTIONS, "metric": METRICS}),
    Table("temperature_search", {
        "run_id": "VARCHAR", "kind": "VARCHAR", "value": "DOUBLE", "ece_val": "DOUBLE",
        "ece_test": "DOUBLE", "chosen": "BOOLEAN"},
        required=("run_id", "kind", "value", "ece_val", "chosen"),
        not_null=("run_id", "kind", "value"), unique=("run_id", "kind", "value"),
        replace_by=("run_id", "kind"), allowed={"kind": SEARCH_KINDS}),
    Table("topk_coverage", {
        "run_id": "VARCHAR", "k": "INTEGER", "mean": "DOUBLE", "p10": "DOUBLE", "p50": "DOUBLE",
        "p90": "DOUBLE", "bytes_per_position": "DOUBLE", "full_bytes_per_position": "DOUBLE",
        "n_positions": "BIGINT", "vocab_size": "INTEGER"},
        required=("run_id", "k", "mean"), not_null=("run_id", "k"), unique=("run_id", "k"),
        replace_by=("run_id",)),
    Table("examples", {
        "dataset": "VARCHAR", "split": "VARCHAR", "example_id": "VARCHAR", "question": "VARCHAR",
        "context": "VARCHAR", "labels": "VARCHAR[]", "choices": "VARCHAR[]", "answer": "VARCHAR"},
        required=("dataset", "split", "example_id", "question", "labels", "choices", "answer"),
        not_null=("dataset", "split", "example_id"), unique=("dataset", "split", "example_id"),
        replace_by=("dataset", "split")),
)}

_INCOMING = "_incoming"  # name under which a frame being written is registered


@dataclass(frozen=True)
class RunRecord:
    """One row of `runs`: what was trained, from what, with which settings."""

    run_id: str
    method: str
    model: str
    dataset: str
    seed: int
    temperature: float | None = None  # c used for the student targets
    smoothing: float | None = None    # label-smoothing delta
    config: Mapping[str, Any] = field(default_factory=dict)
    created_at: datetime | None = None  # None: now (UTC)
    pipeline: str | None = None         # name of the run directory

    def __post_init__(self) -> None:
        if not self.run_id:
            raise ValueError("RunRecord.run_id: must be a non-empty string")
        if self.method not in RUN_METHODS:
            raise ValueError(f"RunRecord.method: {self.method!r} is not one of {RUN_METHODS}")
        for name in ("temperature", "smoothing"):
            value = getattr(self, name)
            if value is not None and not value == value:  # NaN
                raise ValueError(f"RunRecord.{name}: must be a number or None, got NaN")

    def row(self) -> list[Any]:
        """Values in `TABLES['runs']` column order, ready to bind."""
        created = self.created_at or datetime.now(timezone.utc).replace(tzinfo=None)
        return [self.run_id, self.method, self.model, self.dataset, int(self.seed),
                self.temperature, self.smoothing, json.dumps(dict(self.config), sort_keys=True),
                created, self.pipeline]


# ---------------------------------------------------------------------------- paths

def default_store_path(path: str | os.PathLike[str] | None = None) -> Path:
    """The store to use: `path` if given, else `$FIRST_STORE`, else `data/first.duckdb`."""
    if path is not None and str(path):
        return Path(path)
    return Path(os.environ.get(STORE_ENV) or DEFAULT_STORE)


def safe_store_path(name: str | os.PathLike[str], root: str | os.PathLike[str]) -> Path:
    """Resolve a user-picked store `name` inside `root`, refusing anything that leaves it.

    The dashboard's picker passes what the user chose; `..`, absolute paths elsewhere and
    symlinks pointing out of `root` are refused after resolving, and only `*.duckdb` files
    are accepted, so the picker cannot be used to open arbitrary files.
    """
    try:
        base = Path(root).resolve()
        target = (base / Path(name)).resolve()
    except (OSError, ValueError) as exc:  # a NUL byte, a symlink loop
        raise StoreError(f"store path {name!s}: {exc}") from None
    if not target.is_relative_to(base):
        raise StoreError(f"store path {name!s}: outside the allowed folder {base}")
    if target.suffix != ".duckdb":
        raise StoreError(f"store path {name!s}: only *.duckdb files can be opened")
    return target


def list_store_files(root: str | os.PathLike[str]) -> list[Path]:
    """The `*.duckdb` files under `root` that `safe_store_path` accepts, for a picker."""
    base = Path(root)
    if not base.is_dir():
        return []
    found = []
    for candidate in sorted(base.rglob("*.duckdb")):
        try:
            found.append(safe_store_path(candidate.relative_to(base), base))
        except StoreError:
            continue
    return found


def make_folder(folder: Path, what: str) -> None:
    """`mkdir -p folder`, or a `FirstError` saying why not (a file in the way, permissions)."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        blocker = next((p for p in (folder, *folder.parents) if p.exists()), None)
        why = (f"{blocker} is a file, not a folder"
               if isinstance(exc, (FileExistsError, NotADirectoryError)) and blocker
               and not blocker.is_dir() else f"cannot create {folder} ({exc.strerror or exc})")
        raise FirstError(f"{what}: {why}") from None


# ---------------------------------------------------------------------------- connections

def _is_lock_error(exc: duckdb.Error) -> bool:
    """Another process holds the file (or this one holds it with the other mode)."""
    text = str(exc)
    return any(m in text for m in ("Could not set lock", "Conflicting lock",
                                   "different configuration"))


# Never fetch or load an extension on the fly: a SQLite or Parquet file passed as the store
# would otherwise make DuckDB download one over the network (plain http) and run it.
CONNECT_CONFIG = {"autoinstall_known_extensions": False, "autoload_known_extensions": False}


def _connect(path: Path, read_only: bool, timeout: float) -> duckdb.DuckDBPyConnection:
    """Open `path`, retrying with jittered backoff while another process holds the lock."""
    deadline = time.monotonic() + timeout
    delay = 0.005
    while True:
        try:
            return duckdb.connect(str(path), read_only=read_only, config=CONNECT_CONFIG)
        except duckdb.Error as exc:
            if not _is_lock_error(exc):
                if "not a valid DuckDB database" in str(exc):
                    raise StoreError(f"store {path}: not a DuckDB database file") from exc
                if "sqlite" in str(exc).lower():  # DuckDB asked for its SQLite extension
                    raise StoreError(f"store {path}: a SQLite database, not a DuckDB database "
                                     "file (first-lab loads no DuckDB extensions)") from exc
                raise StoreError(f"store {path}: cannot open: {exc}") from exc
            if time.monotonic() >= deadline:
                if read_only:
                    raise StoreError(
                        f"store {path}: run in progress (a pipeline is writing to it; waited "
                        f"{timeout:g} s); try again in a moment") from exc
                raise StoreError(
                    f"store {path}: locked by another process for more than {timeout:g} s "
                    "(another run or a stuck reader)") from exc
        time.sleep(delay * (0.5 + random.random()))
        delay = min(delay * 2, 0.05)


def _schema_version(con: duckdb.DuckDBPyConnection, path: Path) -> int | None:
    """The stored schema version, or None when the file has no `meta` table yet."""
    # fetchall, not fetchone: DuckDB refuses further work on a connection with a pending result
    if not con.execute("SELECT 1 FROM information_schema.tables "
                       "WHERE table_schema = 'main' AND table_name = 'meta'").fetchall():
        return None
    rows = con.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchall()
    if not rows:
        raise StoreError(f"store {path}: the meta table has no schema_version")
    try:
        return int(rows[0][0])
    except ValueError:
        raise StoreError(f"store {path}: meta.schema_version is {rows[0][0]!r}, "
                         "not a number") from None


def _check_schema(con: duckdb.DuckDBPyConnection, path: Path, read_only: bool) -> None:
    """Refuse other schema versions; create the schema in a fresh file opened for writing."""
    version = _schema_version(con, path)
    if version is None and (read_only or con.execute("SHOW TABLES").fetchall()):
        raise StoreError(f"store {path}: not a first-lab store (no schema version); "
                         f"create one with {CREATE_COMMAND}")
    if version is None:  # a new, empty database: never add our tables to someone else's
        with transaction(con):
            for table in TABLES.values():
                con.execute(table.ddl())
            con.execute("INSERT INTO meta VALUES ('schema_version', ?) ON CONFLICT DO NOTHING",
                        [str(SCHEMA_VERSION)])
    elif version > SCHEMA_VERSION:
        raise StoreError(f"store {path}: written with schema version {version}, newer than this "
                         f"first-lab's version {SCHEMA_VERSION}; upgrade first-lab to read it")
    elif version != SCHEMA_VERSION and version not in MIGRATED_FROM:
        raise StoreError(f"store {path}: schema version {version} is not supported "
                         f"(this first-lab reads version {SCHEMA_VERSION})")
    else:
        _check_tables(con, path)
        if version != SCHEMA_VERSION and not read_only:
            with transaction(con):
                _migrate_imports(con)
                con.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'",
                            [str(SCHEMA_VERSION)])


def _migrate_imports(con: duckdb.DuckDBPyConnection) -> None:
    """Version 1 -> 2: an imported run's `runs.dataset` and its question texts move from its
    bare name to `import:<name>`, where no pipeline's data set key (a hash) can land on them.
    Questions under a key that one of this project's own runs also uses stay with that run
    (version 1 let such an import overwrite them; whose they are cannot be told apart)."""
    old = con.execute("SELECT DISTINCT pipeline, dataset FROM runs WHERE method = ? AND "
                      "pipeline IS NOT NULL AND NOT starts_with(coalesce(dataset, ''), ?)",
                      [IMPORTED_METHOD, IMPORT_PREFIX]).fetchall()
    for pipeline, dataset in old:
        key = IMPORT_PREFIX + pipeline
        if not con.execute("SELECT 1 FROM runs WHERE dataset = ? AND method <> ?",
                           [dataset, IMPORTED_METHOD]).fetchall():
            con.execute("UPDATE examples SET dataset = ? WHERE dataset = ?", [key, dataset])
        con.execute("UPDATE runs SET dataset = ? WHERE method = ? AND pipeline = ?",
                    [key, IMPORTED_METHOD, pipeline])


def _check_tables(con: duckdb.DuckDBPyConnection, path: Path) -> None:
    """Refuse a store whose tables or columns were dropped or renamed outside first-lab."""
    found: dict[str, set[str]] = {}
    for table, column in con.execute("SELECT table_name, column_name FROM "
                                     "information_schema.columns WHERE table_schema = 'main'"
                                     ).fetchall():
        found.setdefault(table, set()).add(column)
    for table in TABLES.values():
        if table.name not in found:
            raise StoreError(f"store {path}: table {table.name!r} is missing (changed outside "
                             "first-lab?); use another --store or restore the file")
        missing = [c for c in table.columns if c not in found[table.name]]
        if missing:
            raise StoreError(f"store {path}: table {table.name!r} lacks column(s) {missing} "
                             "(changed outside first-lab?); use another --store or restore it")


@contextmanager
def connect(path: str | os.PathLike[str] | None = None, read_only: bool = False,
            timeout: float | None = None) -> Iterator[duckdb.DuckDBPyConnection]:
    """A checked connection to the store, closed on exit: keep the `with` block short.

    Opening for writing creates the file (and its folder) and the schema when missing.
    Opening read-only a file that does not exist is a `StoreError` that says how to make one.
    """
    store = default_store_path(path)
    if read_only and not store.exists():
        raise StoreError(f"store {store} does not exist; create it with {CREATE_COMMAND}")
    if not read_only:
        make_folder(store.parent, f"store {store}")
    wait = timeout if timeout is not None else (READ_TIMEOUT_S if read_only else WRITE_TIMEOUT_S)
    con = _connect(store, read_only, wait)
    try:
        try:
            _check_schema(con, store, read_only)
        except duckdb.IOException as exc:  # e.g. a disk full while creating the schema
            raise StoreError(f"store {store}: {exc}") from exc
        yield con
    finally:
        con.close()


def open_readonly(path: str | os.PathLike[str] | None = None, timeout: float = READ_TIMEOUT_S
                  ) -> AbstractContextManager[duckdb.DuckDBPyConnection]:
    """A read-only checked connection (what the dashboard uses), closed on exit.

    Pass it to the `load_*` functions to run several queries on one snapshot.
    """
    return connect(path, read_only=True, timeout=timeout)


@contextmanager
def transaction(con: duckdb.DuckDBPyConnection, path: Path | None = None
                ) -> Iterator[duckdb.DuckDBPyConnection]:
    """BEGIN ... COMMIT, rolled back if the block raises, so a write lands whole or not at all."""
    con.begin()
    try:
        yield con
    except duckdb.IOException as exc:  # a full disk, an I/O error: the write is rolled back
        _rollback(con)
        raise _write_failed(path, exc) from None
    except BaseException:
        _rollback(con)
        raise
    try:
        con.commit()
    except duckdb.Error as exc:  # e.g. the write-ahead log hit a full disk at commit
        _rollback(con)
        raise _write_failed(path, exc) from None


def _write_failed(path: Path | None, exc: BaseException) -> StoreError:
    where = f"store {path}" if path is not None else "store"
    return StoreError(f"{where}: write failed, nothing was written: {exc}")


def _rollback(con: duckdb.DuckDBPyConnection) -> None:
    """Roll back, quietly when DuckDB has already ended the transaction itself: the error
    that led here is the one to report, not "no transaction is active"."""
    with suppress(duckdb.Error):
        con.rollback()


# ---------------------------------------------------------------------------- writes

def _validate(table: Table, frame: pd.DataFrame, fixed: Mapping[str, Any]) -> None:
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


def _insert(con: duckdb.DuckDBPyConnection, table: Table, frame: pd.DataFrame,
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
    _insert(con, table, frame, {})


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
            _validate(TABLES[name], frame, fixed)
        cols = ", ".join(f'"{c}"' for c in TABLES["runs"].columns)
        marks = ", ".join("?" for _ in TABLES["runs"].columns)
        with self._writing() as con:
            for name in ("predictions", "metrics", "runs"):
                con.execute(f'DELETE FROM "{name}" WHERE run_id = ?', [run.run_id])
            con.execute(f"INSERT INTO runs ({cols}) VALUES ({marks})", run.row())
            _insert(con, TABLES["predictions"], predictions, fixed)
            _insert(con, TABLES["metrics"], metrics, fixed)

    def _write_table(self, name: str, frame: pd.DataFrame) -> None:
        _validate(TABLES[name], frame, {})
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


# ---------------------------------------------------------------------------- reads

Source = str | os.PathLike[str] | duckdb.DuckDBPyConnection


@contextmanager
def _reading(source: Source | None) -> Iterator[duckdb.DuckDBPyConnection]:
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


def _select(source: Source | None, name: str, filters: Mapping[str, Any],
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
    with _reading(source) as con:
        return con.execute(sql, params).df()


def list_runs(source: Source | None = None, method: str | Sequence[str] | None = None
              ) -> pd.DataFrame:
    """All runs (optionally of some methods), oldest first; `config` is JSON text."""
    return _select(source, "runs", {"method": method}, ("created_at", "run_id"))


def load_predictions(source: Source | None = None, run_ids: str | Sequence[str] | None = None,
                     split: str | Sequence[str] | None = None,
                     columns: Sequence[str] | None = None) -> pd.DataFrame:
    """Predictions of some runs and splits; pass `columns` to skip the list columns."""
    return _select(source, "predictions", {"run_id": run_ids, "split": split},
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
    with _reading(source) as con:
        return con.execute(sql, params).df()


def load_temperature_search(source: Source | None = None, run_id: str | None = None,
                            kind: str | None = None) -> pd.DataFrame:
    """The TS (value = c) and LS (value = delta) search curves."""
    return _select(source, "temperature_search", {"run_id": run_id, "kind": kind},
                   ("run_id", "kind", "value"))


def load_topk_coverage(source: Source | None = None, run_id: str | None = None) -> pd.DataFrame:
    """Cumulative top-K coverage of the teacher, K ascending."""
    return _select(source, "topk_coverage", {"run_id": run_id}, ("run_id", "k"))


def load_examples(source: Source | None = None,
                  example_ids: str | Sequence[str] | None = None,
                  dataset: str | None = None, split: str | None = None) -> pd.DataFrame:
    """Question text, options and gold answer of some examples."""
    return _select(source, "examples",
                   {"example_id": example_ids, "dataset": dataset, "split": split},
                   ("dataset", "split", "example_id"))


def available_splits(source: Source | None = None,
                     run_ids: str | Sequence[str] | None = None) -> list[str]:
    """The splits that have predictions (for these runs), in `SPLITS` order."""
    where, params = _where(TABLES["predictions"], {"run_id": run_ids}, "p")
    with _reading(source) as con:
        found = {r[0] for r in con.execute(
            f"SELECT DISTINCT p.split FROM predictions AS p{where}", params).fetchall()}
    return [s for s in SPLITS if s in found]


# ---------------------------------------------------------------------------- pipelines

def list_pipelines(source: Source | None = None) -> pd.DataFrame:
    """One row per pipeline: pipeline, runs, methods (list), first created_at; oldest first."""
    sql = ("SELECT pipeline, count(*) AS runs, list(DISTINCT method ORDER BY method) AS methods, "
           "min(created_at) AS created_at FROM runs GROUP BY pipeline ORDER BY 4, 1")
    with _reading(source) as con:
        return con.execute(sql).df()


# ---------------------------------------------------------------------------- pretrained models

PRETRAINED_METHOD = "pretrained_zero_shot"  # `runs.method` of a pretrained model read zero-shot


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
    _validate(TABLES["topk_coverage"], coverage, fixed)
    store = default_store_path(path)
    row = RunRecord(run_id=run_id, method=METHODS[0], model=model, dataset=dataset, seed=0,
                    config=dict(config or {}), pipeline=pipeline).row()
    row[1] = PRETRAINED_METHOD  # RunRecord checks the project's trained methods; not one
    cols = ", ".join(f'"{c}"' for c in TABLES["runs"].columns)
    marks = ", ".join("?" for _ in TABLES["runs"].columns)
    with connect(store, read_only=False, timeout=timeout) as con, transaction(con):
        for name in ("predictions", "metrics", "topk_coverage", "runs"):
            con.execute(f'DELETE FROM "{name}" WHERE run_id = ?', [run_id])
        con.execute(f"INSERT INTO runs ({cols}) VALUES ({marks})", row)
        _insert(con, TABLES["topk_coverage"], coverage, fixed)
    return store
