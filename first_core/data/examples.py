"""Multiple-choice examples: loaders, the prompt template and the data validator.

Every source (CommonsenseQA in its original or Hugging Face layout, BoolQ, a generic JSONL,
a Hugging Face data set by name) is turned into the same `Example`. All checks live in one
code path (`_parse_records`) that *collects* problems instead of stopping at the first:
`check_file` returns them all (for `check-data`), `load_examples` raises them as one
`DataError`. Line numbers are 1-based physical lines of the file; blank lines are skipped.
Each record reports its first problem (fixing it may reveal the next one in that record).
"""

from __future__ import annotations

import string
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ConfigError, DataError
from .hf_data import hf_rows, write_hf_splits  # noqa: F401 (the pipeline's data.write_hf_splits)
from .jsonl import read_jsonl

FORMATS = ("auto", "csqa", "boolq", "jsonl")
_MAX_LISTED = 20  # problems spelled out in the message of the error `load_examples` raises
# Train/test leakage: an evaluation split whose share of questions (with the same choices and
# context) also in train exceeds this is refused; any smaller share is reported as a warning.
LEAKAGE_LIMIT = 0.10


@dataclass(frozen=True)
class Example:
    """One multiple-choice question; `labels` and `choices` are parallel tuples."""

    id: str
    question: str
    labels: tuple[str, ...]
    choices: tuple[str, ...]
    answer: str
    context: str | None = None


@dataclass(frozen=True)
class PromptTemplate:
    """The one prompt layout shared by all tasks.

    `prompt` may use `{context}`, `{question}` and `{options}`; `{context}` is replaced by
    `context` filled in (or by nothing when the example has no context), `{options}` by one
    `option` line per choice joined with newlines. The prompt must end without whitespace:
    the target is the answer letter with a leading space (`answer_text`).
    """

    prompt: str = "{context}Question: {question}\n{options}\nAnswer:"
    option: str = "{label}. {text}"
    context: str = "Context: {context}\n"

    def __post_init__(self) -> None:
        check_fields("prompt", self.prompt, allowed={"context", "question", "options"},
                     required={"question", "options"})
        check_fields("option", self.option, allowed={"label", "text"},
                     required={"label", "text"})
        check_fields("context", self.context, allowed={"context"}, required={"context"})
        if self.prompt != self.prompt.rstrip():
            raise ConfigError("prompt template: must not end with whitespace (the target "
                              "answer already starts with a space)")


def check_fields(name: str, text: str, allowed: set[str], required: set[str]) -> None:
    """A prompt template's `{placeholders}`: none outside `allowed`, all of `required`, as a
    `ConfigError` at load (the instruction templates are checked the same way)."""
    try:
        fields = {f for _, f, _, _ in string.Formatter().parse(text) if f is not None}
    except ValueError as e:
        raise ConfigError(f"prompt template {name}: {e}") from None
    if fields - allowed:
        raise ConfigError(f"prompt template {name}: unknown placeholder(s) "
                          f"{sorted(fields - allowed)}; allowed: {sorted(allowed)}")
    if required - fields:
        raise ConfigError(f"prompt template {name}: missing placeholder(s) "
                          f"{sorted(required - fields)}")


DEFAULT_TEMPLATE = PromptTemplate()


def format_prompt(ex: Example, template: PromptTemplate = DEFAULT_TEMPLATE) -> str:
    """The prompt for `ex`, ending with the template's answer cue (no trailing space)."""
    options = "\n".join(template.option.format(label=lab, text=txt)
                        for lab, txt in zip(ex.labels, ex.choices))
    context = template.context.format(context=ex.context) if ex.context else ""
    return template.prompt.format(context=context, question=ex.question, options=options)


def answer_text(label: str) -> str:
    """The training target for `label`: the letter with a leading space (`" A"`)."""
    if not label or label != label.strip():
        raise ValueError(f"label: expected a non-empty label without spaces, got {label!r}")
    return " " + label


# --------------------------------------------------------------------------- reading

def _norm(text: str) -> str:
    """Collapse runs of whitespace (real CSQA has double spaces) and strip the ends."""
    return " ".join(text.split())


