"""`python -m first_core import`: any model's predictions become their own pipeline."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.calibration import calibration_curve
from sklearn.metrics import roc_auc_score

from first_core.importer import table as importer
from first_core.store.reads import (list_pipelines, list_runs, load_examples, load_metrics,
                                    load_predictions)
from first_core.errors import DataError, StoreError
from first_core.fixtures import write_fixture_store

ROOT = Path(__file__).resolve().parents[1]


def option_frame(n: int = 200, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    probs = rng.dirichlet(np.ones(4), n) * rng.uniform(0.8, 1.0, (n, 1))
    gold = np.where(rng.random(n) < 0.6, probs.argmax(1), rng.integers(0, 4, n))
    frame = pd.DataFrame(probs, columns=[f"p_{x}" for x in "ABCD"])
    frame.insert(0, "example_id", [f"q{i}" for i in range(n)])
    frame["gold"] = np.asarray(list("ABCD"))[gold]
    frame["split"] = np.where(np.arange(n) % 2, "test", "test_ood")
    frame["question"] = [f"Question {i}?" for i in range(n)]
    return frame


def write(frame: pd.DataFrame, path: Path) -> Path:
    if path.suffix == ".csv":
        frame.to_csv(path, index=False)
    elif path.suffix == ".parquet":
        frame.to_parquet(path, index=False)
    else:
        frame.to_json(path, orient="records", lines=True)
    return path


def ref_ece(conf: np.ndarray, ok: np.ndarray, n_bins: int = 10) -> float:
    """ECE from scikit-learn's calibration_curve bins (an independent implementation)."""
    edges = np.linspace(0, 1, n_bins + 1)
    ids = np.searchsorted(edges[1:-1], conf)
    frac, mean = calibration_curve(ok, conf, n_bins=n_bins)
    counts = np.bincount(ids, minlength=n_bins)
    return float(np.sum(counts[counts > 0] / len(conf) * np.abs(frac - mean)))


@pytest.mark.parametrize("suffix", [".csv", ".parquet", ".jsonl"])
def test_per_option_file_becomes_a_pipeline_with_both_conventions(tmp_path, suffix):
    frame = option_frame()
    path = write(frame, tmp_path / f"preds{suffix}")
    target = tmp_path / "s.duckdb"
    written, run_id, n = importer.import_predictions(path, "my-llm", target, model="llm-7b")
    assert (written, run_id, n) == (target, "my-llm/imported/seed0", 200)
    runs = list_runs(target)
    assert runs[["pipeline", "method", "model"]].values.tolist() == [
        ["my-llm", "imported", "llm-7b"]]
    preds = load_predictions(target, run_id, "test").set_index("example_id")
    src = frame[frame["split"] == "test"].set_index("example_id")
    probs = src[[f"p_{x}" for x in "ABCD"]].to_numpy()
    np.testing.assert_allclose(preds.loc[src.index, "confidence"], probs.max(1))
    np.testing.assert_allclose(preds.loc[src.index, "confidence_option"],
                               probs.max(1) / probs.sum(1))
    assert (preds.loc[src.index, "correct"] == (np.asarray(list("ABCD"))[probs.argmax(1)]
                                                == src["gold"])).all()
    rows = load_metrics(target, run_id, split="test", convention="option",
                        metric="ece")
    conf = probs.max(1) / probs.sum(1)
    ok = np.asarray(list("ABCD"))[probs.argmax(1)] == src["gold"].to_numpy()
    assert rows["value"].iloc[0] == pytest.approx(ref_ece(conf, ok))
    sel = load_metrics(target, run_id, split="test", convention="option",
                       metric=["auroc", "aurc"]).set_index("metric")
    assert sel.loc["auroc", "value"] == pytest.approx(roc_auc_score(ok, conf))
    assert sel.loc["auroc", "ci_low"] < sel.loc["auroc", "value"] < sel.loc["auroc", "ci_high"]
    answered = conf[None, :] >= conf[:, None]  # row i: the items at least as confident as i
    aurc = np.mean((answered & ~ok[None, :]).sum(1) / answered.sum(1))
    assert sel.loc["aurc", "value"] == pytest.approx(aurc)
    text = load_examples(target, dataset="import:my-llm", split="test")
    assert set(text["question"]) == set(src["question"])


def test_confidence_and_correct_layout(tmp_path):
    rng = np.random.default_rng(1)
    conf = rng.uniform(0.2, 1, 300)
    frame = pd.DataFrame({"confidence": conf, "correct": rng.random(300) < conf})
    path = tmp_path / "c.jsonl"
    path.write_text("".join(json.dumps({"confidence": float(c), "correct": bool(k)}) + "\n\n"
                            for c, k in zip(frame["confidence"], frame["correct"])))
    _, run_id, n = importer.import_predictions(path, "bin", tmp_path / "s.duckdb")
    ece = load_metrics(tmp_path / "s.duckdb", run_id, convention="paper", metric="ece")
    assert n == 300 and ece["value"].iloc[0] == pytest.approx(
        ref_ece(conf, frame["correct"].to_numpy()))
    preds = load_predictions(tmp_path / "s.duckdb", run_id)
    assert (preds["split"] == "test").all() and preds["example_id"].iloc[0].startswith("row-")


