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
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import jsonl
from ..errors import DataError
from .base import LETTERS, Converted, ConvertedRun, option_frame, softmax_rows

DATE = r"\d{4}-\d{2}-\d{2}T[0-9.\-]+"
SAMPLES = re.compile(rf"samples_(?P<task>.+)_(?P<date>{DATE})\.jsonl")
RESULTS = re.compile(rf"results_(?P<date>{DATE})\.json")
TASK_NAME = re.compile(r"[^A-Za-z0-9._-]+")
MAX_OPTIONS = len(LETTERS)


def looks_like_samples(record: object) -> bool:
    """A parsed first line/element of an lm-eval samples file."""
    return isinstance(record, dict) and "doc_id" in record and (
        "filtered_resps" in record or "resps" in record)


def is_output_folder(folder: Path) -> bool:
    return _run_folder(folder, quiet=True) is not None


# ------------------------------------------------------------------------------ reading

def _records(path: Path) -> Iterator[tuple[int, object]]:
    """(line, parsed value) of every sample: JSON Lines, or the JSON array of 0.4.0-0.4.2."""
    head = path.read_bytes()[:4096].lstrip()
    if head.startswith(b"["):
        yield from _array_records(path)
        return
    for line, value in jsonl.read_jsonl(path):
        if isinstance(value, DataError):
            raise value
        yield line, value


