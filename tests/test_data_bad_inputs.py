"""`check-data` and the loaders on hostile files (issue 23): every case is a `FILE:LINE:`
problem (exit 1 from `check-data`, a `DataError` from the loader the run uses), never a
traceback and never a file that passes and breaks a later stage."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from first_core.__main__ import main
from first_core.data.examples import load_examples
from first_core.errors import DataError, FirstError
from first_core.data.instruct_data import load_instruct

ALPACA = {"instruction": "Say hi.", "input": "", "output": "hi"}
MC = {"question": "Which?", "choices": ["x", "y"], "answer": "A"}


def check_data(capsys, path: Path, fmt: str) -> tuple[int, str]:
    """`python -m first_core check-data PATH --format FMT` in this process."""
    code = main(["check-data", str(path), "--format", fmt])
    out = capsys.readouterr()
    return code, out.out + out.err


def array_file(path: Path, *elements: str, after: str = "") -> Path:
    """A JSON array written one element per line: element i starts on line i + 2."""
    path.write_text("[\n" + ",\n".join(elements) + "\n]" + after + "\n")
    return path


# ------------------------------------------------------------ item 4: JSON arrays

@pytest.mark.parametrize("element, words", [
    ('{"instruction": "Say \\ud800.", "output": "hi"}', "instruction: a lone UTF-16 surrogate"),
    ('{"instruction": "Say hi.", "output": ' + "[" * 100_000 + "]" * 100_000 + "}",
     "JSON nested too deeply"),
], ids=["lone surrogate", "nested 100k deep"])
def test_json_array_element_that_no_stage_can_use_is_named(tmp_path, capsys, element, words):
    f = array_file(tmp_path / "a.json", json.dumps(ALPACA), element)
    code, text = check_data(capsys, f, "alpaca")
    assert code == 1 and f"{f}:3: {words}" in text and "Traceback" not in text, text[-800:]
    with pytest.raises(DataError, match=f"{f}:3: "):  # what the run's data stage calls
        load_instruct(f, "alpaca")


def test_text_after_the_closing_bracket_is_refused(tmp_path, capsys):
    f = array_file(tmp_path / "a.json", json.dumps(ALPACA), after='\n{"instruction": "x"}')
    code, text = check_data(capsys, f, "alpaca")
    assert code == 1 and f"{f}:4: " in text and "after the closing ']'" in text


# ------------------------------------------------------------ item 5: huge integers

@pytest.mark.parametrize("fmt, record", [("jsonl", MC), ("alpaca", ALPACA)])
def test_an_id_with_5000_digits_is_a_problem_not_a_traceback(tmp_path, capsys, fmt, record):
    f = tmp_path / "d.jsonl"
    good = json.dumps(record)
    f.write_text(good + "\n" + good[:-1] + ', "id": ' + "9" * 5000 + "}\n")
    code, text = check_data(capsys, f, fmt)
    assert code == 1 and f"{f}:2: " in text and "4300 digits" in text, text[-800:]


def test_an_id_with_5000_digits_in_a_json_array(tmp_path, capsys):
    f = array_file(tmp_path / "a.json", json.dumps(ALPACA),
                   json.dumps(ALPACA)[:-1] + ', "id": ' + "9" * 5000 + "}")
    code, text = check_data(capsys, f, "alpaca")
    assert code == 1 and f"{f}:3: " in text and "4300 digits" in text, text[-800:]


# ------------------------------------------------------------ item 10: messages

def test_alpaca_record_without_instruction_says_instruction(tmp_path):
    """`[instruct] fmt = "auto"` (the default) decides per record; an Alpaca record that lost
    its `instruction` used to be read as prompt/response and reported as "prompt: missing"."""
    from first_core.data.instruct_data import (
                                               check_instruct_file,  # what the data stage calls
                                               )

    f = tmp_path / "a.jsonl"
    f.write_text(json.dumps(ALPACA) + "\n" + json.dumps({"input": "", "output": "hi"}) + "\n"
                 + json.dumps({"reply": "hi"}) + "\n")
    problems = [str(p) for p in check_instruct_file(f, "auto")]
    assert problems[0].startswith(f"{f}:2: instruction: missing (an Alpaca record"), problems
    assert problems[1].startswith(f"{f}:3: neither an Alpaca record"), problems
    assert not [p for p in problems if "prompt: missing" in p]


def test_hf_dataset_folder_of_unrelated_json_says_what_was_expected(tmp_path, monkeypatch):
    datasets = pytest.importorskip(
        "datasets", reason="the `datasets` package is not installed (requirements-dev.txt)")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "cache")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    folder = tmp_path / "stuff"
    folder.mkdir()
    (folder / "config.json").write_text('{"a": 1}\n')
    (folder / "meta.json").write_text('{"b": {"c": [1]}}\n')
    (folder / "other.json").write_text("[1, 2, 3]\n")
    from first_core.data.examples import load_hf_dataset
    with pytest.raises(FirstError) as err:
        load_hf_dataset(str(folder), "train")
    text = str(err.value)
    assert str(folder) in text and "\n" not in text
    assert "save_to_disk" in text and "train.jsonl" in text  # what datasets expected
    assert "column names don't match" in text                # the underlying cause


def test_mc_jsonl_lone_surrogate_still_named(tmp_path):
    f = tmp_path / "d.jsonl"
    f.write_text(json.dumps(MC) + "\n" + json.dumps(MC)[:-1] + ', "id": "\\udc00"}\n')
    with pytest.raises(DataError, match=f"{f}:2: id: a lone UTF-16 surrogate"):
        load_examples(f)
