"""prediction_reads: the bounded and Arrow reads agree with the pandas ones they replace."""

from __future__ import annotations

import duckdb
import numpy as np
import pytest

from first_core.store import prediction_reads
from first_core.store.reads import load_predictions
from first_core.fixtures import run_id, write_fixture_store
from first_core.views import example_rows, run_arrays


@pytest.fixture(scope="module")
def path(tmp_path_factory):
    return write_fixture_store(tmp_path_factory.mktemp("reads") / "r.duckdb", 80, seed=1)


@pytest.mark.parametrize("kind", list(example_rows.FILTERS))
@pytest.mark.parametrize("convention", ["option", "paper"])
def test_matches_are_the_pandas_filter_head_and_counts(path, kind, convention):
    run = run_id("student_ft", 1)
    preds = load_predictions(path, run, "test")
    want = example_rows.filter_predictions(preds, kind, convention, 0.7, 0.6)
    got = prediction_reads.read_matches(path, run, "test", kind, convention, 0.7, 0.6, limit=17)
    assert (got.matched, got.total) == (len(want), len(preds))
    assert got.rows["example_id"].tolist() == want["example_id"].head(17).tolist()
    conf = "confidence_option" if convention == "option" else "confidence"
    np.testing.assert_array_equal(got.rows[conf], want[conf].head(17))


def test_matches_refuse_unknown_filters(path):
    with pytest.raises(ValueError, match="kind"):
        prediction_reads.read_matches(path, "x", "test", "'; DROP TABLE runs; --")
    with pytest.raises(ValueError, match="convention"):
        prediction_reads.read_matches(path, "x", "test", "all", "both")


def test_rows_reads_only_the_example_ids_asked_for(path):
    run = run_id("teacher_ft", 1)
    got = prediction_reads.read_rows(path, run, "val", ["val-0003", "val-0007", "nope"],
                                     ["example_id", "topk_probs"])
    assert got["example_id"].tolist() == ["val-0003", "val-0007"]


@pytest.mark.parametrize("method", ["teacher_ft", "first_ts"])
def test_arrow_arrays_equal_the_pandas_arrays(path, method):
    run = run_id(method, 1)
    frame = load_predictions(path, run, "test_ood", columns=run_arrays.PREDICTION_COLUMNS)
    want = run_arrays.prediction_arrays(frame)
    got = prediction_reads.read_arrays(path, run, "test_ood")
    for name in ("topk_probs", "correct", "option_probs", "gold_option", "example_ids"):
        a, b = getattr(got, name), getattr(want, name)
        np.testing.assert_array_equal(np.asarray(a).astype(b.dtype), b, err_msg=name)
        assert not getattr(got, name).flags.writeable
    assert len(prediction_reads.read_arrays(path, run, "train")) == 0  # no such split: empty


def test_arrow_arrays_name_bad_rows(tmp_path):
    bad = tmp_path / "bad.duckdb"
    write_fixture_store(bad, 20, seed=1)
    run = run_id("first_ts", 1)
    with duckdb.connect(str(bad)) as con:
        con.execute("UPDATE predictions SET gold = 'Z' WHERE run_id = ? AND example_id = "
                    "'test-0004'", [run])
        con.execute("UPDATE predictions SET topk_probs = [0.5] WHERE run_id = ? AND "
                    "example_id = 'val-0002'", [run])
        con.execute("UPDATE predictions SET option_labels = NULL WHERE run_id = ? AND "
                    "example_id = 'test_ood-0001'", [run])
    with pytest.raises(ValueError, match=r"predictions.gold: 'Z' \(row 4\) is not among"):
        prediction_reads.read_arrays(bad, run, "test")
    with pytest.raises(ValueError, match=r"predictions.topk_probs: rows have different lengths"):
        prediction_reads.read_arrays(bad, run, "val")
    with pytest.raises(ValueError, match=r"missing values in \['option_labels'\]"):
        prediction_reads.read_arrays(bad, run, "test_ood")
