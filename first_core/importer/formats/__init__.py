"""Other tools' evaluation files as importer runs: which format a path is (`detect`) and its
conversion (`convert`) into the importer's per-option layout (`base.ConvertedRun`), which
`importer.validate_cells` then checks and `importing.import_file` stores like any import.

Formats: `table` (the importer's own CSV / Parquet / JSONL columns), `lm-eval`
(`lm_eval.py`), `openai` (`openai_logprobs.py`) and `lighteval` (`lighteval.py`). A `.zip`
(the Home page's upload of an lm-eval folder) is unpacked into a temporary folder first
(`archive.py`), and every message names the file inside the zip.
"""

from __future__ import annotations

import json
from pathlib import Path

from ...errors import DataError
from ..table_read import SUFFIXES, read_cells
from . import archive, lighteval, lm_eval, openai_logprobs
from .base import Converted, ConvertedRun

FORMATS = ("auto", "table", "lm-eval", "openai", "lighteval")


def _first_record(path: Path) -> object:
    """The first JSON value of a .jsonl / .json file (None when it is not readable)."""
    try:
        with path.open("rb") as handle:
            head = handle.read(1 << 20)
    except OSError:
        return None
    text = head.decode("utf-8", errors="replace").lstrip("\ufeff").lstrip()
    if text.startswith("["):
        text = text[1:].lstrip()
    try:
        return json.JSONDecoder().raw_decode(text)[0]
    except ValueError:
        return None


def detect(path: Path) -> str:
    """The format of PATH, from its name and first record; `table` when nothing else fits."""
    if path.is_dir():
        if lm_eval.is_output_folder(path) or any(path.glob("*/samples_*.jsonl")):
            return "lm-eval"  # several model folders: read_folder says to pick one
        if lighteval.details_files(path):
            return "lighteval"
        raise DataError("a folder, but neither an lm-eval output folder (results_*.json, "
                        "samples_*.jsonl) nor lighteval details (details_*.parquet)", path)
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".json", ".ndjson"):
        first = _first_record(path)
        if lm_eval.looks_like_samples(first) or lm_eval.SAMPLES.fullmatch(path.name):
            return "lm-eval"
        if openai_logprobs.looks_like_batch_line(first):
            return "openai"
    if suffix in (".parquet", ".pq") and lighteval.looks_like_details(path):
        return "lighteval"
    return "table"


def convert(path: Path, fmt: str = "auto", gold: Path | None = None) -> Converted:
    """PATH as runs of the importer's layout; a `DataError` for anything unreadable."""
    if fmt not in FORMATS:
        raise DataError(f"--format: one of {list(FORMATS)}; got {fmt!r}")
    if not path.exists():
        raise DataError("no such file or folder", path)
    if path.suffix.lower() == ".zip":
        return archive.convert_zip(path, lambda folder: convert(folder, fmt, gold))
    if fmt == "auto":
        fmt = detect(path)
    if gold is not None and fmt != "openai":
        raise DataError(f"--gold: only for --format openai (this is {fmt})")
    if fmt == "table":
        if path.is_dir():
            raise DataError(f"a folder; give one file ({', '.join(sorted(SUFFIXES))})", path)
        return Converted([ConvertedRun(path, read_cells(path))])
    if fmt == "lm-eval":
        return lm_eval.read_folder(path) if path.is_dir() else lm_eval.read_samples(path)
    if fmt == "openai":
        return openai_logprobs.read_batch(path, gold)
    return lighteval.read_details(path)