def _detect(record: dict[str, Any]) -> str:
    """Guess the layout of one record (`fmt="auto"` decides from the first valid record)."""
    if ("answerKey" in record or isinstance(record.get("question"), dict)
            or isinstance(record.get("choices"), dict)):
        return "csqa"
    if "passage" in record:
        return "boolq"
    return "jsonl"


class BadField(Exception):
    """A problem with one field of one record (turned into a DataError with the line)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


def _get(rec: dict[str, Any], key: str, kind: type | tuple[type, ...], field: str = "") -> Any:
    field = field or key
    if key not in rec:
        raise BadField(field, "missing")
    value = rec[key]
    if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
        names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise BadField(field, f"expected {names}, got {type(value).__name__}")
    return value


def _text(rec: dict[str, Any], key: str, field: str = "") -> str:
    value = _norm(_get(rec, key, str, field))
    if not value:
        raise BadField(field or key, "empty")
    return value


def _csqa(rec: dict[str, Any]) -> tuple[str, list[Any], list[Any], Any, str | None]:
    answer = _get(rec, "answerKey", str)
    question = rec.get("question")
    if isinstance(question, dict):  # original layout: question.stem, question.choices[]
        stem = _text(question, "stem", "question.stem")
        items = _get(question, "choices", list, "question.choices")
        for i, c in enumerate(items):
            if not isinstance(c, dict) or "label" not in c or "text" not in c:
                raise BadField(f"question.choices[{i}]", "expected an object with label and text")
        return stem, [c["label"] for c in items], [c["text"] for c in items], answer, None
    stem = _text(rec, "question")  # Hugging Face layout: choices.label[], choices.text[]
    choices = _get(rec, "choices", dict)
    labels = _get(choices, "label", list, "choices.label")
    texts = _get(choices, "text", list, "choices.text")
    if len(labels) != len(texts):
        raise BadField("choices", f"{len(labels)} labels but {len(texts)} texts")
    return stem, labels, texts, answer, None


def _boolq(rec: dict[str, Any]) -> tuple[str, list[Any], list[Any], Any, str | None]:
    answer = _get(rec, "answer", bool)
    return (_text(rec, "question"), ["A", "B"], ["yes", "no"], "A" if answer else "B",
            _text(rec, "passage"))


def _generic(rec: dict[str, Any]) -> tuple[str, list[Any], list[Any], Any, str | None]:
    texts = _get(rec, "choices", list)
    if len(texts) > len(string.ascii_uppercase):
        raise BadField("choices", f"at most 26 choices (labels A-Z), got {len(texts)}")
    labels = list(string.ascii_uppercase[:len(texts)])
    answer = _get(rec, "answer", (str, int))
    if isinstance(answer, int):
        if not 0 <= answer < len(texts):
            raise BadField("answer", f"index {answer} out of range for {len(texts)} choices")
        answer = labels[answer]
    context = _get(rec, "context", (str, type(None))) if "context" in rec else None
    return _text(rec, "question"), labels, texts, answer, _norm(context or "") or None


_PARSERS = {"csqa": _csqa, "boolq": _boolq, "jsonl": _generic}


def record_id(rec: dict[str, Any], line: int) -> str:
    """A record's `id` as text, or `line-<n>` when it has none (both loaders: MC, instruct)."""
    if "id" not in rec:
        return f"line-{line}"
    value = _get(rec, "id", (str, int))
    if isinstance(value, str) and not value.strip():
        raise BadField("id", "empty")
    return str(value).strip()


