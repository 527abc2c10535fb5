"""User-facing errors.

Anything a user can cause (bad data, bad config, a broken store) raises a `FirstError`
subclass whose message names the file, line, field or argument. The CLI prints the message
and exits with status 2 instead of showing a traceback.
"""

from __future__ import annotations

from pathlib import Path


class FirstError(Exception):
    """An error caused by the user's input, with a message meant to be read by them."""


class ConfigError(FirstError, ValueError):
    """A config file or CLI flag is wrong (unknown key, wrong type, bad value)."""


class StoreError(FirstError):
    """The DuckDB store or a top-k store is missing, corrupt, or from another version."""


class DataError(FirstError, ValueError):
    """A data file is wrong; the message is `PATH:LINE: field: what is wrong`."""

    def __init__(self, message: str, path: str | Path | None = None,
                 line: int | None = None, field: str | None = None) -> None:
        self.path, self.line, self.field = path, line, field
        where = ":".join(str(p) for p in (path, line) if p is not None)
        what = f"{field}: {message}" if field else message
        super().__init__(f"{where}: {what}" if where else what)
