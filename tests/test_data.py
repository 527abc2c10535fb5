"""Loaders, prompt template and validator of first_core.data.examples."""

from __future__ import annotations

import json
import string
import sys
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from first_core.data.examples import (DEFAULT_TEMPLATE, Example, PromptTemplate, answer_text,
                                      check_file, format_prompt, load_examples, load_hf_dataset,
                                      summarize)
from first_core.errors import ConfigError, DataError, FirstError

CSQA_SAMPLE = Path(__file__).resolve().parents[1].parent / "shared/data/commonsenseqa_50.jsonl"


def write_lines(path: Path, lines: list[str | dict | bytes]) -> Path:
    """Write JSONL: dicts are dumped, strings written as-is, bytes written raw."""
    raw = b"\n".join(l if isinstance(l, bytes) else
                     (json.dumps(l) if isinstance(l, dict) else l).encode() for l in lines)
    path.write_bytes(raw + b"\n")
    return path


def csqa(id_: str, answer: str = "A", labels: str = "ABC", stem: str = "q?") -> dict:
    return {"answerKey": answer, "id": id_, "question": {
        "stem": stem, "choices": [{"label": l, "text": f"t{l}"} for l in labels]}}


# ----------------------------------------------------------------- real sample

@pytest.mark.skipif(not CSQA_SAMPLE.is_file(), reason=f"real CSQA sample not found at "
                                                      f"{CSQA_SAMPLE} (../shared absent)")
def test_real_commonsenseqa_sample():
    raw = [json.loads(l) for l in CSQA_SAMPLE.read_text().splitlines() if l.strip()]
    examples = load_examples(CSQA_SAMPLE)
    assert check_file(CSQA_SAMPLE) == []
    assert load_examples(CSQA_SAMPLE, "csqa") == examples
    assert len(examples) == len(raw)
    for ex, rec in zip(examples, raw):
        assert ex.id == rec["id"] and ex.answer == rec["answerKey"]
        assert ex.labels == tuple(c["label"] for c in rec["question"]["choices"])
        assert ex.choices == tuple(" ".join(c["text"].split())
                                   for c in rec["question"]["choices"])
        assert ex.question == " ".join(rec["question"]["stem"].split())
        assert "  " not in ex.question and ex.context is None
    assert format_prompt(examples[0]).endswith("\nAnswer:")


# ----------------------------------------------------------------- layouts

def test_csqa_original_and_hf_layouts_agree(tmp_path):
    orig = {"answerKey": "B", "id": "x1", "question": {
        "question_concept": "c", "stem": "Where  is\tit?",
        "choices": [{"label": "A", "text": "here "}, {"label": "B", "text": "  over   there"}]}}
    hf = {"id": "x1", "question": "Where  is\tit?", "question_concept": "c",
          "choices": {"label": ["A", "B"], "text": ["here ", "  over   there"]},
          "answerKey": "B"}
    expected = [Example("x1", "Where is it?", ("A", "B"), ("here", "over there"), "B")]
    for name, rec in (("orig", orig), ("hf", hf)):
        path = write_lines(tmp_path / f"{name}.jsonl", [rec])
        assert load_examples(path) == expected
        assert load_examples(path, "csqa") == expected


def test_boolq(tmp_path):
    path = write_lines(tmp_path / "b.jsonl", [
        {"question": "is it", "passage": "a  long text", "answer": True, "title": "t"},
        {"question": "is it not", "passage": "p", "answer": False}])
    exs = load_examples(path)
    assert exs == load_examples(path, "boolq")
    assert [e.answer for e in exs] == ["A", "B"]
    assert exs[0].choices == ("yes", "no") and exs[0].labels == ("A", "B")
    assert exs[0].context == "a long text" and exs[0].id == "line-1" and exs[1].id == "line-2"


def test_generic_jsonl_letter_index_and_context(tmp_path):
    path = write_lines(tmp_path / "g.jsonl", [
        {"question": "q1", "choices": ["a", "b", "c"], "answer": "C", "id": 7},
        {"question": "q2", "choices": ["a", "b"], "answer": 0, "context": "ctx"},
        {"question": "q3", "choices": ["a", "b"], "answer": 1, "context": None, "extra": 1}])
    exs = load_examples(path)
    assert exs == load_examples(path, "jsonl")
    assert [e.answer for e in exs] == ["C", "A", "B"]
    assert exs[0].id == "7" and exs[0].labels == ("A", "B", "C")
    assert [e.context for e in exs] == [None, "ctx", None]


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(
    st.text(string.ascii_letters + " ", min_size=1).filter(str.strip),
    st.lists(st.text(string.ascii_letters + "  ", min_size=1).filter(str.strip),
             min_size=2, max_size=6),
    st.integers(0, 5)), min_size=1, max_size=8))
