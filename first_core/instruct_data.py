"""Instruction data (the paper's setting): loaders, the Alpaca prompt template, the validator.

Two file layouts become the same `InstructExample(id, prompt, response)`:

- **Alpaca** (`fmt="alpaca"`): a JSON array (Stanford Alpaca's `alpaca_data.json`) or JSONL,
  records with `instruction`, optional `input`, `output`. The prompt is the Alpaca template
  filled in (`InstructTemplate`; the default is Stanford Alpaca's, word for word, and it is
  configurable), the response is `output`.
- **prompt/response JSONL** (`fmt="prompt_response"`): records with `prompt` and `response`,
  used as they are.

`fmt="auto"` decides per record (`instruction` -> Alpaca, else prompt/response). All checks
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

from . import data
from .errors import ConfigError, DataError

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
        data._check_fields("with_input", self.with_input, allowed={"instruction", "input"},
                           required={"instruction", "input"})
        data._check_fields("no_input", self.no_input, allowed={"instruction"},
                           required={"instruction"})

    def format(self, instruction: str, input: str = "") -> str:
        if input.strip():
            return self.with_input.format(instruction=instruction, input=input)
        return self.no_input.format(instruction=instruction)


DEFAULT_INSTRUCT_TEMPLATE = InstructTemplate()


def _read_json_array(path: Path, text: str) -> Iterator[tuple[int, Any]]:
    """Yield (line of the element's first character, element) for a top-level JSON array."""
    decoder = json.JSONDecoder()
    pos = text.index("[") + 1
    n = len(text)

    def skip(p: int) -> int:
        while p < n and text[p] in " \t\r\n":
            p += 1
        return p

    pos = skip(pos)
    if pos < n and text[pos] == "]":
        return
    while pos < n:
        line = text.count("\n", 0, pos) + 1
        try:
            rec, pos = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as e:
            yield e.lineno, DataError(f"malformed JSON ({e.msg} at column {e.colno})", path,
                                      e.lineno)
            return
        yield line, rec
        pos = skip(pos)
        if pos < n and text[pos] == ",":
            pos = skip(pos + 1)
        elif pos < n and text[pos] == "]":
            return
        else:
            line = text.count("\n", 0, pos) + 1
            yield line, DataError("malformed JSON (expected ',' or ']' after an element)",
                                  path, line)
            return
    yield text.count("\n") + 1, DataError("malformed JSON (the array is not closed)", path,
                                          text.count("\n") + 1)


def _records(path: Path) -> Iterator[tuple[int, Any]]:
    """A JSON array file (first non-blank character `[`) or JSONL."""
    raw = path.read_bytes()
    head = raw.lstrip(b"\xef\xbb\xbf \t\r\n")[:1]
    if head != b"[":
        yield from data._read_jsonl(path)
        return
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        yield line, DataError(f"not valid UTF-8 (byte 0x{raw[e.start]:02x})", path, line)
        return
    yield from _read_json_array(path, text)


def _string(rec: dict[str, Any], key: str, required: bool = True) -> str:
    if key not in rec:
        if required:
            raise data._Bad(key, "missing")
        return ""
    value = rec[key]
    if value is None and not required:
        return ""
    if not isinstance(value, str):
        raise data._Bad(key, f"expected str, got {type(value).__name__}")
    if required and not value.strip():
        raise data._Bad(key, "empty")
    return value


def _example(rec: Any, fmt: str, line: int, template: InstructTemplate) -> InstructExample:
    if not isinstance(rec, dict):
        raise data._Bad("", f"expected a JSON object, got {type(rec).__name__}")
    if fmt == "auto":
        fmt = "alpaca" if "instruction" in rec else "prompt_response"
    if fmt == "alpaca":
        prompt = template.format(_string(rec, "instruction"), _string(rec, "input", False))
        response = _string(rec, "output")
    else:
        prompt, response = _string(rec, "prompt"), _string(rec, "response")
    return InstructExample(id=data._record_id(rec, line), prompt=prompt, response=response)


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
        data._raise_all(errors, path)
    return examples


def summarize_instruct(examples: list[InstructExample]) -> str:
    """One line for `check-data`: size and response length in words."""
    if not examples:
        return "0 examples"
    words = sorted(len(ex.response.split()) for ex in examples)
    return (f"{len(examples)} instruction examples; response length {words[0]}-{words[-1]} "
            f"words (median {words[len(words) // 2]})")
