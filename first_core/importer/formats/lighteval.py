"""Hugging Face lighteval details (`details_<task>_<date>.parquet`) as importer runs.

Since lighteval 0.11 each row is one `Detail`: the struct column `doc` (`query`, `choices`,
`gold_index`, ...) and `model_response` (`logprobs`: one log-likelihood per choice for a
log-likelihood task). The probability over the options is the softmax of `logprobs`; the
gold is `gold_index`. Earlier versions wrote flat columns (`gold_index`, `predictions`,
`full_prompt`, ...): refused with a message naming the version. Also refused with
`FILE:ROW: field`: no logprobs (a generative task), a logprob count that is not the
choices', several gold indices, a gold index out of range. Rows are counted from 1.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np

from ...errors import DataError
from .base import LETTERS, Converted, ConvertedRun, option_frame, softmax_rows
from .lm_eval import task_name

DETAILS = re.compile(r"details_(?P<task>.+)_(?P<date>\d{4}-\d{2}-\d{2}T[0-9.\-_:]+)\.parquet")
OLD_COLUMNS = {"gold_index", "predictions", "full_prompt", "pred_logits", "choices"}


def _schema_names(path: Path) -> list[str] | None:
    import pyarrow as pa
    import pyarrow.parquet as pq
    try:
        return list(pq.read_schema(path).names)
    except (pa.ArrowException, OSError, ValueError):
        return None


def looks_like_details(path: Path) -> bool:
    """A lighteval details file of any version (its name, or its columns)."""
    names = _schema_names(path) or []
    return bool(DETAILS.fullmatch(path.name)) or {"doc", "model_response"} <= set(names) or (
        len(OLD_COLUMNS & set(names)) >= 3)


def details_files(folder: Path) -> list[Path]:
    return sorted(folder.rglob("details_*.parquet"))


def read_details(path: Path) -> Converted:
    """One details file, or every details file under a folder."""
    files = details_files(path) if path.is_dir() else [path]
    runs, notes = [], []
    for file in files:
        runs.append(_read_one(file))
    return Converted(runs, notes)


def _read_one(path: Path) -> ConvertedRun:
    import pyarrow as pa
    import pyarrow.parquet as pq
    names = _schema_names(path)
    if names is None:
        raise DataError("cannot read as Parquet", path)
    if not {"doc", "model_response"} <= set(names):
        if len(OLD_COLUMNS & set(names)) >= 3:
            raise DataError("lighteval details from before 0.11 (flat columns "
                            f"{sorted(OLD_COLUMNS & set(names))}); this importer reads the "
                            "0.11+ layout (struct columns doc and model_response): rerun the "
                            "evaluation with lighteval 0.11 or later", path)
        raise DataError(f"not lighteval details: no doc / model_response columns ({names[:8]})",
                        path)
    try:
        table = pq.read_table(path, columns=["doc", "model_response"])
        docs = table.column("doc").to_pylist()
        responses = table.column("model_response").to_pylist()
    except (pa.ArrowException, ValueError) as exc:
        raise DataError(f"cannot read as Parquet: {exc}", path) from None
    scores, gold, ids, questions, choices = [], [], [], [], []
    for row, (doc, resp) in enumerate(zip(docs, responses), start=1):
        lp, g, opts = _row(doc, resp, path, row)
        scores.append(lp)
        gold.append(g)
        choices.append(opts)
        ids.append(str(doc.get("id") or row) if isinstance(doc, dict) else str(row))
        q = doc.get("query") if isinstance(doc, dict) else None
        questions.append(q if isinstance(q, str) and q.strip() else None)
    if not scores:
        raise DataError("no rows in the file", path)
    width = max(len(s) for s in scores)
    padded = np.full((len(scores), width), -np.inf)
    for i, s in enumerate(scores):
        padded[i, :len(s)] = s
    m = DETAILS.fullmatch(path.name)
    task = task_name(m["task"] if m else path.stem.removeprefix("details_"))
    cells = option_frame(softmax_rows(padded), np.asarray(gold, dtype=np.intp), ids,
                         questions if any(q is not None for q in questions) else None,
                         np.arange(1, len(scores) + 1))
    if len(set(ids)) != len(ids):  # doc ids are not unique: name rows by their row instead
        cells.frame["example_id"] = [f"row-{i}" for i in range(1, len(ids) + 1)]
    return ConvertedRun(path, cells, task=task,
                        choices=[c + ["(no option)"] * (width - len(c)) for c in choices],
                        config={"format": "lighteval", "task": task,
                                "probabilities": "softmax of model_response.logprobs"})


def _row(doc: object, resp: object, path: Path, row: int
         ) -> tuple[list[float], int, list[str]]:
    if not isinstance(doc, dict) or not isinstance(resp, dict):
        raise DataError("missing", path, row, "doc" if not isinstance(doc, dict)
                        else "model_response")
    opts = doc.get("choices") or []
    logprobs = resp.get("logprobs") or []
    if not logprobs:
        raise DataError("empty: a generative task (no log-likelihood per choice); only "
                        "log-likelihood (multiple-choice) tasks can be imported", path, row,
                        "model_response.logprobs")
    if len(logprobs) != len(opts) or not 2 <= len(opts) <= len(LETTERS):
        raise DataError(f"{len(logprobs)} logprobs for {len(opts)} choices (2 to "
                        f"{len(LETTERS)} are needed, one logprob each)", path, row,
                        "model_response.logprobs")
    if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in logprobs):
        raise DataError("not all finite numbers", path, row, "model_response.logprobs")
    g = doc.get("gold_index")
    if isinstance(g, list):
        if len(g) != 1:
            raise DataError(f"{len(g)} gold indices; one is needed", path, row,
                            "doc.gold_index")
        g = g[0]
    if isinstance(g, bool) or not isinstance(g, int) or not 0 <= g < len(opts):
        raise DataError(f"{g!r} is not an index of the {len(opts)} choices", path, row,
                        "doc.gold_index")
    return [float(v) for v in logprobs], g, [str(o).strip() for o in opts]
