"""Instruction data: Alpaca (JSON array / JSONL) and prompt/response loaders, check-data, the
embedded instruction task."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from first_core.errors import ConfigError, DataError
from first_core.data.instruct_data import (ALPACA_INPUT, ALPACA_NO_INPUT, InstructTemplate,
                                           check_instruct_file, load_instruct)
from first_core.data.instruct_tasks import FORMS, INSTRUCTIONS, write_instruct_task
from first_core.data.tasks import LETTERS

ROOT = Path(__file__).resolve().parents[1]


def test_alpaca_json_array_and_jsonl_give_the_same_examples(tmp_path: Path) -> None:
    recs = [{"instruction": "Add the numbers.", "input": "2 and 3", "output": "5"},
            {"instruction": "Say hi.", "input": "", "output": "hi\n  there"},
            {"instruction": "Name a colour.", "output": "red", "id": 7}]
    arr, lines = tmp_path / "a.json", tmp_path / "a.jsonl"
    arr.write_text(json.dumps(recs, indent=4))
    lines.write_text("\n".join(json.dumps(r) for r in recs) + "\n")
    a, b = load_instruct(arr, "alpaca"), load_instruct(lines)
    assert [(e.prompt, e.response) for e in a] == [(e.prompt, e.response) for e in b]
    assert a[0].prompt == ALPACA_INPUT.format(instruction="Add the numbers.", input="2 and 3")
    assert a[1].prompt == ALPACA_NO_INPUT.format(instruction="Say hi.")
    assert a[1].response == "hi\n  there"  # whitespace in responses is kept
    # ids default to the record's line: in the array, the line of its "{"
    assert [e.id for e in a] == ["line-2", "line-7", "7"]
    assert [e.id for e in b] == ["line-1", "line-2", "7"]


def test_prompt_response_jsonl_and_a_custom_template(tmp_path: Path) -> None:
    f = tmp_path / "pr.jsonl"
    f.write_text('{"prompt": "Q: 1+1?", "response": " 2", "id": "x"}\n\n'
                 '{"prompt": "Q: 2+2?", "response": "4"}\n')
    ex = load_instruct(f, "prompt_response")
    assert [(e.id, e.prompt, e.response) for e in ex] == [("x", "Q: 1+1?", " 2"),
                                                        ("line-3", "Q: 2+2?", "4")]
    tpl = InstructTemplate(with_input="I: {instruction} X: {input} R:",
                           no_input="I: {instruction} R:")
    g = tmp_path / "al.jsonl"
    g.write_text('{"instruction": "go", "input": "now", "output": "ok"}\n')
    assert load_instruct(g, template=tpl)[0].prompt == "I: go X: now R:"
    with pytest.raises(ConfigError, match="missing placeholder"):
        InstructTemplate(with_input="{instruction} only")
    with pytest.raises(ConfigError, match="unknown placeholder"):
        InstructTemplate(no_input="{instruction} {output}")


def test_every_problem_is_reported_with_file_line_and_field(tmp_path: Path) -> None:
    f = tmp_path / "bad.jsonl"
    f.write_text("\n".join([
        '{"instruction": "a", "output": "b"}',
        '{"instruction": "a"}',                       # 2: output missing
        '{"instruction": 3, "output": "b"}',          # 3: wrong type
        '{"instruction": "  ", "output": "b"}',       # 4: empty
        '{not json',                                  # 5
        '{"prompt": "p"}',                            # 6: response missing (auto -> p/r)
        '{"instruction": "a", "output": "b", "id": "line-1"}',  # 7: duplicate id
        '[1]',                                        # 8: not an object
    ]) + "\n")
    msgs = [str(e) for e in check_instruct_file(f)]
    assert msgs == [f"{f}:2: output: missing (an Alpaca record, by its keys, needs instruction "
                    "and output)", f"{f}:3: instruction: expected str, got int",
                    f"{f}:4: instruction: empty",
                    f"{f}:5: malformed JSON (Expecting property name enclosed in double quotes "
                    f"at column 2)",
                    f"{f}:6: response: missing (a prompt/response record, by its keys, needs "
                    "prompt and response)",
                    f"{f}:7: id: duplicate id 'line-1' (first on line 1)",
                    f"{f}:8: expected a JSON object, got list"]
    with pytest.raises(DataError, match="7 problems"):
        load_instruct(f)


def test_json_array_errors_name_the_line(tmp_path: Path) -> None:
    f = tmp_path / "a.json"
    f.write_text('[\n  {"instruction": "a", "output": "b"},\n  {"instruction": "a"},\n'
                 '  {"instruction": "a", "output": "b"} {"x": 1}\n]\n')
    msgs = [str(e) for e in check_instruct_file(f, "alpaca")]
    assert msgs == [f"{f}:3: output: missing",
                    f"{f}:4: malformed JSON (expected ',' or ']' after an element)"]
    g = tmp_path / "b.json"
    g.write_text('[{"instruction": "a", "output": "b"},\n {"instruction": "a", "output": ')
    assert [e.line for e in check_instruct_file(g)] == [2]
    none = tmp_path / "none.json"
    assert str(check_instruct_file(none)[0]) == f"{none}: no such file"


def test_check_data_cli_covers_instruction_files(tmp_path: Path) -> None:
    good, bad = tmp_path / "good.json", tmp_path / "bad.jsonl"
    good.write_text(json.dumps([{"instruction": "a b", "output": "c d e"}]))
    bad.write_text('{"instruction": "a", "output": 5}\n')
    run = lambda p: subprocess.run([sys.executable, "-m", "first_core", "check-data", str(p),
                                    "--format", "alpaca"], capture_output=True, text=True,
                                   cwd=ROOT, timeout=120)
    ok, ko = run(good), run(bad)
    assert ok.returncode == 0 and "1 instruction examples" in ok.stdout
    assert ko.returncode == 1 and f"{bad}:1: output: expected str, got int" in ko.stdout


def _read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_embedded_task_is_deterministic_multi_token_and_noisy(tmp_path: Path) -> None:
    a = write_instruct_task(tmp_path / "a", seed=3, n_train=600, n_val=50, n_test=50)
    b = write_instruct_task(tmp_path / "b", seed=3, n_train=600, n_val=50, n_test=50)
    c = write_instruct_task(tmp_path / "c", seed=4, n_train=600, n_val=50, n_test=50)
    assert all(a[s].read_bytes() == b[s].read_bytes() for s in a)
    assert a["train"].read_bytes() != c["train"].read_bytes()
    recs = _read(a["train"])
    assert len(load_instruct(a["train"], "alpaca")) == 600
    by_form = {f: [r for r in recs if r["instruction"] in INSTRUCTIONS[f]] for f in FORMS}
    assert all(len(v) > 100 for v in by_form.values())
    assert min(len(r["output"].split()) for r in recs) >= 3  # multi-token responses
    # sort: the response is a permutation of the readings, ordered by the *true* values, so
    # with noise some responses are not in reading order (the same noise as the MC task)
    sorts = by_form["sort"]
    nums = [[int(x) for x in r["input"].split(" , ")] for r in sorts]
    outs = [[int(x) for x in r["output"].split()] for r in sorts]
    assert all(sorted(n) == sorted(o) for n, o in zip(nums, outs))
    unsorted = np.mean([o != sorted(o) for o in outs])
    assert 0.05 < unsorted < 0.8
    # largest: the named letter is often, not always, the largest reading
    largest = by_form["largest"]
    hits = []
    for r in largest:
        pairs = [p.split() for p in r["input"].split(" , ")]
        letter, value = r["output"].split()[:2]
        assert [letter, value] in pairs and letter in LETTERS
        hits.append(int(value) == max(int(v) for _, v in pairs))
    assert 0.6 < np.mean(hits) < 0.99