def test_generic_roundtrip_property(tmp_path_factory, rows):
    """Any valid generic file loads to what an independent construction predicts."""
    path = tmp_path_factory.mktemp("p") / "g.jsonl"
    recs = [{"id": f"e{i}", "question": q, "choices": c, "answer": a % len(c)}
            for i, (q, c, a) in enumerate(rows)]
    write_lines(path, recs)
    got = load_examples(path)
    assert [e.id for e in got] == [r["id"] for r in recs]
    for e, r in zip(got, recs):
        assert e.labels == tuple("ABCDEF"[: len(r["choices"])])
        assert e.answer == "ABCDEF"[r["answer"]]
        assert e.choices == tuple(" ".join(t.split()) for t in r["choices"])


def test_blank_lines_skipped_and_bom(tmp_path):
    path = tmp_path / "b.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps(csqa("a")).encode() + b"\n\n  \n"
                     + json.dumps(csqa("b")).encode() + b"\r\n")
    assert [e.id for e in load_examples(path)] == ["a", "b"]


# ----------------------------------------------------------------- bad input

def one_error(path: Path, fmt: str = "auto") -> DataError:
    errors = check_file(path, fmt)
    assert len(errors) == 1, errors
    with pytest.raises(DataError) as info:
        load_examples(path, fmt)
    assert str(info.value) == str(errors[0])
    return errors[0]


@pytest.mark.parametrize("lines, line, field, words", [
    ([csqa("a"), '{"answerKey": "A", "id": '], 2, None, "malformed JSON"),
    ([csqa("a"), {k: v for k, v in csqa("b").items() if k != "answerKey"}], 2, "answerKey",
     "missing"),
    ([csqa("a", answer="E")], 1, "answerKey", "not among"),
    ([csqa("a"), csqa("b"), csqa("a")], 3, "id", "first on line 1"),
    ([csqa("a", labels="A")], 1, "question.choices", "at least 2"),
    ([csqa("a", labels="ABA")], 1, "question.choices", "duplicate label"),
    ([csqa("a"), b'{"answerKey": "A", "id": "b", "question": {"stem": "caf\xe9"}}'], 2, None,
     "UTF-8"),
    ([{"answerKey": "A", "id": "a", "question": {"choices": []}}], 1, "question.stem",
     "missing"),
    ([{"answerKey": "A", "id": "a", "question": {"stem": "s"}}], 1, "question.choices",
     "missing"),
    ([{"answerKey": "A", "id": "a", "question": "s", "choices": {"label": ["A", "B"],
                                                                  "text": ["x"]}}],
     1, "choices", "2 labels but 1 texts"),
    ([csqa("a"), "[1, 2]"], 2, None, "JSON object"),
    ([csqa("a", stem="   ")], 1, "question.stem", "empty"),
    ([{"question": "q", "passage": "p", "answer": "true"}], 1, "answer", "expected bool"),
    ([{"question": "q", "choices": ["a", "b"], "answer": 2}], 1, "answer", "out of range"),
    ([{"question": "q", "choices": ["a", "b"], "answer": True}], 1, "answer", "got bool"),
    ([{"question": "q", "choices": ["a", ""], "answer": "A"}], 1, "choices[1].text",
     "non-empty"),
    ([{"question": "q", "choices": "ab", "answer": "A"}], 1, "choices", "expected list"),
])
def test_each_bad_input_is_reported_with_line_and_field(tmp_path, lines, line, field, words):
    err = one_error(write_lines(tmp_path / "bad.jsonl", lines))
    assert (err.line, err.field) == (line, field)
    assert words in str(err)
    assert str(err).startswith(f"{tmp_path / 'bad.jsonl'}:{line}: ")


@pytest.mark.parametrize("content", [b"", b"\n \n\n"])
def test_empty_file(tmp_path, content):
    path = tmp_path / "e.jsonl"
    path.write_bytes(content)
    err = one_error(path)
    assert "no examples" in str(err) and err.line is None


