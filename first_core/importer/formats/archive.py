"""A .zip of an evaluation folder (the Home page's upload of an lm-eval output folder),
unpacked safely into a temporary folder for `importers.convert`.

Refused: members with absolute paths or `..` (they would land outside the folder), more than
`MAX_MEMBERS` members or `MAX_UNPACKED` bytes unpacked (a zip bomb), and anything that is
not a zip. Messages name `ARCHIVE.zip/member` instead of the temporary folder.
"""

from __future__ import annotations

import dataclasses
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path, PurePosixPath

from ...errors import DataError, FirstError
from .base import Converted

MAX_MEMBERS = 10_000
MAX_UNPACKED = 2 * 1024**3


def _members(archive: zipfile.ZipFile, path: Path) -> list[zipfile.ZipInfo]:
    infos = [i for i in archive.infolist() if not i.is_dir()]
    if len(infos) > MAX_MEMBERS:
        raise DataError(f"{len(infos):,} files; at most {MAX_MEMBERS:,} are unpacked", path)
    if sum(i.file_size for i in infos) > MAX_UNPACKED:
        raise DataError(f"unpacks to more than {MAX_UNPACKED / 1024**3:g} GB", path)
    for info in infos:
        name = PurePosixPath(info.filename.replace("\\", "/"))
        if name.is_absolute() or ".." in name.parts or ":" in info.filename:
            raise DataError(f"member {info.filename[:80]!r} would unpack outside the folder",
                            path)
    return infos


def convert_zip(path: Path, convert: Callable[[Path], Converted]) -> Converted:
    """`convert` the zip's contents (its one top folder, or the zip's root)."""
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise DataError(f"not a readable zip file ({exc})", path) from None
    with archive, tempfile.TemporaryDirectory(prefix="first-import-") as tmp:
        root = Path(tmp)
        try:
            for info in _members(archive, path):
                archive.extract(info, root)
        except (zipfile.BadZipFile, OSError, RuntimeError, EOFError) as exc:
            raise DataError(f"cannot unpack: {exc}", path) from None
        entries = [p for p in root.iterdir() if not p.name.startswith("__MACOSX")]
        folder = entries[0] if len(entries) == 1 and entries[0].is_dir() else root
        shown = str(path) if folder == root else f"{path}/{folder.name}"
        try:
            converted = convert(folder)
        except FirstError as exc:
            raise type(exc)(str(exc).replace(str(folder), shown)) from None
        runs = [dataclasses.replace(r, path=Path(str(r.path).replace(str(folder), shown)))
                for r in converted.runs]
        return Converted(runs, [n.replace(str(folder), shown) for n in converted.notes])
