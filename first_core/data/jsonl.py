"""Reading JSON safely: every way `json` can fail on a user's file becomes a `DataError`
naming the file and line, never a traceback and never a value that breaks a later stage.

Covered: text that is not UTF-8, malformed JSON, nesting deeper than the parser's recursion
limit, an integer longer than Python's int-conversion limit (4,300 digits), and a lone UTF-16
surrogate escape (`"\\ud800"`: valid JSON, but no tokenizer, Arrow or DuckDB can encode it).
Used by the multiple-choice loader (`data`), the instruction loader (`instruct_data`, JSON
Lines and JSON arrays) and the prediction importer (`importer_read`).
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from ..errors import DataError

# a lone surrogate can only come from a `\\uD800`-`\\uDFFF` escape (UTF-8 text cannot hold one)
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


def json_error(exc: Exception, path: str | Path, line: int) -> DataError:
    """What `json.loads` / `raw_decode` raising `exc` (a `JSON_ERRORS`) means for the user."""
    if isinstance(exc, json.JSONDecodeError):
        return DataError(f"malformed JSON ({exc.msg} at column {exc.colno})", path, line)
    if isinstance(exc, RecursionError):
        return DataError("JSON nested too deeply to be a record", path, line)
    if "Exceeds the limit" in str(exc):  # int(): Python's limit on long digit strings
        return DataError(f"an integer with more than {sys.get_int_max_str_digits()} digits "
                         "cannot be read (write it as a string)", path, line)
    return DataError(f"cannot read this JSON: {exc}", path, line)  # e.g. a hook's refusal


JSON_ERRORS = (ValueError, RecursionError)  # json.JSONDecodeError is a ValueError


def surrogate_error(value: Any, text: str, path: str | Path, line: int) -> DataError | None:
    """A DataError when parsed JSON `value` (from `text`) holds a lone UTF-16 surrogate:
    valid JSON (`"\\ud800"`), but no tokenizer, Arrow or DuckDB can encode it."""
    if not _SURROGATE_ESCAPE.search(text):
        return None
    where = lone_surrogate(value)
    if where is None:
        return None
    return DataError("a lone UTF-16 surrogate escape (\\ud800-\\udfff without its pair) is "
                     "not text", path, line, where or None)


def parse_json_line(text: str, path: str | Path, line: int,
                    loads: Callable[[str], Any] = json.loads) -> Any:
    """One JSON value, or the DataError that says why the line is not one."""
    try:
        value = loads(text)
    except JSON_ERRORS as e:
        return json_error(e, path, line)
    return surrogate_error(value, text, path, line) or value


def read_jsonl(path: Path, loads: Callable[[str], Any] = json.loads
               ) -> Iterator[tuple[int, Any]]:
    """Yield (line number, parsed JSON or DataError) for every non-blank line."""
    raw = path.read_bytes()
    for no, line in enumerate(raw.split(b"\n"), start=1):
        if no == 1 and line.startswith(b"\xef\xbb\xbf"):
            line = line[3:]  # UTF-8 byte-order mark
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError as e:
            yield no, utf8_error(e, line, path, no)
            continue
        if text.strip():
            yield no, parse_json_line(text, path, no, loads)


def utf8_error(exc: UnicodeDecodeError, line: bytes, path: str | Path, no: int) -> DataError:
    """`line` (the bytes of line `no`) failed to decode at `exc.start`."""
    return DataError(f"not valid UTF-8 (byte 0x{line[exc.start]:02x} at column "
                     f"{exc.start + 1})", path, no)


def lone_surrogate(value: Any) -> str | None:
    """The field path of the first string (key or value) holding a lone surrogate, else None.

    Iterative, so a record nested as deeply as `json` allows cannot overflow the stack."""
    stack: list[tuple[str, Any]] = [("", value)]
    while stack:
        where, v = stack.pop()
        if isinstance(v, str):
            try:
                v.encode("utf-8")
            except UnicodeEncodeError:
                return where
        elif isinstance(v, dict):
            for k, item in v.items():
                stack.append((f"{where}.{k}" if where else str(k), k))
                stack.append((f"{where}.{k}" if where else str(k), item))
        elif isinstance(v, list):
            stack.extend((f"{where}[{i}]", item) for i, item in enumerate(v))
    return None