def test_missing_file_and_unknown_format(tmp_path):
    assert "no such file" in str(one_error(tmp_path / "nope.jsonl"))
    assert "not a file" in str(one_error(tmp_path))
    path = write_lines(tmp_path / "ok.jsonl", [csqa("a")])
    with pytest.raises(ConfigError, match="format"):
        check_file(path, "xml")


def test_every_problem_is_reported_and_raised_together(tmp_path):
    lines = [csqa("a"), "{oops", csqa("b", answer="Z"), "", csqa("a"),
             b"\xff\xfe", csqa("c", labels="A"), csqa("d")]
    path = write_lines(tmp_path / "many.jsonl", lines)
    errors = check_file(path)
    assert [(e.line, e.field) for e in errors] == [
        (2, None), (3, "answerKey"), (5, "id"), (6, None), (7, "question.choices")]
    with pytest.raises(DataError) as info:
        load_examples(path)
    msg = str(info.value)
    assert "5 problems" in msg and all(str(e) in msg for e in errors)
    assert (info.value.line, info.value.field) == (2, None)


def test_explicit_format_mismatch_is_reported(tmp_path):
    path = write_lines(tmp_path / "b.jsonl", [{"question": "q", "passage": "p", "answer": True}])
    assert load_examples(path, "boolq")
    err = one_error(path, "csqa")
    assert err.field == "answerKey"


# ----------------------------------------------------------------- prompt

EX = Example("e", "Which one?", ("A", "B", "C"), ("red", "green", "blue"), "B")


def test_default_prompt_exact():
    assert format_prompt(EX) == "Question: Which one?\nA. red\nB. green\nC. blue\nAnswer:"
    ctx = Example("e", "Is it?", ("A", "B"), ("yes", "no"), "A", context="Some text.")
    assert format_prompt(ctx, DEFAULT_TEMPLATE) == ("Context: Some text.\nQuestion: Is it?\n"
                                                     "A. yes\nB. no\nAnswer:")
    assert answer_text("B") == " B"
    assert format_prompt(EX) + answer_text(EX.answer) == format_prompt(EX) + " B"


def test_custom_template():
    tpl = PromptTemplate(prompt="Q: {question}\n{options}\nA:", option="({label}) {text}")
    assert format_prompt(EX, tpl) == "Q: Which one?\n(A) red\n(B) green\n(C) blue\nA:"


@pytest.mark.parametrize("kwargs, words", [
    ({"prompt": "{question}\n{options}\n{answer}"}, "unknown placeholder"),
    ({"prompt": "{question}\nAnswer:"}, "missing placeholder"),
    ({"prompt": "{question}\n{options}\nAnswer: "}, "whitespace"),
    ({"option": "{label}"}, "missing placeholder"),
    ({"context": "Context:\n"}, "missing placeholder"),
    ({"prompt": "{question\n{options}"}, "prompt template prompt"),
])
def test_bad_template_is_a_config_error(kwargs, words):
    with pytest.raises(ConfigError, match=words):
        PromptTemplate(**kwargs)


@pytest.mark.parametrize("label", ["", " A", "A "])
def test_answer_text_rejects_bad_labels(label):
    with pytest.raises(ValueError, match="label"):
        answer_text(label)


# ----------------------------------------------------------------- summary and HF

def test_summarize_counts():
    exs = [Example(str(i), "q", tuple("ABCD"[:n]), tuple("wxyz"[:n]), a)
           for i, (n, a) in enumerate([(4, "A"), (4, "B"), (2, "A"), (4, "D")])]
    line = summarize(exs)
    gold = Counter(e.answer for e in exs)
    assert line.startswith("4 examples; 2-4 (mean 3.5) choices per question")
    for lab, n in gold.items():
        assert f"{lab} {n} ({n / len(exs):.0%})" in line
    assert summarize(exs[:2]).startswith("2 examples; 4 choices per question")
    assert "\n" not in line


