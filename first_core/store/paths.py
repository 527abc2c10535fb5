"""Where the store is: the default path (`$FIRST_STORE`, else `data/first.duckdb`), a
user-picked store resolved safely inside an allowed folder, and making a folder with a
message that says why it cannot be made.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import FirstError, StoreError

DEFAULT_STORE = Path("data/first.duckdb")
STORE_ENV = "FIRST_STORE"


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
