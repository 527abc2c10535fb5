"""EleutherAI lm-evaluation-harness output (`lm_eval ... --log_samples`) as importer runs.

`lm_eval --output_path OUT --log_samples` writes `OUT/<model>/results_<date>.json` and one
`samples_<task>_<date>.jsonl` per task. For a `multiple_choice` task each line holds one
(doc_id, filter): `arguments` (`gen_args_i` = {`arg_0`: context, `arg_1`: " choice"}),
`filtered_resps` (one `[loglik, is_greedy]` per option, written as strings since 0.4.4),
`target` (the gold index, or the gold choice's text) and the per-sample metrics (`acc`,
`acc_norm`, ...). What this module makes of it:

- the probability over the options is the softmax of the option log-likelihoods (what the
  harness itself uses for its Brier score); the gold is `target`, read as an index or as
  the text of an option, whichever reproduces the sample's own `acc` (a target "2" among
  options "1", "2", "3" is ambiguous only in the file, not in the harness);
- each task is one run named after the task; `acc_norm` (log-likelihood divided by the
  option's length in characters, the harness's definition) is a second run
  `<task>-acc_norm` whose probabilities are the softmax of the normalised scores, stored
  only when the samples hold `acc_norm` and every sample reproduces it;
- the accuracy stored must equal the `acc,<filter>` of `results_*.json` (checked by the
  importer after validation);
- pitfalls handled: 0.4.0-0.4.2 wrote one JSON array (`arguments` as lists, numbers instead
  of strings); `acc_mutual_info` tasks hold 2N entries (the last N are the unconditional
  ones, dropped); one line per (doc_id, filter): each filter is its own run
  (`<task>-<filter>` beside `<task>` for `none`), a repeated identical line is dropped and
  a repeated different one refused; multiple-input tasks (winogrande: one context per
  option, `target` is the shared continuation's text) take the gold from `acc` where two
  options make it unique;
- refused with `FILE:LINE: field`: generate_until samples (generated text, no option
  log-likelihoods; skipped with a note inside a folder), a missing `target`, a target that
  names no option, several gold options, a sample whose `acc` the log-likelihoods and target
  do not reproduce.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

from ...data import jsonl
from ...errors import DataError
from .base import Converted, ConvertedRun, option_frame, softmax_rows
from .lm_eval_samples import Sample, parse_sample, read_records

DATE = r"\d{4}-\d{2}-\d{2}T[0-9.\-]+"
SAMPLES = re.compile(rf"samples_(?P<task>.+)_(?P<date>{DATE})\.jsonl")
RESULTS = re.compile(rf"results_(?P<date>{DATE})\.json")
TASK_NAME = re.compile(r"[^A-Za-z0-9._-]+")


def looks_like_samples(record: object) -> bool:
    """A parsed first line/element of an lm-eval samples file."""
    return isinstance(record, dict) and "doc_id" in record and (
        "filtered_resps" in record or "resps" in record)


def is_output_folder(folder: Path) -> bool:
    return _run_folder(folder, quiet=True) is not None


# ------------------------------------------------------------------------------ runs

def task_name(task: str) -> str:
    """A task's name as a pipeline name (its characters; MMLU's names fit as they are)."""
    return TASK_NAME.sub("_", task).strip("_")[:64] or "task"


def read_samples(path: Path, task: str | None = None, results: dict | None = None,
                 results_path: Path | None = None) -> Converted:
    """The runs of one samples file (a task's filters, and its acc_norm variant)."""
    if task is None:
        m = SAMPLES.fullmatch(path.name)
        task = m["task"] if m else re.sub(r"^samples_", "", path.stem)
    config = ((results or {}).get("configs") or {}).get(task) or {}
    delimiter = config.get("target_delimiter", " ")
    delimiter = delimiter if isinstance(delimiter, str) else " "
    by_filter: dict[str, dict[str, Sample]] = {}
    notes: list[str] = []
    for line, record in read_records(path):
        sample = parse_sample(record, path, line, delimiter)
        seen = by_filter.setdefault(sample.filter, {})
        first = seen.get(sample.doc_id)
        if first is None:
            seen[sample.doc_id] = sample
        elif first.key != sample.key:
            raise DataError(f"doc_id {sample.doc_id} with filter {sample.filter!r} is already "
                            f"on line {first.line}, with other log-likelihoods or target",
                            path, line, "doc_id")
        else:
            notes.append(f"{path}:{line}: doc_id {sample.doc_id} (filter {sample.filter!r}) "
                         f"repeats line {first.line}; read once")
    if not by_filter:
        raise DataError("no samples in the file", path)
    model = _model(results)
    runs = []
    for filt, samples in by_filter.items():
        name = task_name(task) if filt == "none" or len(by_filter) == 1 else \
            f"{task_name(task)}-{task_name(filt)}"
        rows = list(samples.values())
        runs.append(_run(path, name, None, rows, [s.lls for s in rows], model, task, filt,
                         _expected(results, results_path, task, "acc", filt)))
        norm_runs, why = _norm_run(path, name, rows, model, task, filt, results,
                                   results_path)
        runs += norm_runs
        if why:
            notes.append(f"{path}: {task}: acc_norm not stored: {why}")
    return Converted(runs, notes)


def _norm_run(path: Path, name: str, rows: list[Sample], model: str | None, task: str,
              filt: str, results: dict | None, results_path: Path | None
              ) -> tuple[list[ConvertedRun], str | None]:
    """The acc_norm run, or why there is none (no acc_norm in the samples is no note)."""
    if all(s.acc_norm is None for s in rows):
        return [], None
    if any(s.acc_norm is None or not s.lengths for s in rows):
        return [], "not every sample has acc_norm and option lengths (a multiple-input task)"
    scores = [[ll / k for ll, k in zip(s.lls, s.lengths)] for s in rows]
    bad = [s.line for s, sc in zip(rows, scores)
           if float(int(np.argmax(sc)) == s.gold) != s.acc_norm]
    if bad:
        return [], (f"the option lengths do not reproduce the samples' acc_norm (line "
                    f"{bad[0]}; another target_delimiter?)")
    return [_run(path, name, "acc_norm", rows, scores, model, task, filt,
                 _expected(results, results_path, task, "acc_norm", filt))], None


def _run(path: Path, name: str, variant: str | None, rows: list[Sample],
         scores: list[list[float]], model: str | None, task: str, filt: str,
         expected: tuple[float, str] | None) -> ConvertedRun:
    width = max(len(s) for s in scores)
    padded = np.full((len(rows), width), -np.inf)
    for i, s in enumerate(scores):
        padded[i, :len(s)] = s
    probs = softmax_rows(padded)
    gold = np.fromiter((s.gold for s in rows), dtype=np.intp, count=len(rows))
    cells = option_frame(probs, gold, [s.doc_id for s in rows], [s.question for s in rows],
                         np.fromiter((s.line for s in rows), np.int64, len(rows)))
    choices = [s.texts + ["(no option)"] * (width - len(s.texts)) for s in rows]
    what = ("softmax of log-likelihood / option length in characters (lm-eval acc_norm)"
            if variant else "softmax of the option log-likelihoods (lm-eval acc)")
    return ConvertedRun(path, cells, task=name, variant=variant, model=model, choices=choices,
                        config={"format": "lm-eval", "task": task, "filter": filt,
                                "probabilities": what},
                        expected_accuracy=expected)


def _model(results: dict | None) -> str | None:
    if not results:
        return None
    name = results.get("model_name")
    if isinstance(name, str) and name:
        return name
    args = (results.get("config") or {}).get("model_args")
    if isinstance(args, str):
        m = re.search(r"pretrained=([^,]+)", args)
        return m[1] if m else args[:200]
    return None


def _expected(results: dict | None, results_path: Path | None, task: str, metric: str,
              filt: str) -> tuple[float, str] | None:
    value = ((results or {}).get("results") or {}).get(task, {}).get(f"{metric},{filt}")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value), f"{results_path}: results.{task}.{metric},{filt}"