def _example(rec: Any, fmt: str, line: int) -> Example:
    """Build one Example, raising `BadField` for the first problem in the record."""
    if not isinstance(rec, dict):
        raise BadField("", f"expected a JSON object, got {type(rec).__name__}")
    question, labels, texts, answer, context = _PARSERS[fmt](rec)
    nested = fmt == "csqa" and isinstance(rec["question"], dict)
    field = "question.choices" if nested else "choices"
    for i, (lab, txt) in enumerate(zip(labels, texts)):
        if not isinstance(lab, str) or not lab.strip() or lab != lab.strip():
            raise BadField(f"{field}[{i}].label", f"expected a non-empty label without spaces, "
                                                  f"got {lab!r}")
        if not isinstance(txt, str) or not _norm(txt):
            raise BadField(f"{field}[{i}].text", f"expected non-empty text, got {txt!r}")
    if len(labels) < 2:
        raise BadField(field, f"needs at least 2 choices, got {len(labels)}")
    dup = sorted(lab for lab, n in Counter(labels).items() if n > 1)
    if dup:
        raise BadField(field, f"duplicate label(s) {dup}")
    answer_field = {"csqa": "answerKey", "boolq": "answer", "jsonl": "answer"}[fmt]
    if answer not in labels:
        raise BadField(answer_field, f"{answer!r} is not among the choice labels {labels}")
    return Example(id=record_id(rec, line), question=question, labels=tuple(labels),
                   choices=tuple(_norm(t) for t in texts), answer=answer, context=context)


def _parse_records(records: Iterable[tuple[int, Any]], source: str | Path,
                   fmt: str) -> tuple[list[Example], list[DataError]]:
    """The one implementation of every check: examples plus all problems found."""
    if fmt not in FORMATS:
        raise ConfigError(f"format: {fmt!r} is not one of {list(FORMATS)}")

    def make(rec: Any, line: int) -> Example:
        nonlocal fmt
        if fmt == "auto" and isinstance(rec, dict):
            fmt = _detect(rec)  # the first valid record decides
        return _example(rec, "jsonl" if fmt == "auto" else fmt, line)

    return collect_examples(records, source, make)


def collect_examples(records: Iterable[tuple[int, Any]], source: str | Path,
                     make: Callable[[Any, int], Any]) -> tuple[list[Any], list[DataError]]:
    """`make(record, line)` for every (line, record), gathering every problem instead of
    stopping at the first: a record that is already a DataError (unreadable line), a field
    `make` rejects (`BadField`), a repeated `id`, and a file without any example. Shared by the
    multiple-choice and the instruction loaders (`instruct_data`)."""
    examples: list[Any] = []
    errors: list[DataError] = []
    seen: dict[str, int] = {}
    for line, rec in records:
        if isinstance(rec, DataError):
            errors.append(rec)
            continue
        try:
            ex = make(rec, line)
        except BadField as bad:
            errors.append(DataError(str(bad), source, line, bad.field or None))
            continue
        if ex.id in seen:
            errors.append(DataError(f"duplicate id {ex.id!r} (first on line {seen[ex.id]})",
                                    source, line, "id"))
            continue
        seen[ex.id] = line
        examples.append(ex)
    if not examples and not errors:
        errors.append(DataError("no examples (the file is empty)", source))
    return examples, errors


def _load(path: str | Path, fmt: str) -> tuple[list[Example], list[DataError]]:
    path = Path(path)
    try:
        if not path.is_file():
            return [], [DataError("no such file" if not path.exists() else "not a file", path)]
        records = list(read_jsonl(path))
    except OSError as exc:  # unreadable (permissions), a name too long, an I/O error
        return [], [DataError(f"cannot read it: {exc.strerror or exc}", path)]
    examples, errors = _parse_records(records, path, fmt)
    first = records[0][1] if records else None
    array_like = isinstance(first, list) or (isinstance(first, DataError)
                                             and "malformed JSON" in str(first))
    if errors and array_like and _looks_like_json_array(path):
        return [], [DataError("this looks like one JSON array, not JSON Lines: write one "
                              "object per line (e.g. `jq -c '.[]' FILE`)", path, 1)]
    return examples, errors


def _looks_like_json_array(path: Path) -> bool:
    """True when the first non-blank character of the file is `[`."""
    with path.open("rb") as f:
        head = f.read(4096).lstrip(b"\xef\xbb\xbf \t\r\n")
    return head.startswith(b"[")


