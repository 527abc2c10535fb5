"""OpenAI-compatible chat completions with `logprobs` / `top_logprobs` (OpenAI, vLLM, SGLang)
as an importer run, joined with the user's gold answers.

The file is the Batch API's output, one line per request: `{"custom_id": ..., "response":
{"status_code": 200, "body": <chat.completion>}, "error": null}`. GOLD (`--gold FILE`, CSV /
Parquet / JSONL) holds `custom_id` and `gold` (the right option's letter), optionally
`options` (the letters of that question, e.g. `ABCDE`; `ABCD` when absent) and `question`.

The answer token is the first generated token that is an option letter (`B`, ` B`, `B)`,
`**B`); its `top_logprobs` give the probability of each option, entries that differ only by
spaces or punctuation around the letter added up (`" A"` and `"A"`). An option missing from
the top-k gets probability 0 and is reported, never guessed; the mass outside the options
(the rest of the vocabulary, and the options below the top-k) stays outside, so the paper
convention's confidence is the raw probability and the option convention renormalises.
Refused with `FILE:LINE: field`: a failed request, no `top_logprobs`, no generated token that
is an option, a `custom_id` that GOLD does not have, a repeated `custom_id`.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pandas as pd

from ...data import jsonl
from ...errors import DataError
from ..table_read import Cells, read_cells
from .base import Converted, ConvertedRun

DEFAULT_OPTIONS = "ABCD"
LETTER = re.compile(r"[\s*_(\[]*([A-Z])[\s.):\]*_]*")
CONTENT = "response.body.choices[0].logprobs.content"


def looks_like_batch_line(record: object) -> bool:
    if not isinstance(record, dict) or "custom_id" not in record:
        return False
    body = (record.get("response") or {}).get("body") if isinstance(
        record.get("response"), dict) else None
    return isinstance(body, dict) and "choices" in body


def _letter(token: object) -> str:
    """The option letter a token stands for (`" B"`, `"B)"`, `"**B"`), or ""."""
    m = LETTER.fullmatch(token) if isinstance(token, str) else None
    return m[1] if m else ""


def _gold_table(gold: Path | None) -> pd.DataFrame:
    """custom_id -> (gold, options, question, line) from GOLD."""
    if gold is None:
        raise DataError("--gold FILE: required for --format openai (a CSV / JSONL with "
                        "custom_id and gold, the right option's letter)")
    cells = read_cells(Path(gold))
    frame = cells.frame
    missing = [c for c in ("custom_id", "gold") if c not in frame.columns]
    if missing:
        raise DataError(f"missing column(s) {missing}; GOLD needs custom_id and gold (and "
                        "optionally options, question)", gold)
    lines = cells.lines()
    ids = frame["custom_id"].astype(str)
    dup = ids.duplicated().to_numpy()
    if dup.any():
        r = int(np.flatnonzero(dup)[0])
        raise DataError(f"{ids.iloc[r]!r} repeated", gold, int(lines[r]), "custom_id")
    opts = (frame["options"].astype(str).str.replace(r"[^A-Z]", "", regex=True)
            if "options" in frame else pd.Series(DEFAULT_OPTIONS, index=frame.index))
    out = pd.DataFrame({"gold": frame["gold"].astype(str).str.strip().to_numpy(),
                        "options": opts.to_numpy(),
                        "question": frame["question"].to_numpy() if "question" in frame
                        else None, "line": lines}, index=ids.to_numpy())
    bad = [i for i, (g, o) in enumerate(zip(out["gold"], out["options"]))
           if len(o) < 2 or g not in o]
    if bad:
        r = bad[0]
        raise DataError(f"gold {out['gold'].iloc[r]!r} is not one of the options "
                        f"{out['options'].iloc[r]!r} (give an options column, e.g. ABCDE)",
                        gold, int(lines[r]), "gold")
    return out


def _answer_probs(record: dict, options: str, path: Path, line: int) -> dict[str, float]:
    """Probability of each option letter found in the answer token's top_logprobs."""
    if record.get("error") or not isinstance(record.get("response"), dict):
        raise DataError(f"the request failed: {str(record.get('error'))[:80]}", path, line,
                        "error")
    response = record["response"]
    if response.get("status_code", 200) != 200:
        raise DataError(f"status {response.get('status_code')}: the request failed", path,
                        line, "response.status_code")
    try:
        content = response["body"]["choices"][0]["logprobs"]["content"]
    except (KeyError, IndexError, TypeError):
        raise DataError("missing: request the completion with logprobs=true and "
                        "top_logprobs=20", path, line, CONTENT) from None
    if not isinstance(content, list):
        raise DataError("not a list of tokens", path, line, CONTENT)
    for entry in content:
        if isinstance(entry, dict) and _letter(entry.get("token")) in set(options):
            top = entry.get("top_logprobs")
            if not isinstance(top, list) or not top:
                raise DataError("missing on the answer token: request top_logprobs=20", path,
                                line, f"{CONTENT}[].top_logprobs")
            probs: dict[str, float] = {}
            for alt in top:
                letter = _letter(alt.get("token")) if isinstance(alt, dict) else ""
                lp = alt.get("logprob") if isinstance(alt, dict) else None
                if letter in set(options) and isinstance(lp, (int, float)) and math.isfinite(lp):
                    probs[letter] = probs.get(letter, 0.0) + math.exp(lp)
            return probs
    raise DataError(f"no generated token is one of the options {options}", path, line,
                    CONTENT)


