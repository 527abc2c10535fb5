"""Instruction data (the paper's setting): loaders, the Alpaca prompt template, the validator.

Two file layouts become the same `InstructExample(id, prompt, response)`:

- **Alpaca** (`fmt="alpaca"`): a JSON array (Stanford Alpaca's `alpaca_data.json`) or JSONL,
  records with `instruction`, optional `input`, `output`. The prompt is the Alpaca template
  filled in (`InstructTemplate`; the default is Stanford Alpaca's, word for word, and it is
  configurable), the response is `output`.
- **prompt/response JSONL** (`fmt="prompt_response"`): records with `prompt` and `response`,
  used as they are.

`fmt="auto"` decides per record: any of `instruction` / `input` / `output` -> Alpaca, else
any of `prompt` / `response` -> prompt/response, else the record is refused; a missing field
then says which layout the record was read as. All checks
live in one code path (`_parse`), which collects every problem as `FILE:LINE: field: what`;
`check_instruct_file` returns them (for `check-data`), `load_instruct` raises them as one
`DataError`. Line numbers are 1-based physical lines, in a JSON array the line where the
record's `{` is.

Whitespace is kept as written (code and lists in Alpaca responses depend on it); only an
empty or whitespace-only `instruction` / `output` / `prompt` / `response` is an error.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import examples as data, jsonl
from ..errors import ConfigError, DataError

INSTRUCT_FORMATS = ("auto", "alpaca", "prompt_response")

# Stanford Alpaca's templates (tatsu-lab/stanford_alpaca, train.py PROMPT_DICT); the response
# follows "### Response:" directly and is tokenised on its own.
ALPACA_INPUT = ("Below is an instruction that describes a task, paired with an input that "
                "provides further context. Write a response that appropriately completes the "
                "request.\n\n### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n"
                "### Response:")
ALPACA_NO_INPUT = ("Below is an instruction that describes a task. Write a response that "
                   "appropriately completes the request.\n\n### Instruction:\n{instruction}\n\n"
                   "### Response:")


@dataclass(frozen=True)
class InstructExample:
    """One instruction/response pair; `prompt` is already laid out by the template."""

    id: str
    prompt: str
    response: str


@dataclass(frozen=True)
class InstructTemplate:
    """How an Alpaca record becomes a prompt: `with_input` when `input` is non-empty, else
    `no_input`. Placeholders: `{instruction}` (both) and `{input}` (`with_input` only)."""

    with_input: str = ALPACA_INPUT
    no_input: str = ALPACA_NO_INPUT

    def __post_init__(self) -> None:
        data.check_fields("with_input", self.with_input, allowed={"instruction", "input"},
                          required={"instruction", "input"})
        data.check_fields("no_input", self.no_input, allowed={"instruction"},
                          required={"instruction"})

    def format(self, instruction: str, input: str = "") -> str:
        if input.strip():
            return self.with_input.format(instruction=instruction, input=input)
        return self.no_input.format(instruction=instruction)


DEFAULT_INSTRUCT_TEMPLATE = InstructTemplate()


def _read_json_array(path: Path, text: str) -> Iterator[tuple[int, Any]]:
    """Yield (line of the element's first character, element) for a top-level JSON array;
    a problem ends it with a DataError (anything after the closing `]` is one too)."""
    decoder = json.JSONDecoder()
    pos = text.index("[") + 1
    n = len(text)
    counted = [0, 1]  # (position, its line): lines are counted once, front to back

    def line_at(p: int) -> int:
        counted[1] += text.count("\n", counted[0], p)
        counted[0] = p
        return counted[1]

    def skip(p: int) -> int:
        while p < n and text[p] in " \t\r\n":
            p += 1
        return p

    pos = skip(pos)
    if pos < n and text[pos] == "]":
        return
    while pos < n:
        line, start = line_at(pos), pos
        try:
            rec, pos = decoder.raw_decode(text, pos)
        except jsonl.JSON_ERRORS as e:  # malformed, nested too deeply, a 5,000-digit integer
            yield line, jsonl.json_error(e, path, getattr(e, "lineno", line))
            return
        yield line, jsonl.surrogate_error(rec, text[start:pos], path, line) or rec
        pos = skip(pos)
        if pos < n and text[pos] == ",":
            pos = skip(pos + 1)
        elif pos < n and text[pos] == "]":
            rest = skip(pos + 1)
            if rest < n:
                yield line_at(rest), DataError("text after the closing ']' of the array (a "
                                               "file holds one array)", path, line_at(rest))
            return
        else:
            yield line_at(pos), DataError("malformed JSON (expected ',' or ']' after an "
                                          "element)", path, line_at(pos))
            return
    yield line_at(n), DataError("malformed JSON (the array is not closed)", path, line_at(n))


def _records(path: Path) -> Iterator[tuple[int, Any]]:
    """A JSON array file (first non-blank character `[`) or JSONL."""
    raw = path.read_bytes()
    head = raw.lstrip(b"\xef\xbb\xbf \t\r\n")[:1]
    if head != b"[":
        yield from jsonl.read_jsonl(path)
        return
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        yield line, DataError(f"not valid UTF-8 (byte 0x{raw[e.start]:02x})", path, line)
        return
    yield from _read_json_array(path, text)


ALPACA_KEYS, PROMPT_KEYS = ("instruction", "input", "output"), ("prompt", "response")
_EXPECTED = {"alpaca": "an Alpaca record, by its keys, needs instruction and output",
             "prompt_response": "a prompt/response record, by its keys, needs prompt and "
                                "response"}


def _layout(rec: dict[str, Any]) -> str:
    """`fmt="auto"`, per record: the layout its keys belong to (Alpaca wins a tie)."""
    if any(k in rec for k in ALPACA_KEYS):
        return "alpaca"
    if any(k in rec for k in PROMPT_KEYS):
        return "prompt_response"
    raise data.BadField("", f"neither an Alpaca record ({', '.join(ALPACA_KEYS)}) nor a "
                             f"prompt/response record ({', '.join(PROMPT_KEYS)}); keys: "
                             f"{sorted(map(str, rec))[:10]}")


def _string(rec: dict[str, Any], key: str, required: bool = True, why: str = "") -> str:
    if key not in rec:
        if required:
            raise data.BadField(key, f"missing ({why})" if why else "missing")
        return ""
    value = rec[key]
    if value is None and not required:
        return ""
    if not isinstance(value, str):
        raise data.BadField(key, f"expected str, got {type(value).__name__}")
    if required and not value.strip():
        raise data.BadField(key, "empty")
    return value


def _example(rec: Any, fmt: str, line: int, template: InstructTemplate) -> InstructExample:
    if not isinstance(rec, dict):
        raise data.BadField("", f"expected a JSON object, got {type(rec).__name__}")
    why = ""
    if fmt == "auto":  # say which layout the record was read as, since no one chose it
        fmt = _layout(rec)
        why = _EXPECTED[fmt]
    if fmt == "alpaca":
        prompt = template.format(_string(rec, "instruction", why=why),
                                 _string(rec, "input", False))
        response = _string(rec, "output", why=why)
    else:
        prompt, response = _string(rec, "prompt", why=why), _string(rec, "response", why=why)
    return InstructExample(id=data.record_id(rec, line), prompt=prompt, response=response)


def _parse(path: Path, fmt: str, template: InstructTemplate
           ) -> tuple[list[InstructExample], list[DataError]]:
    if fmt not in INSTRUCT_FORMATS:
        raise ConfigError(f"instruct format: {fmt!r} is not one of {list(INSTRUCT_FORMATS)}")
    if not path.is_file():
        return [], [DataError("no such file" if not path.exists() else "not a file", path)]
    return data.collect_examples(_records(path), path,
                                 lambda rec, line: _example(rec, fmt, line, template))


def check_instruct_file(path: str | Path, fmt: str = "auto",
                        template: InstructTemplate = DEFAULT_INSTRUCT_TEMPLATE
                        ) -> list[DataError]:
    """Every problem in the instruction file at `path` (empty list when it is clean)."""
    return _parse(Path(path), fmt, template)[1]


def load_instruct(path: str | Path, fmt: str = "auto",
                  template: InstructTemplate = DEFAULT_INSTRUCT_TEMPLATE
                  ) -> list[InstructExample]:
    """Load an Alpaca (JSON array or JSONL) or prompt/response JSONL file; one DataError
    listing every problem if any."""
    examples, errors = _parse(Path(path), fmt, template)
    if errors:
        data.raise_all(errors, path)
    return examples


def summarize_instruct(examples: list[InstructExample]) -> str:
    """One line for `check-data`: size and response length in words."""
    if not examples:
        return "0 examples"
    words = sorted(len(ex.response.split()) for ex in examples)
    return (f"{len(examples)} instruction examples; response length {words[0]}-{words[-1]} "
            f"words (median {words[len(words) // 2]})")
