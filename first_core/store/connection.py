"""Connections to the store: opened with a bounded wait for another process's lock, the
schema checked (created in a new file, upgraded from an older version) and closed at once;
one transaction per write.

DuckDB lets one process write a file and refuses to open it at all (even read-only) while
another process holds it for writing. So nothing keeps a connection open: the pipeline
opens, writes one run in one transaction and closes; the dashboard opens read-only, queries
and closes. Either side retries for a bounded time on the lock error and then gives up with
a `StoreError`, so the dashboard shows "run in progress" instead of a traceback and no reader
ever sees half a run.
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, suppress
from pathlib import Path

import duckdb

from ..errors import StoreError
from .paths import default_store_path, make_folder
from .schema import IMPORT_PREFIX, IMPORTED_METHOD, MIGRATED_FROM, SCHEMA_VERSION, TABLES

CREATE_COMMAND = ("`python -m first_core demo` or "
                  "`python -m first_core run --config configs/demo.toml`")
READ_TIMEOUT_S = 5.0    # how long the dashboard waits for a writer before saying "run in progress"
WRITE_TIMEOUT_S = 60.0  # readers hold the file for milliseconds; a writer can afford to wait


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