def read_batch(path: Path, gold: Path | None) -> Converted:
    """The run of one Batch output file, with GOLD's answers."""
    table = _gold_table(gold)
    ids, probs, lines, seen = [], [], [], {}
    for line, record in jsonl.read_jsonl(path):
        if isinstance(record, DataError):
            raise record
        if not isinstance(record, dict) or not isinstance(record.get("custom_id"), str):
            raise DataError("missing: each Batch output line has one", path, line, "custom_id")
        cid = record["custom_id"]
        if cid in seen:
            raise DataError(f"{cid!r} is already on line {seen[cid]}", path, line, "custom_id")
        seen[cid] = line
        if cid not in table.index:
            raise DataError(f"{cid!r} is not in {gold}", path, line, "custom_id")
        probs.append(_answer_probs(record, table.at[cid, "options"], path, line))
        ids.append(cid)
        lines.append(line)
    if not ids:
        raise DataError("no completions in the file", path)
    rows = table.loc[ids]
    letters = sorted(set("".join(rows["options"])))
    matrix = np.array([[p.get(x, 0.0) for x in letters] for p in probs])
    frame = pd.DataFrame(matrix, columns=[f"p_{x}" for x in letters])
    frame.insert(0, "example_id", pd.array(ids, dtype="string"))
    frame["gold"] = pd.array(rows["gold"].to_list(), dtype="string")
    if rows["question"].notna().any():
        frame["question"] = rows["question"].to_numpy()
    notes = _missing_notes(path, lines, probs, rows["options"].to_list())
    outside = 1 - matrix.sum(axis=1)
    unused = len(table) - len(ids)
    if unused:
        notes.append(f"{gold}: {unused} custom_id(s) have no completion in {path}")
    found = np.asarray(lines, dtype=np.int64)
    return Converted([ConvertedRun(path, Cells(frame, lambda: found), config={
        "format": "openai", "gold": Path(gold).name,
        "mass_outside_options_mean": float(outside.mean()),
        "rows_with_options_missing_from_top_k": sum(
            len(set(o) - set(p)) > 0 for p, o in zip(probs, rows["options"]))})], notes)


def _missing_notes(path: Path, lines: list[int], probs: list[dict], options: list[str]
                   ) -> list[str]:
    """One note per line whose answer token's top-k lacks some options (first 20)."""
    out = []
    for line, p, opts in zip(lines, probs, options):
        gone = [x for x in opts if x not in p]
        if gone:
            out.append(f"{path}:{line}: top_logprobs: option(s) {gone} not among the answer "
                       "token's top-k; probability 0, not guessed")
    if len(out) > 20:
        out = out[:20] + [f"... and {len(out) - 20} more line(s) with options missing"]
    return out