def raise_all(errors: list[DataError], source: str | Path) -> None:
    """Raise the problems a loader collected as one `DataError` (the first `_MAX_LISTED`
    spelled out), located at the first problem."""
    if len(errors) == 1:
        raise errors[0]
    listed = "\n  ".join(str(e) for e in errors[:_MAX_LISTED])
    more = f"\n  ... and {len(errors) - _MAX_LISTED} more" if len(errors) > _MAX_LISTED else ""
    err = DataError(f"{len(errors)} problems (run check-data for the full list):\n  "
                    f"{listed}{more}", source)
    err.line, err.field = errors[0].line, errors[0].field  # where the first problem is
    raise err


# --------------------------------------------------------------------------- public API

def check_file(path: str | Path, fmt: str = "auto") -> list[DataError]:
    """Every problem in the data file at `path` (empty list when it is clean)."""
    return _load(path, fmt)[1]


def load_examples(path: str | Path, fmt: str = "auto") -> list[Example]:
    """Load a JSONL data file; raise one DataError listing every problem if any.

    `fmt`: "csqa" (original or Hugging Face layout), "boolq", "jsonl" (generic: `question`,
    `choices` list of strings, `answer` label letter or 0-based index, optional `id`,
    `context`), or "auto" (decided from the first valid record). Unknown fields are ignored.
    """
    examples, errors = _load(path, fmt)
    if errors:
        raise_all(errors, path)
    return examples


def load_hf_dataset(name: str, split: str, subset: str | None = None,
                    fmt: str = "auto") -> list[Example]:
    """Load a Hugging Face data set by name (needs `datasets` and internet), same checks.

    Rows go through the same parser as files; "line" numbers in errors are 1-based row
    numbers of the split.
    """
    rows, source = hf_rows(name, split, subset)
    examples, errors = _parse_records(enumerate(rows, start=1), source, fmt)
    if errors:
        raise_all(errors, source)
    return examples


def split_overlap(splits: dict[str, list[Example]], reference: str = "train"
                  ) -> dict[str, int]:
    """How many examples of each other split repeat a `reference` question: same question,
    choices and context (the answer does not matter: the model saw the prompt)."""
    def key(ex: Example) -> tuple:
        return ex.context, ex.question, ex.choices
    seen = {key(ex) for ex in splits[reference]}
    return {name: sum(key(ex) in seen for ex in exs)
            for name, exs in splits.items() if name != reference}


def check_leakage(splits: dict[str, list[Example]], files: dict[str, str | Path],
                  limit: float = LEAKAGE_LIMIT) -> str | None:
    """A warning line when evaluation splits repeat training questions, None when none do;
    `DataError` when a split's share exceeds `limit` (its scores would measure memory)."""
    overlap = split_overlap(splits)
    parts = [f"{n} of {len(splits[s])} {s} examples ({n / len(splits[s]):.1%})"
             for s, n in overlap.items() if n]
    if not parts:
        return None
    text = (f"train/test leakage: {', '.join(parts)} repeat a question of "
            f"{files['train']} with the same choices")
    worst = max(overlap, key=lambda s: overlap[s] / len(splits[s]))
    if overlap[worst] / len(splits[worst]) > limit:
        raise DataError(f"{text}; more than {limit:.0%} of a split is refused (remove the "
                        "copies from the evaluation files)", files[worst])
    return text


def summarize(examples: list[Example]) -> str:
    """One line for `check-data`: size, choices per question and gold-label balance."""
    if not examples:
        return "0 examples"
    sizes = Counter(len(ex.labels) for ex in examples)
    per_q = (str(next(iter(sizes))) if len(sizes) == 1
             else f"{min(sizes)}-{max(sizes)} (mean "
                  f"{sum(k * n for k, n in sizes.items()) / len(examples):.1f})")
    gold = Counter(ex.answer for ex in examples)
    balance = ", ".join(f"{lab} {gold[lab]} ({gold[lab] / len(examples):.0%})"
                        for lab in sorted(gold))
    with_ctx = sum(ex.context is not None for ex in examples)
    ctx = f"; {with_ctx} with context" if with_ctx else ""
    return (f"{len(examples)} examples; {per_q} choices per question; "
            f"gold labels: {balance}{ctx}")
