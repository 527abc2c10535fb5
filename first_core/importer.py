"""Import any model's predictions into the store, so every dashboard page works on them.

    python -m first_core import FILE --name NAME [--store PATH] [--model MODEL]

FILE is CSV, Parquet or JSONL (by its suffix: .csv, .parquet / .pq, .jsonl / .ndjson), one
prediction per row, in one of two layouts:

- **per-option probabilities**: one column `p_<LABEL>` per answer option (at least two,
  e.g. `p_A, p_B, p_C, p_D`), each in [0, 1] with a row sum in (0, 1] (the rest of the
  vocabulary may keep some mass), and `gold`, the correct option's LABEL;
- **confidence + correct**: `confidence` in [0, 1] (the model's probability for its own
  answer) and `correct` (true/false, 1/0).

Optional columns: `example_id` (unique per split; default `row-N`), `split` (`val`, `test`
or `test_ood`; default `test`), `question` (shown as plain text on Examples and in the
drill-down). Any other column is an error, so a typo cannot be silently ignored.

How the store's two confidence conventions are filled: with per-option probabilities the
paper convention is the top-1 raw probability (its top-k are the options, largest first) and
the option convention is renormalised over the options, exactly like a pipeline run. With
confidence + correct there are no options: the paper convention is (confidence, correct)
as given, and the option convention is the binary question "is the answer right?"
(probabilities [confidence, 1 - confidence] over right / wrong).

Everything is checked before anything is written; every problem is reported as
`FILE:LINE: field: what is wrong` (CSV and JSONL lines of the file, Parquet rows counted
from 1), and the run lands in the store in one transaction (`store.write_imported_run`) as
pipeline NAME with the method `imported`, replacing an earlier import of the same name.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd

from . import store
from .errors import DataError
from .evaluate import compute_metrics

MAX_BYTES = 50 * 1024 * 1024  # the dashboard's upload limit (the CLI reads any size)
MAX_PROBLEMS = 20             # problems listed before "... and N more"
MAX_OPTIONS = 26
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
OPTION = re.compile(r"^p_(.+)$")
OPTIONAL = ("example_id", "split", "question")
SUFFIXES = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet", ".jsonl": "jsonl",
            ".ndjson": "jsonl"}
TRUE, FALSE = {"true", "1", "1.0", "yes", "t", "y"}, {"false", "0", "0.0", "no", "f", "n"}
PROB_TOL = 1e-6


class _Problems:
    """Collects `FILE:LINE: field: message` lines; `raise_if_any` raises them as one error."""

    def __init__(self, path: Path, lines: np.ndarray) -> None:
        self.path, self.lines, self.found = path, lines, []

    def add(self, mask: np.ndarray, field: str, message: str) -> None:
        for r in np.flatnonzero(mask)[:MAX_PROBLEMS]:
            line = int(self.lines[r])
            self.found.append((line, f"{self.path}:{line}: {field}: {message}"))

    def raise_if_any(self) -> None:
        if not self.found:
            return
        found = sorted(self.found, key=lambda p: p[0])
        text = [m for _, m in found[:MAX_PROBLEMS]]
        if len(found) > MAX_PROBLEMS:
            text.append(f"... and {len(found) - MAX_PROBLEMS} more problem(s)")
        raise DataError("\n".join(text))


def _read(path: Path) -> tuple[pd.DataFrame, np.ndarray]:
    """The file's rows as strings/objects and each row's line number (Parquet: row number)."""
    kind = SUFFIXES.get(path.suffix.lower())
    if kind is None:
        raise DataError(f"unknown file type {path.suffix!r}; use one of {sorted(SUFFIXES)}",
                        path)
    if not path.is_file():
        raise DataError("no such file", path)
    try:
        if kind == "csv":
            frame = pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[""])
            return frame, np.arange(len(frame)) + 2  # line 1 is the header
        if kind == "parquet":
            frame = pd.read_parquet(path)
            return frame, np.arange(len(frame)) + 1
    except (ValueError, OSError, pd.errors.ParserError) as exc:
        raise DataError(f"cannot read as {kind}: {exc}", path) from None
    records, lines = [], []
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"not valid JSON ({exc.msg})", path, number) from None
            if not isinstance(record, dict):
                raise DataError("each line must be a JSON object", path, number)
            records.append(record)
            lines.append(number)
    return pd.DataFrame.from_records(records), np.asarray(lines, dtype=int)


def _numbers(column: pd.Series, field: str, problems: _Problems) -> np.ndarray:
    """Floats of a column; missing, non-numeric or non-finite cells are problems."""
    values = pd.to_numeric(column.map(lambda v: v if not isinstance(v, bool) else "bool"),
                           errors="coerce").to_numpy(dtype=np.float64)
    missing = column.isna().to_numpy()
    problems.add(missing, field, "missing value")
    problems.add(~missing & ~np.isfinite(values), field,
                 "not a finite number")
    return values


def _booleans(column: pd.Series, field: str, problems: _Problems) -> np.ndarray:
    text = column.map(lambda v: str(v).strip().lower() if v is not None and v == v else "")
    ok = text.isin(TRUE | FALSE).to_numpy()
    problems.add(~ok, field, "must be true/false or 1/0")
    return text.isin(TRUE).to_numpy()


def _texts(column: pd.Series | None, n: int, default: list[str]) -> np.ndarray:
    if column is None:
        return np.asarray(default, dtype=object)
    return column.map(lambda v: None if v is None or v != v else str(v)).to_numpy(dtype=object)


def read_predictions(path: str | Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Validate FILE and build (store predictions, examples) frames; raises `DataError`
    listing every problem (up to MAX_PROBLEMS) as `FILE:LINE: field: message`."""
    path = Path(path)
    frame, lines = _read(path)
    problems = _Problems(path, lines)
    if frame.empty:
        raise DataError("no predictions in the file", path)
    options = [c for c in frame.columns if OPTION.match(str(c))]
    layout = "options" if options else "confidence"
    known = set(OPTIONAL) | (set(options) | {"gold"} if options else {"confidence", "correct"})
    unknown = [str(c) for c in frame.columns if c not in known]
    if unknown:
        raise DataError(f"unknown column(s) {unknown}; expected p_<LABEL> columns + gold, or "
                        f"confidence + correct, and optionally {list(OPTIONAL)}", path)
    needed = ["gold"] if options else ["confidence", "correct"]
    missing = [c for c in needed if c not in frame.columns]
    if missing:
        hint = ("per-option probabilities need gold" if options
                else "give p_<LABEL> columns + gold, or confidence + correct")
        raise DataError(f"missing column(s) {missing} ({hint})", path)
    if layout == "options" and not 2 <= len(options) <= MAX_OPTIONS:
        raise DataError(f"need 2 to {MAX_OPTIONS} p_<LABEL> columns, got {len(options)}", path)
    n = len(frame)
    example_id = _texts(frame.get("example_id"), n, [f"row-{i}" for i in lines])
    problems.add(pd.isna(example_id), "example_id", "missing value")
    split = _texts(frame.get("split"), n, ["test"] * n)
    bad_split = ~pd.Series(split).isin(store.SPLITS).to_numpy()
    problems.add(bad_split, "split", f"must be one of {list(store.SPLITS)}")
    dup = pd.DataFrame({"s": split, "e": example_id}).duplicated().to_numpy()
    problems.add(dup, "example_id", "duplicate within its split")
    question = _texts(frame.get("question"), n, [None] * n) if "question" in frame else None

    if layout == "options":
        labels = [OPTION.match(str(c))[1] for c in options]
        probs = np.column_stack([_numbers(frame[c], c, problems) for c in options])
        finite = np.isfinite(probs)
        for j, c in enumerate(options):
            problems.add(finite[:, j] & ((probs[:, j] < 0) | (probs[:, j] > 1)), c,
                         "must be a probability in [0, 1]")
        total = np.where(finite, probs, 0).sum(axis=1)
        rows_ok = finite.all(axis=1)
        problems.add(rows_ok & ((total <= 0) | (total > 1 + PROB_TOL)), "/".join(options),
                     "probabilities must sum to more than 0 and at most 1")
        gold = _texts(frame["gold"], n, [])
        is_gold = np.asarray(labels, dtype=object)[None, :] == gold[:, None]
        problems.add(~is_gold.any(axis=1), "gold", f"must be one of {labels}")
        problems.raise_if_any()
        best = probs.argmax(axis=1)
        order = np.argsort(-probs, axis=1, kind="stable")[:, :5]
        top = np.take_along_axis(probs, order, axis=1)
        pred = np.asarray(labels, dtype=object)[best]
        preds = pd.DataFrame({
            "split": split, "example_id": example_id, "gold": gold, "pred": pred,
            "confidence": probs.max(axis=1), "correct": pred == gold, "pred_option": pred,
            "confidence_option": probs.max(axis=1) / total, "correct_option": pred == gold,
            "option_labels": [labels] * n, "option_probs": list(probs),
            "topk_probs": list(top),
            "topk_tokens": list(np.asarray(labels, dtype=object)[order])})
        choices = [labels] * n
    else:
        conf = _numbers(frame["confidence"], "confidence", problems)
        problems.add(np.isfinite(conf) & ((conf < 0) | (conf > 1)), "confidence",
                     "must be a probability in [0, 1]")
        correct = _booleans(frame["correct"], "correct", problems)
        problems.raise_if_any()
        verdict = np.where(correct, "right", "wrong").astype(object)
        binary = np.column_stack([conf, 1 - conf])
        sure = np.where(conf >= 0.5, "right", "wrong").astype(object)
        preds = pd.DataFrame({
            "split": split, "example_id": example_id, "gold": verdict,
            "pred": "(the model's answer)", "confidence": conf, "correct": correct,
            "pred_option": sure, "confidence_option": binary.max(axis=1),
            "correct_option": sure == verdict, "option_labels": [["right", "wrong"]] * n,
            "option_probs": list(binary), "topk_probs": list(conf[:, None]),
            "topk_tokens": [["(answer)"]] * n})
        labels, choices = [], [[]] * n
    examples = None
    if question is not None:
        keep = ~pd.isna(question)
        examples = pd.DataFrame({
            "split": split[keep], "example_id": example_id[keep], "question": question[keep],
            "labels": [labels] * int(keep.sum()),
            "choices": [c for c, k in zip(choices, keep) if k],
            "answer": preds["gold"].to_numpy()[keep] if layout == "options" else ""})
    return preds, examples


def import_predictions(path: str | Path, name: str, store_path: str | Path | None = None,
                       model: str | None = None) -> tuple[Path, str, int]:
    """Validate FILE, compute its metrics and store it as pipeline `name`.

    Returns (store path, run id, number of predictions). Nothing is written when any check
    fails (a `DataError` / `ConfigError` saying what and where).
    """
    if not NAME.match(name or ""):
        raise DataError("--name: 1-64 letters, digits, '.', '_' or '-', starting with a letter "
                        f"or digit; got {name!r}")
    preds, examples = read_predictions(path)
    metrics = pd.concat([compute_metrics(part.reset_index(drop=True)).assign(split=split)
                         for split, part in preds.groupby("split", sort=False)],
                        ignore_index=True)
    run_id = f"{name}/{store.IMPORTED_METHOD}/seed0"
    if examples is not None:
        examples = examples.assign(dataset=name)
    written = store.write_imported_run(
        store_path, pipeline=name, run_id=run_id, model=model or "unknown", dataset=name,
        predictions=preds, metrics=metrics, examples=examples,
        config={"imported_from": Path(path).name, "rows": len(preds)})
    return written, run_id, len(preds)
