"""`python -m first_core import` of OpenAI-compatible Batch output with top_logprobs
(`--format openai --gold FILE`) and of lighteval details parquet (issue 29, items 2 and 3),
on the hand-made fixtures of tests/fixtures/openai and tests/fixtures/lighteval."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from first_core.store.reads import list_runs, load_examples, load_predictions
from first_core.__main__ import main

FIXTURES = Path(__file__).resolve().parent / "fixtures"
BATCH = FIXTURES / "openai" / "batch_output.jsonl"
GOLD = FIXTURES / "openai" / "gold.csv"
LIGHT = FIXTURES / "lighteval"


def cli(capsys, *args) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_batch_output_with_gold_becomes_option_probabilities(tmp_path, capsys):
    target = tmp_path / "s.duckdb"
    code, out, err = cli(capsys, "import", BATCH, "--gold", GOLD, "--name", "oa", "--store",
                         target)
    assert code == 0, err
    assert "imported 4 predictions as pipeline 'oa'" in out
    assert (f"{BATCH}:3: top_logprobs: option(s) ['D'] not among the answer token's top-k; "
            "probability 0, not guessed") in err
    assert "1 custom_id(s) have no completion" in err
    preds = load_predictions(target, "oa/imported/seed0").set_index("example_id")
    assert list(preds.loc["q1", "option_labels"]) == list("ABCDE")
    np.testing.assert_allclose(preds.loc["q1", "option_probs"], [0.1, 0.75, 0.08, 0.04, 0])
    np.testing.assert_allclose(preds.loc["q2", "option_probs"], [0.7, 0.1, 0.15, 0.03, 0])
    np.testing.assert_allclose(preds.loc["q3", "option_probs"], [0.05, 0.3, 0.6, 0, 0])
    assert preds.loc["q2", "pred"] == "A" and not preds.loc["q2", "correct"]
    assert preds.loc["q1", "confidence_option"] == pytest.approx(0.75 / 0.97)
    config = json.loads(list_runs(target).loc[0, "config"])
    assert config["rows_with_options_missing_from_top_k"] == 1
    assert config["mass_outside_options_mean"] == pytest.approx(
        np.mean([0.03, 0.02, 0.05, 0.05]))
    text = load_examples(target, dataset="import:oa").set_index("example_id")
    assert text.loc["q4", "question"] == "What?"


def _batch_with(tmp_path: Path, change) -> Path:
    rows = [json.loads(x) for x in BATCH.read_text().splitlines()]
    change(rows[1])
    f = tmp_path / "b.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return f


CONTENT = "response.body.choices[0].logprobs.content"


@pytest.mark.parametrize("change, words", [
    (lambda r: r.update(custom_id="zz"), "custom_id: 'zz' is not in"),
    (lambda r: r.update(custom_id="q1"), "custom_id: 'q1' is already on line 1"),
    (lambda r: r.update(error={"code": "rate_limit"}, response=None), "error: the request "
                                                                      "failed"),
    (lambda r: r["response"]["body"]["choices"][0].pop("logprobs"),
     f"{CONTENT}: missing: request the completion with logprobs=true"),
    (lambda r: [t.pop("top_logprobs") for t in
                r["response"]["body"]["choices"][0]["logprobs"]["content"]],
     f"{CONTENT}[].top_logprobs: missing on the answer token"),
    (lambda r: r["response"]["body"]["choices"][0]["logprobs"].update(
        content=[{"token": "Hmm", "logprob": -0.1, "top_logprobs": []}]),
     f"{CONTENT}: no generated token is one of the options ABCD"),
])
def test_batch_refusals_name_file_line_and_field(tmp_path, capsys, change, words):
    f = _batch_with(tmp_path, change)
    code, _, err = cli(capsys, "import", f, "--gold", GOLD, "--name", "oa", "--store",
                       tmp_path / "s.duckdb")
    assert code == 2 and err.startswith(f"error: {f}:2: {words}"), err
    assert not (tmp_path / "s.duckdb").exists()


def test_batch_without_gold_or_with_a_bad_gold_is_refused(tmp_path, capsys):
    code, _, err = cli(capsys, "import", BATCH, "--name", "oa", "--store", tmp_path / "s.db")
    assert code == 2 and "--gold FILE: required for --format openai" in err
    gold = tmp_path / "g.csv"
    gold.write_text("custom_id,gold\nq1,B\nq2,E\n")
    code, _, err = cli(capsys, "import", BATCH, "--gold", gold, "--name", "oa", "--store",
                       tmp_path / "s.db")
    assert code == 2 and f"error: {gold}:3: gold: gold 'E' is not one of the options " \
                         "'ABCD'" in err


def test_lighteval_details_become_a_run_named_after_the_task(tmp_path, capsys):
    target = tmp_path / "s.duckdb"
    f = next(LIGHT.glob("details_arc_easy_*.parquet"))
    code, out, err = cli(capsys, "import", f, "--store", target)
    assert code == 0 and "as pipeline 'arc_easy'" in out, err
    preds = load_predictions(target, "arc_easy/imported/seed0").set_index("example_id")
    lp = np.array([-3.2, -0.9, -2.5])
    np.testing.assert_allclose(preds.loc["0", "option_probs"][:3], np.exp(lp) / np.exp(lp).sum())
    assert preds.loc["0", "option_probs"][3] == 0  # 3 of 4 columns: the 4th is no option
    assert preds["correct"].tolist() == [True, True, False]
    text = load_examples(target, dataset="import:arc_easy").set_index("example_id")
    assert list(text.loc["1", "choices"])[:2] == ["Paris", "Rome"]


@pytest.mark.parametrize("name, words", [
    ("details_gsm_*", ":1: model_response.logprobs: empty: a generative task"),
    ("details_old_layout_*", ": lighteval details from before 0.11"),
])
def test_lighteval_refusals(tmp_path, capsys, name, words):
    f = next(LIGHT.glob(name))
    code, _, err = cli(capsys, "import", f, "--store", tmp_path / "s.duckdb")
    assert code == 2 and err.startswith(f"error: {f}{words}"), err
    assert "rerun the evaluation with lighteval 0.11 or later" in err or "gsm" in name


def test_lighteval_folder_imports_every_details_file(tmp_path, capsys):
    folder = tmp_path / "details" / "model" / "2026-12-06T21-40-00.000000"
    folder.mkdir(parents=True)
    shutil.copy(next(LIGHT.glob("details_arc_easy_*")), folder)
    code, out, err = cli(capsys, "import", tmp_path / "details", "--store", tmp_path / "s.db")
    assert code == 0 and "as pipeline 'arc_easy'" in out, err


def _details_with(tmp_path: Path, change) -> Path:
    import pyarrow.parquet as pq

    table = pq.read_table(next(LIGHT.glob("details_arc_easy_*")))
    docs, resps = table.column("doc").to_pylist(), table.column("model_response").to_pylist()
    change(docs[1], resps[1])
    import pyarrow as pa

    f = tmp_path / "details_t_2026-01-01T00-00-00.000000.parquet"
    pq.write_table(pa.table({"doc": docs, "model_response": resps}), f)
    return f


@pytest.mark.parametrize("change, words", [
    (lambda d, r: r.update(logprobs=[-1.0]), "model_response.logprobs: 1 logprobs for 2 "
                                             "choices"),
    (lambda d, r: r.update(logprobs=[-1.0, float("nan")]), "model_response.logprobs: not all "
                                                           "finite numbers"),
    (lambda d, r: d.update(gold_index=5), "doc.gold_index: 5 is not an index of the 2 choices"),
])
def test_lighteval_row_refusals_name_the_row(tmp_path, capsys, change, words):
    f = _details_with(tmp_path, change)
    code, _, err = cli(capsys, "import", f, "--store", tmp_path / "s.duckdb")
    assert code == 2 and err.startswith(f"error: {f}:2: {words}"), err