# ------------------------------------------------------------------------------ folders

def _run_folder(folder: Path, quiet: bool = False) -> Path | None:
    """The folder holding results_*.json / samples_*.jsonl: FOLDER or its one model folder."""
    if not folder.is_dir():
        return None
    if any(RESULTS.fullmatch(p.name) or SAMPLES.fullmatch(p.name) for p in folder.iterdir()):
        return folder
    inner = sorted(p for p in folder.iterdir() if p.is_dir() and _run_folder_here(p))
    if len(inner) == 1:
        return inner[0]
    if len(inner) > 1 and not quiet:
        raise DataError(f"results of {len(inner)} models ({', '.join(p.name for p in inner)}); "
                        "import one model's folder at a time", folder)
    return None


def _run_folder_here(folder: Path) -> bool:
    return any(RESULTS.fullmatch(p.name) or SAMPLES.fullmatch(p.name) for p in folder.iterdir())


def read_folder(folder: Path) -> Converted:
    """Every task of an lm-eval output folder (the newest run when it holds several)."""
    here = _run_folder(folder)
    if here is None:
        raise DataError("no results_*.json or samples_*.jsonl here: not an lm-eval output "
                        "folder (run lm_eval with --output_path and --log_samples)", folder)
    results_files = sorted((p for p in here.iterdir() if RESULTS.fullmatch(p.name)),
                           key=lambda p: p.name)
    samples = [p for p in here.iterdir() if SAMPLES.fullmatch(p.name)]
    if not samples:
        raise DataError("no samples_*.jsonl: run lm_eval with --log_samples", here)
    date = (RESULTS.fullmatch(results_files[-1].name)["date"] if results_files
            else max(SAMPLES.fullmatch(p.name)["date"] for p in samples))
    results_path = here / f"results_{date}.json" if results_files else None
    results = _read_results(results_path) if results_path else None
    notes = []
    older = [p for p in samples if SAMPLES.fullmatch(p.name)["date"] != date]
    if older:
        notes.append(f"{here}: {len(older)} samples file(s) of older runs left out (only the "
                     f"run of {date} is imported)")
    runs = []
    for path in sorted(p for p in samples if p not in older):
        task = SAMPLES.fullmatch(path.name)["task"]
        out = ((results or {}).get("configs") or {}).get(task, {}).get("output_type")
        if out not in (None, "multiple_choice"):
            notes.append(f"{path}: task {task} is {out}, not multiple_choice; left out")
            continue
        converted = read_samples(path, task, results, results_path)
        runs += converted.runs
        notes += converted.notes
    if not runs:
        raise DataError("no multiple_choice task to import", here)
    return Converted(runs, notes)


def _read_results(path: Path) -> dict:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, *jsonl.JSON_ERRORS) as exc:
        raise DataError(f"cannot read as JSON: {exc}", path) from None
    if not isinstance(value, dict):
        raise DataError("not a JSON object (lm-eval's results_*.json is one)", path)
    return value