def test_hf_loader_needs_datasets(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # makes `import datasets` fail
    with pytest.raises(FirstError, match="pip install datasets"):
        load_hf_dataset("commonsense_qa", "validation")


# ----------------------------------------------------------------- [data] hf_dataset (issue 13)

def hf_csqa(i: int, answer: str = "B") -> dict:
    """A row in the Hugging Face CommonsenseQA layout (tau/commonsense_qa)."""
    return {"id": f"h{i}", "question": f"Where is thing {i}?", "question_concept": "thing",
            "choices": {"label": list("ABCDE"), "text": [f"place {i}{l}" for l in "abcde"]},
            "answerKey": answer}


HF_SPLITS = {"train": [hf_csqa(i) for i in range(8)],
             "validation": [hf_csqa(i, "C") for i in range(8, 12)],
             "test": [hf_csqa(i, "D") for i in range(12, 15)]}


@pytest.fixture(params=["save_to_disk", "jsonl_folder"])
def hf_folder(request, tmp_path, monkeypatch):
    """A local data set `datasets.load_dataset` reads without the network: a DatasetDict
    saved with `save_to_disk`, or a folder of JSONL files named by split."""
    datasets = pytest.importorskip(
        "datasets", reason="the `datasets` package is not installed (requirements-dev.txt)")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "cache")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    folder = tmp_path / "hf"
    if request.param == "save_to_disk":
        datasets.DatasetDict({s: datasets.Dataset.from_list(rows)
                              for s, rows in HF_SPLITS.items()}).save_to_disk(str(folder))
    else:
        folder.mkdir()
        for split, rows in HF_SPLITS.items():
            write_lines(folder / f"{split}.jsonl", rows)
    return folder


def _hf_config(tmp_path, folder, *more: str):
    from first_core.config.loading import load_config
    return load_config(overrides=["data.embedded=false", f"data.hf_dataset='{folder}'",
                                  f"data.dir='{tmp_path / 'data'}'", *more])


def test_hf_dataset_in_data_reaches_the_data_stage(hf_folder, tmp_path):
    from first_core.pipeline.stage_base import Context, stage_mc_data as stage_data
    (tmp_path / "data").mkdir()
    ood = write_lines(tmp_path / "data" / "test_ood.jsonl",
                      [{"id": "o1", "question": "Which?", "choices": ["x", "y"], "answer": 1}])
    cfg = _hf_config(tmp_path, hf_folder)
    rec = stage_data(Context(cfg, tmp_path / "run"))
    assert rec["counts"] == {"train": 8, "val": 4, "test": 3, "test_ood": 1}
    assert rec["files"]["test_ood"] == str(ood)  # hf_test_ood = "": the user's own file
    exs = load_examples(rec["files"]["val"])
    # the same examples as reading the rows by hand
    assert [(e.id, e.question, e.labels, e.choices, e.answer) for e in exs] == [
        (r["id"], r["question"], tuple(r["choices"]["label"]), tuple(r["choices"]["text"]),
         r["answerKey"]) for r in HF_SPLITS["validation"]]
    assert exs == load_hf_dataset(str(hf_folder), "validation")
    # another split mapping, a slice: the hash follows the data
    again = stage_data(Context(_hf_config(tmp_path, hf_folder, "data.hf_test='validation[:2]'"),
                               tmp_path / "run"))
    assert again["counts"]["test"] == 2 and again["dataset_hash"] != rec["dataset_hash"]
    assert load_examples(again["files"]["test"]) == exs[:2]


def test_hf_dataset_problems_are_one_line_naming_the_split_or_the_row(hf_folder, tmp_path):
    from first_core.pipeline.stage_base import Context, stage_mc_data as stage_data
    (tmp_path / "data").mkdir()
    write_lines(tmp_path / "data" / "test_ood.jsonl",
                [{"id": "o1", "question": "Which?", "choices": ["x", "y"], "answer": 1}])
    cfg = _hf_config(tmp_path, hf_folder, "data.hf_val='nope'")
    with pytest.raises(FirstError, match=r"^hf:.*\[nope\]: cannot load it: ") as err:
        stage_data(Context(cfg, tmp_path / "run"))
    assert "\n" not in str(err.value)
    assert not (tmp_path / "data" / "train.jsonl").exists()  # nothing written before it
    bad = tmp_path / "bad"
    bad.mkdir()
    write_lines(bad / "train.jsonl", [hf_csqa(0), hf_csqa(1, "Z")])
    write_lines(bad / "test.jsonl", [hf_csqa(2)])
    write_lines(bad / "validation.jsonl", [hf_csqa(3)])
    with pytest.raises(FirstError, match=r"train\.jsonl:2: answerKey: 'Z' is not among"):
        stage_data(Context(_hf_config(tmp_path, bad), tmp_path / "run"))


def test_hf_dataset_needs_embedded_off():
    from first_core.config.loading import load_config
    with pytest.raises(ConfigError, match="data.hf_dataset: set data.embedded = false"):
        load_config(overrides=["data.hf_dataset='tau/commonsense_qa'"])