def test_every_problem_is_named_by_file_line_and_field_and_nothing_is_written(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text("example_id,p_A,p_B,gold,split\n"
                    "a,0.7,0.2,A,test\n"
                    "b,0.7,oops,A,test\n"       # line 3
                    "c,0.9,0.5,B,test\n"        # line 4: sums to 1.4
                    "d,0.1,0.2,Z,test\n"        # line 5: unknown gold
                    "a,0.5,0.5,A,test\n"        # line 6: duplicate id
                    "e,-0.1,0.5,A,train\n")     # line 7: negative, bad split
    target = tmp_path / "s.duckdb"
    write_fixture_store(target, 10)
    before = list_runs(target)
    with pytest.raises(DataError) as err:
        importer.import_predictions(path, "x", target)
    lines = str(err.value).splitlines()
    for expected in (f"{path}:3: p_B: not a number: 'oops'",
                     f"{path}:4: p_A/p_B: probabilities sum to 1.4; they must sum",
                     f"{path}:5: gold: must be one of ['A', 'B']",
                     f"{path}:6: example_id: duplicate within its split",
                     f"{path}:7: p_A: must be a probability in [0, 1]",
                     f"{path}:7: split: must be one of"):
        assert any(line.startswith(expected) for line in lines), (expected, lines)
    pd.testing.assert_frame_equal(list_runs(target), before)


@pytest.mark.parametrize("content, message", [
    ("p_A,gold\n0.5,A\n", "need 2 to 26 p_<LABEL> columns"),
    ("p_A,p_B\n0.5,0.5\n", "missing column(s) ['gold']"),
    ("confidence\n0.5\n", "missing column(s) ['correct']"),
    ("p_A,p_B,gold,notes\n0.5,0.5,A,x\n", "unknown column(s) ['notes']"),
    ("p_A,p_B,gold\n", "no predictions"),
])
def test_wrong_layouts_say_what_is_expected(tmp_path, content, message):
    path = tmp_path / "f.csv"
    path.write_text(content)
    with pytest.raises(DataError, match=message.replace("(", r"\(").replace(")", r"\)")
                       .replace("[", r"\[").replace("]", r"\]")):
        importer.read_predictions(path)


def test_bad_jsonl_line_and_bad_names(tmp_path):
    path = tmp_path / "f.jsonl"
    path.write_text('{"confidence": 0.5, "correct": true}\n{"confidence": 0.5,\n')
    with pytest.raises(DataError, match=rf"{path}:2: malformed JSON"):
        importer.read_predictions(path)
    with pytest.raises(DataError, match="unknown file type"):
        importer.read_predictions(tmp_path / "f.xlsx")
    with pytest.raises(DataError, match="--name"):
        importer.import_predictions(path, "../etc", tmp_path / "s.duckdb")


def test_reimport_replaces_and_own_pipelines_are_protected(tmp_path):
    target = write_fixture_store(tmp_path / "s.duckdb", 10)
    path = write(option_frame(20), tmp_path / "a.csv")
    importer.import_predictions(path, "mine", target)
    importer.import_predictions(write(option_frame(30, seed=1), tmp_path / "b.csv"), "mine",
                                target)
    preds = load_predictions(target, "mine/imported/seed0")
    assert len(preds) == 30
    with pytest.raises(StoreError, match="pipeline 'fixture' holds this project's own runs"):
        importer.import_predictions(path, "fixture", target)
    assert set(list_pipelines(target)["pipeline"]) == {"fixture", "mine"}


def test_cli_prints_errors_as_one_message_with_exit_2(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("confidence,correct\n1.5,maybe\n")
    cmd = [sys.executable, "-m", "first_core", "import", str(bad), "--name", "x",
           "--store", str(tmp_path / "s.duckdb")]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert f"error: {bad}:2: confidence: must be a probability in [0, 1]" in out.stderr
    assert f"{bad}:2: correct: must be true/false or 1/0" in out.stderr
    assert not (tmp_path / "s.duckdb").exists()
    good = write(option_frame(10), tmp_path / "g.parquet")
    cmd[4] = str(good)
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0 and "imported 10 predictions as pipeline 'x'" in out.stdout


def test_a_table_file_without_name_says_name_is_required(tmp_path, capsys):
    from first_core.__main__ import main

    good = write(option_frame(10), tmp_path / "g.csv")
    code = main(["import", str(good), "--store", str(tmp_path / "s.duckdb")])
    err = capsys.readouterr().err
    assert code == 2 and f"error: {good}: --name: required for this file" in err