def _array_records(path: Path) -> Iterator[tuple[int, object]]:
    """Elements of a JSON array with the line each one starts on."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DataError(f"not valid UTF-8 (byte {exc.start})", path) from None
    decoder, at, line = json.JSONDecoder(), text.index("[") + 1, 1
    line += text.count("\n", 0, at)
    while True:
        while at < len(text) and text[at] in " \t\r\n,":
            line += text[at] == "\n"
            at += 1
        if at >= len(text) or text[at] == "]":
            return
        try:
            value, end = decoder.raw_decode(text, at)
        except jsonl.JSON_ERRORS as exc:
            raise jsonl.json_error(exc, path, line) from None
        yield line, value
        line += text.count("\n", at, end)
        at = end


@dataclass
class Sample:
    """One multiple-choice sample as read: its log-likelihoods and what the gold is."""

    line: int
    doc_id: str
    filter: str
    lls: list[float]
    texts: list[str]        # option texts as shown
    lengths: list[int]      # option lengths in characters (acc_norm's divisor)
    question: str
    gold: int
    acc_norm: float | None
    key: tuple              # what a repeated (doc_id, filter) line must repeat


def _ll(entry: object) -> object:
    """The log-likelihood of one `filtered_resps` entry: `[ll, is_greedy]` (numbers, or
    strings since 0.4.4), that pair wrapped in a list (`resps`), or the bare number."""
    while isinstance(entry, list) and len(entry) == 1 and isinstance(entry[0], list):
        entry = entry[0]
    if isinstance(entry, list) and len(entry) == 2:
        entry = entry[0]
    return entry


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        return None
    try:
        out = float(value)
    except (ValueError, OverflowError):
        return None
    return out if math.isfinite(out) else None


def _arguments(record: dict, path: Path, line: int) -> list[tuple[str, object]]:
    """(context, continuation) per request: `gen_args_i` dicts (0.4.3+) or lists (0.4.0)."""
    args = record.get("arguments")
    if isinstance(args, dict):  # gen_args_0, gen_args_1, ... in the order written
        pairs = [(p.get("arg_0"), p.get("arg_1")) if isinstance(p, dict) else None
                 for p in args.values()]
    elif isinstance(args, list):
        pairs = [tuple(p[:2]) if isinstance(p, list) and len(p) >= 2 else None for p in args]
    else:
        raise DataError("missing, or not the harness's requests (gen_args_0, ...)", path, line,
                        "arguments")
    if not pairs or any(p is None or not isinstance(p[0], str) for p in pairs):
        raise DataError("each request must hold a context (arg_0) and a continuation (arg_1)",
                        path, line, "arguments")
    return pairs


def _sample(record: object, path: Path, line: int, delimiter: str) -> Sample:
    """One line as a `Sample`, or a `DataError` naming the line and field."""
    if not isinstance(record, dict):
        raise DataError(f"each sample must be a JSON object, got {type(record).__name__}",
                        path, line)
    if "doc_id" not in record:
        raise DataError("missing", path, line, "doc_id")
    pairs = _arguments(record, path, line)
    if any(not isinstance(cont, str) for _, cont in pairs):  # generation kwargs: a dict
        raise DataError("a generate_until sample (generated text, no log-likelihood per "
                        "option); only multiple_choice tasks can be imported", path, line,
                        "arguments")
    resps = record.get("filtered_resps", record.get("resps"))
    if not isinstance(resps, list):
        raise DataError("missing: the option log-likelihoods", path, line, "filtered_resps")
    raw = [_ll(e) for e in resps]
    if raw and all(isinstance(v, str) and _number(v) is None for v in raw):
        raise DataError("generated text, not log-likelihoods (a generate_until task); only "
                        "multiple_choice tasks can be imported", path, line, "filtered_resps")
    lls = [_number(v) for v in raw]
    if any(v is None for v in lls):
        bad = next(v for v, x in zip(raw, lls) if x is None)
        raise DataError(f"not a finite log-likelihood: {str(bad)[:40]!r}", path, line,
                        "filtered_resps")
    if len(lls) != len(pairs):
        raise DataError(f"{len(lls)} log-likelihoods for {len(pairs)} requests", path, line,
                        "filtered_resps")
    n = len(pairs)
    if "acc_mutual_info" in record and n % 2 == 0 and all(
            ctx == "" for ctx, _ in pairs[n // 2:]):
        n //= 2  # the last N are the unconditional log-likelihoods of the options
        pairs, lls = pairs[:n], lls[:n]
    if not 2 <= n <= MAX_OPTIONS:
        raise DataError(f"{n} options; 2 to {MAX_OPTIONS} can be imported", path, line,
                        "arguments")
    if "target" not in record or record["target"] is None:
        raise DataError("missing: the gold answer (index or text) is needed", path, line,
                        "target")
    target = record["target"]
    conts = [cont for _, cont in pairs]
    multiple_input = len(set(conts)) == 1 and len({ctx for ctx, _ in pairs}) > 1
    if multiple_input:  # winogrande: one context per option, one shared continuation
        texts, lengths, question = [ctx for ctx, _ in pairs], None, conts[0].strip()
    else:
        texts = [c[len(delimiter):] if c.startswith(delimiter) else c for c in conts]
        lengths, question = [len(t) for t in texts], pairs[0][0]
    acc = _number(record.get("acc"))
    gold = _gold(target, texts, lls, acc, multiple_input, path, line)
    norm = record.get("acc_norm") if lengths is not None and min(lengths) > 0 else None
    return Sample(line, str(record["doc_id"]), str(record.get("filter", "none")), lls,
                  [t.strip() for t in texts], lengths or [], question, gold,
                  _number(norm), (*lls, str(target)))


def _gold(target: object, texts: list[str], lls: list[float], acc: float | None,
          multiple_input: bool, path: Path, line: int) -> int:
    """The gold option's index: `target` as an index or as an option's text, whichever
    gives the sample's own `acc` (the first that exists when there is no `acc`)."""
    n = len(texts)
    best = max(range(len(lls)), key=lls.__getitem__)  # the first of equal maxima, as argmax
    text = str(target)
    if text.startswith("[") or isinstance(target, list):
        raise DataError(f"several gold options ({text[:60]}); one is needed", path, line,
                        "target")
    if multiple_input:
        if acc is None or n != 2:
            raise DataError(f"{text[:60]!r} is the continuation shared by every option (a "
                            "multiple-input task such as winogrande); its gold can be read "
                            "from `acc` only with two options and `acc` present", path, line,
                            "target")
        return best if acc == 1 else 1 - best
    candidates = []
    if re.fullmatch(r"-?\d+", text.strip()) and 0 <= int(text) < n:
        candidates.append(int(text))
    candidates += [i for i, t in enumerate(texts) if t == text or t.strip() == text.strip()][:1]
    if not candidates:
        raise DataError(f"{text[:60]!r} is neither an option index (0-{n - 1}) nor one of the "
                        "option texts", path, line, "target")
    if acc is None:
        return candidates[0]
    for gold in candidates:
        if float(best == gold) == acc:
            return gold
    raise DataError(f"the sample says acc = {acc:g}, but the option log-likelihoods and "
                    f"target {text[:40]!r} give {float(best == candidates[0]):g}", path, line,
                    "acc")


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
    for line, record in _records(path):
        sample = _sample(record, path, line, delimiter)
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
    inner = [p for p in folder.iterdir() if p.is_dir() and _run_folder_here(p)]
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
