"""Reading a predictions file for `importer`: CSV, Parquet or JSONL into one DataFrame of its
cells, refusing what pandas or Arrow would otherwise change without a word.

- **CSV**: the header is read first: a repeated column (pandas would rename the second
  `p_A.1`), a name with spaces around it (`p_A ` would become a second option that looks
  the same on the page) or an empty name is refused on line 1. Every cell stays text; a
  malformed row (more fields than the header, a quote never closed) and text that is not
  UTF-8 are named by their *file* line (the header is line 1; quoted line breaks and blank
  lines counted), and so are the problems `importer` finds in the cells.
- **Parquet**: the same column checks; rows are numbered from 1. A float NaN that is not a
  null becomes the text "NaN", so it is reported as NaN, not as a missing value.
- **JSONL**: one object per line, read by `jsonl.parse_json_line` (not UTF-8, malformed,
  nested too deeply, a 5,000-digit integer, a lone surrogate: all `FILE:LINE`). A key
  repeated within a line is refused (JSON would keep the last one silently); `NaN` /
  `Infinity` literals are kept as that text, so they are reported as what they are.

Nothing here knows the columns' meaning; `importer` checks the cells.
"""

from __future__ import annotations

import csv
import functools
import json
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ..data import jsonl
from ..errors import DataError

SUFFIXES = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet", ".jsonl": "jsonl",
            ".ndjson": "jsonl"}


@dataclass(frozen=True)
class Cells:
    """A file's rows as read, and a (cached) function giving each row's line in the file."""

    frame: pd.DataFrame
    lines: Callable[[], np.ndarray]


def read_cells(path: Path) -> Cells:
    """The rows of a predictions file; a `DataError` naming file and line when it cannot be
    read as its suffix says."""
    kind = SUFFIXES.get(path.suffix.lower())
    if kind is None:
        raise DataError(f"unknown file type {path.suffix!r}; use one of {sorted(SUFFIXES)}",
                        path)
    if not path.is_file():
        raise DataError("no such file" if not path.exists() else "not a file", path)
    try:
        return {"csv": _read_csv, "parquet": _read_parquet, "jsonl": _read_jsonl}[kind](path)
    except OSError as exc:  # unreadable (permissions), an I/O error
        raise DataError(f"cannot read it: {exc.strerror or exc}", path) from None


def check_names(names: list[str], path: Path, line: int | None) -> None:
    """Refuse column names that would be changed, or confused, on the way into the store."""
    dup = sorted(n for n, k in Counter(names).items() if k > 1)
    if dup:
        raise DataError(f"duplicate column(s) {dup}: each column may appear once", path, line)
    for i, name in enumerate(names, start=1):
        if not name.strip():
            raise DataError(f"column {i} has no name", path, line)
        if name != name.strip():
            raise DataError(f"column {name!r} has spaces around its name (it would not match "
                            f"{name.strip()!r}); remove them", path, line)


# ------------------------------------------------------------------------------ CSV

def _read_csv(path: Path) -> Cells:
    header = _csv_header(path)
    if len(header) == 1 and any(sep in header[0] for sep in ";\t|"):
        raise DataError(f"the header {header[0][:60]!r} is one column: the file is read as "
                        "comma-separated, so write it with ',' between the columns", path, 1)
    check_names(header, path, 1)
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[""],
                            encoding="utf-8")
    except UnicodeDecodeError:
        raise _first_bad_utf8(path) from None
    except pd.errors.ParserError as exc:
        raise _csv_structure(path, len(header), exc) from None
    except ValueError as exc:
        raise DataError(f"cannot read as CSV: {exc}", path) from None
    return Cells(frame, functools.cache(lambda: _csv_lines(path, len(frame))))


def _csv_records(path: Path) -> Iterator[tuple[int, list[str]]]:
    """(first line, fields) of every record the way pandas sees them: blank (or whitespace
    only) lines skipped, a quoted field may span lines."""
    with path.open(encoding="utf-8-sig", newline="") as handle:
        reader = csv.reader(handle)
        end = 0
        for row in reader:
            start, end = end + 1, reader.line_num
            if len(row) > 1 or "".join(row).strip():
                yield start, row


def _csv_header(path: Path) -> list[str]:
    try:
        return next(_csv_records(path))[1]
    except StopIteration:
        raise DataError("no predictions in the file (it is empty)", path) from None
    except UnicodeDecodeError:
        raise _first_bad_utf8(path) from None
    except csv.Error as exc:
        raise DataError(f"cannot read the header: {exc}", path, 1) from None


