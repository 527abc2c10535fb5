"""Hugging Face data sets as rows (`[data] hf_dataset`): a Hub name or a local folder, fetched
once into the JSONL files the pipeline then checks and hashes like any others. Every way
`datasets` can fail is one `FirstError` naming the data set, the split and the cause."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ..console import configure_datasets
from ..errors import FirstError


def hf_rows(name: str, split: str, subset: str | None = None) -> tuple[list[Any], str]:
    """(rows, source) of one split of a Hugging Face data set: a Hub name (needs internet),
    or a local folder (`Dataset.save_to_disk`, or JSON / JSONL files named by split).
    `split` may slice (`"train[:90%]"`). A missing package, an unknown name or split, or no
    connection is one `FirstError` naming the data set and split."""
    source = f"hf:{name}{'/' + subset if subset else ''}[{split}]"
    try:
        import datasets
    except ImportError:
        raise FirstError("loading a Hugging Face data set by name needs the `datasets` "
                         "package: pip install datasets") from None
    configure_datasets()  # quiet, as the CLI made the other libraries
    try:
        rows = datasets.load_dataset(name, subset, split=split)
    except Exception as exc:  # noqa: BLE001 - datasets raises many kinds; all mean "cannot load"
        expected = (f"; the folder {name} should hold a data set saved with "
                    "Dataset.save_to_disk, or JSON / JSONL / CSV / Parquet files named by split "
                    "(train.jsonl, validation.jsonl, test.jsonl) with the same fields in every "
                    "file" if Path(name).is_dir() else "")
        raise FirstError(f"{source}: cannot load it: {_causes(exc)}{expected}") from None
    return list(rows), source


def _causes(exc: BaseException, limit: int = 400) -> str:
    """`exc` and the exceptions behind it as one line ("An error occurred ...: because:
    Couldn't cast ..."): `datasets` often wraps the useful message in a vague one."""
    parts: list[str] = []
    while exc is not None and len(parts) < 4:
        text = " ".join(str(exc).split()) or type(exc).__name__
        if text not in parts:
            parts.append(text)
        exc = exc.__cause__ or exc.__context__
    line = "; because: ".join(parts)
    return line if len(line) <= limit else line[:limit - 3] + "..."


def write_hf_splits(name: str, splits: Iterable[tuple[str, str | Path]],
                    subset: str | None = None) -> None:
    """Write each (hf split, path) of a Hugging Face data set (`hf_rows`) to that JSONL file,
    row by row as the data set has it: the pipeline then reads, checks (FILE:LINE: field)
    and hashes these files like any others (`[data] hf_dataset`). Every split is fetched
    before any file is written, so a failing one leaves the others as they were."""
    from ..atomic_files import write_text_atomic

    fetched = [(Path(path), hf_rows(name, split, subset)[0]) for split, path in splits]
    for path, rows in fetched:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(path, "".join(json.dumps(dict(r), ensure_ascii=False, default=str)
                                        + "\n" for r in rows))
