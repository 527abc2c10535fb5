"""One lm-evaluation-harness sample line as a `Sample` (for `lm_eval`): the layouts of
0.4.0-0.4.2 (a JSON array; `arguments` as lists, numbers) and 0.4.3+ (JSON Lines;
`gen_args_i`, strings), the gold read from `target`, and every refusal as `FILE:LINE: field`.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ...data import jsonl
from ...errors import DataError
from .base import LETTERS

MAX_OPTIONS = len(LETTERS)


def read_records(path: Path) -> Iterator[tuple[int, object]]:
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


def parse_sample(record: object, path: Path, line: int, delimiter: str) -> Sample:
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