def _csv_lines(path: Path, n: int) -> np.ndarray:
    """The file line of each of the `n` data rows (computed only when a problem is shown)."""
    lines = np.fromiter((start for start, _ in _csv_records(path)), dtype=np.int64)[1:]
    return lines if len(lines) == n else np.arange(n) + 2  # cannot happen; never crash here


def _csv_structure(path: Path, width: int, exc: Exception) -> DataError:
    """A malformed CSV row named by its file line (pandas counts rows, not lines)."""
    last = 1
    for start, row in _csv_records(path):
        if len(row) > width:
            return DataError(f"{len(row)} fields, the header has {width}", path, start)
        last = start
    if "EOF inside string" in str(exc):
        return DataError("a quoted field starting on this line is never closed (a missing "
                         "'\"')", path, last)
    return DataError(f"cannot read as CSV: {exc}", path)


def _first_bad_utf8(path: Path) -> DataError:
    """The line and column of the first byte that is not UTF-8."""
    with path.open("rb") as handle:
        for no, line in enumerate(handle, start=1):
            try:
                line.decode("utf-8")
            except UnicodeDecodeError as exc:
                return jsonl.utf8_error(exc, line, path, no)
    return DataError("not valid UTF-8", path)


# ------------------------------------------------------------------------------ Parquet

def _read_parquet(path: Path) -> Cells:
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except (pa.ArrowException, ValueError) as exc:
        raise DataError(f"cannot read as Parquet: {exc}", path) from None
    check_names(list(table.column_names), path, None)
    frame = _to_pandas(table, path)
    for name, column in zip(table.column_names, table.columns):
        if pa.types.is_floating(column.type):  # NaN that is not a null: say NaN, not missing
            nan = pc.fill_null(pc.is_nan(column), False).to_numpy(zero_copy_only=False)
            if nan.any():
                frame[name] = frame[name].astype(object)
                frame.loc[nan, name] = "NaN"
    return Cells(frame, lambda: np.arange(len(frame)) + 1)


_PANDAS_ERRORS = (TypeError, ValueError, NotImplementedError)  # ArrowInvalid is a ValueError


def _to_pandas(table, path: Path) -> pd.DataFrame:
    """The table as pandas, or a `DataError` naming the column whose pandas metadata (the
    dtype pandas wrote it with) disagrees with its Arrow type: to_pandas would otherwise
    fail with an Arrow cast traceback (issue 30, item 10)."""
    import json

    import pyarrow as pa

    try:
        return table.to_pandas()
    except (pa.ArrowException, *_PANDAS_ERRORS) as exc:
        error = exc
    meta = json.loads((table.schema.metadata or {}).get(b"pandas", b"{}") or b"{}")
    said = {c.get("name"): c.get("numpy_type") for c in meta.get("columns", [])
            if isinstance(c, dict)}
    for name, column in zip(table.column_names, table.columns):
        try:
            table.select([name]).to_pandas()
        except (pa.ArrowException, *_PANDAS_ERRORS) as exc:
            raise DataError(f"the file's pandas metadata says {said.get(name)!r}, but the "
                            f"column holds {column.type} ({str(exc)[:120]}); write the file "
                            "again, or without its pandas metadata", path, None,
                            name) from None
    raise DataError(f"cannot read as a table: {str(error)[:200]}", path) from None


# ------------------------------------------------------------------------------ JSONL

def _unique_keys(pairs: list[tuple[str, object]]) -> dict:
    record = dict(pairs)
    if len(record) != len(pairs):
        dup = sorted(k for k, n in Counter(k for k, _ in pairs).items() if n > 1)
        raise ValueError(f"key(s) {dup} repeated in one object (JSON keeps only the last)")
    return record


_DECODER = json.JSONDecoder(parse_constant=str, object_pairs_hook=_unique_keys)


def _read_jsonl(path: Path) -> Cells:
    records, lines = [], []
    for no, value in jsonl.read_jsonl(path, _DECODER.decode):
        if isinstance(value, DataError):
            raise value
        if not isinstance(value, dict):
            raise DataError(f"each line must be a JSON object, got {type(value).__name__}",
                            path, no)
        records.append(value)
        lines.append(no)
    frame = pd.DataFrame.from_records(records) if records else pd.DataFrame()
    check_names([str(c) for c in frame.columns], path, None)
    found = np.asarray(lines, dtype=np.int64)
    return Cells(frame, lambda: found)
