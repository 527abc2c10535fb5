"""Dashboard computations, checked against small independent numpy implementations."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pandas as pd
import pytest

from scipy.special import softmax

from first_core.metrics import binning, checks, conventions, intervals, point_scores
from first_core.metrics.binning import expected_calibration_error, maximum_calibration_error
from first_core import report
from first_core.store.reads import list_runs, load_examples, load_predictions
from first_core.views import (example_rows, rescaling, run_arrays, selective, storage_math,
                               tables, teaching, token_views, view_state)
from first_core.fixtures import write_fixture_store


def ref_ece(conf: np.ndarray, correct: np.ndarray, n_bins: int) -> float:
    """Independent uniform-bin ECE with scikit-learn's (a, b] edges."""
    edges = np.linspace(0, 1, n_bins + 1)
    ids = np.searchsorted(edges[1:-1], conf)
    total = 0.0
    for b in range(n_bins):
        sel = ids == b
        if sel.any():
            total += sel.mean() * abs(correct[sel].mean() - conf[sel].mean())
    return total


@pytest.fixture(scope="module")
def fixture_store(tmp_path_factory) -> str:
    return str(write_fixture_store(tmp_path_factory.mktemp("store") / "f.duckdb", 120, seed=1))


@pytest.fixture(scope="module")
def preds(fixture_store) -> pd.DataFrame:
    runs = list_runs(fixture_store)
    run = runs.loc[runs["method"] == "student_ft", "run_id"].iloc[0]
    return load_predictions(fixture_store, run, "test")


@pytest.fixture(scope="module")
def arrays(preds) -> run_arrays.PredictionArrays:
    return run_arrays.prediction_arrays(preds[list(run_arrays.PREDICTION_COLUMNS)])


# ---------------------------------------------------------------- grid and view state

def test_grid_is_log_spaced_from_005_to_10_with_one():
    grid = view_state.TEMPERATURE_GRID
    assert grid[0] == pytest.approx(0.05, rel=0.01) and grid[-1] == 10.0 and 1.0 in grid
    steps = np.diff(np.log10(grid))
    assert (steps > 0).all() and np.allclose(steps, 1 / 40, atol=0.003)


def test_snap_temperature_picks_nearest_in_log_space():
    assert view_state.snap_temperature(0.3) == pytest.approx(0.299)
    assert view_state.snap_temperature(1e6) == 10.0
    assert view_state.snap_temperature(1e-6) == view_state.TEMPERATURE_GRID[0]
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="c"):
            view_state.snap_temperature(bad)


def test_view_state_round_trips_through_query_params():
    state = view_state.ViewState(("r2", "r1"), "test_ood", view_state.snap_temperature(0.3),
                                 "first", "paper", 15, "quantile", t=0.73)
    assert view_state.parse_view_state(state.to_params(), ["r1", "r2", "r3"],
                                  ["val", "test", "test_ood"]) == state


@pytest.mark.parametrize("raw, t", [("abc", 0.5), ("nan", 0.5), ("-1", 0.0), ("2", 1.0),
                                    ("inf", 1.0), ("-inf", 0.0), ("1e400", 1.0), ("", 0.5),
                                    ("0.126", 0.13), (["0.3", "0.9"], 0.3), ("0x1p-1", 0.5)])
def test_threshold_in_the_url_is_clamped_snapped_or_dropped(raw, t):
    state = view_state.parse_view_state({"t": raw}, ["r1"], ["test"])
    assert state.t == t and 0 <= state.t <= 1
    assert view_state.ViewState(t=state.t).to_params()["t"] == f"{t:g}"
    with pytest.raises(ValueError, match="t"):
        view_state.snap_threshold(float("nan"))


def test_view_state_drops_invalid_url_values():
    params = {"runs": "nope,r1'; DROP TABLE runs; --", "split": "train", "c": "abc",
              "mode": "exec", "conv": "x", "bins": "999", "strategy": "?"}
    state = view_state.parse_view_state(params, ["r1", "r2"], ["val", "test"])
    assert state == view_state.ViewState(("r1",), "test", 1.0, "logit", "option", 30, "uniform")
    assert view_state.parse_view_state({"bins": "1", "c": "0.33"}, ["r1"], ["val"]).n_bins == 5
    assert view_state.parse_view_state({"c": ["0.33"]}, ["r1"], ["val"]).c == pytest.approx(0.335)


@pytest.mark.parametrize("params", [{"c": "-1"}, {"c": "nan"}, {"c": "inf"}, {"c": "0"},
                                    {"bins": "100000"}, {"bins": "-5"}, {"bins": "1e3"},
                                    {"bin": "10"}, {"bin": "-1"}, {"bin": "x", "panel": "7"},
                                    {"runs": "ghost,phantom"}, {"split": "../etc"}])
def test_garbage_query_parameters_fall_back_to_valid_values(params):
    state = view_state.parse_view_state(params, ["r1", "r2"], ["val", "test"])
    assert state.c in view_state.TEMPERATURE_GRID and np.isfinite(state.c)
    assert view_state.BIN_RANGE[0] <= state.n_bins <= view_state.BIN_RANGE[1]
    assert state.runs == ("r1",) and state.split == "test"
    assert state.bin is None or 0 <= state.bin < state.n_bins
    assert 0 <= state.panel < max(1, len(state.runs))


def test_selected_bin_round_trips_and_is_dropped_outside_the_diagram():
    state = view_state.ViewState(("r1", "r2"), "test", 1.0, n_bins=10, bin=9, panel=1)
    assert view_state.parse_view_state(state.to_params(), ["r1", "r2"], ["test"]) == state
    params = {**state.to_params(), "bins": "5"}  # bin 9 no longer exists with 5 bins
    assert view_state.parse_view_state(params, ["r1", "r2"], ["test"]).bin is None
    lone = view_state.parse_view_state({"runs": "r1", "bin": "3", "panel": "1"}, ["r1", "r2"],
                                  ["test"])
    assert (lone.bin, lone.panel) == (3, 0)  # no second panel: the first one
    assert "bin" not in view_state.ViewState(("r1",)).to_params()


def test_figure5_default_is_student_ft_beside_first_ts_on_ood():
    runs = pd.DataFrame({"run_id": ["p/teacher_ft/seed0", "p/student_ft/seed0",
                                    "p/first_ts/seed0", "q/student_ft/seed0"],
                         "method": ["teacher_ft", "student_ft", "first_ts", "student_ft"],
                         "pipeline": ["p", "p", "p", "q"]})
    splits = ["val", "test", "test_ood"]
    assert view_state.figure5_default(runs, splits) == (("p/student_ft/seed0", "p/first_ts/seed0"),
                                                   "test_ood")
    state = view_state.parse_view_state({}, runs["run_id"].tolist(), splits,
                                   default=view_state.figure5_default(runs, splits))
    assert state.runs == ("p/student_ft/seed0", "p/first_ts/seed0") and state.split == "test_ood"
    assert view_state.figure5_default(runs, ["val", "test"]) is None
    assert view_state.figure5_default(runs[runs["method"] != "first_ts"], splits) is None
    picked = view_state.parse_view_state({"runs": "q/student_ft/seed0", "split": "test"},
                                    runs["run_id"].tolist(), splits,
                                    default=view_state.figure5_default(runs, splits))
    assert picked.runs == ("q/student_ft/seed0",) and picked.split == "test"  # URL wins


# ---------------------------------------------------------------- arrays and slider path

def test_prediction_arrays_are_dense_read_only_and_find_gold(preds, arrays):
    n = len(preds)
    assert arrays.topk_probs.shape[0] == n and arrays.option_probs.shape[0] == n
    labels = np.stack(preds["option_labels"].to_numpy())
    assert (labels[np.arange(n), arrays.gold_option] == preds["gold"].to_numpy()).all()
    with pytest.raises(ValueError):
        arrays.option_probs[0, 0] = 1.0


def test_prediction_arrays_reject_ragged_rows_and_unknown_gold(preds):
    frame = preds[list(run_arrays.PREDICTION_COLUMNS)].copy()
    ragged = frame.copy()
    ragged.at[ragged.index[3], "topk_probs"] = np.array([0.5, 0.2])
    with pytest.raises(ValueError, match="topk_probs.*row 3"):
        run_arrays.prediction_arrays(ragged)
    unknown = frame.copy()
    unknown.at[unknown.index[2], "gold"] = "Z"
    with pytest.raises(ValueError, match="gold.*'Z'"):
        run_arrays.prediction_arrays(unknown)


def test_classic_scaling_at_one_shows_the_stored_confidence(preds, arrays):
    option = rescaling.rescale(arrays, 1.0, "logit", "option")
    np.testing.assert_allclose(option.confidence, preds["confidence_option"], rtol=1e-9)
    np.testing.assert_array_equal(option.correct, preds["correct_option"])
    paper = rescaling.rescale(arrays, 1.0, "logit", "paper")
    np.testing.assert_allclose(paper.confidence, preds["confidence"], rtol=1e-9)


@pytest.mark.parametrize("c", [0.1, 0.3, 2.0])
def test_first_transform_matches_the_paper_formula(arrays, c):
    p = arrays.topk_probs
    expected = np.exp(p / c) / np.exp(p / c).sum(axis=1, keepdims=True)
    scaled = rescaling.rescale(arrays, c, "first", "paper")
    np.testing.assert_allclose(scaled.confidence, expected.max(axis=1), rtol=1e-9)
    np.testing.assert_array_equal(scaled.correct, arrays.correct)  # arg-max kept


def test_calibration_view_agrees_with_reference_metrics(arrays):
    view = rescaling.calibration_view(arrays, 0.5, "logit", "option", n_bins=12, n_boot=100)
    p = arrays.option_probs ** 2  # c = 0.5: p^(1/c)
    p = p / p.sum(axis=1, keepdims=True)
    conf, correct = p.max(axis=1), p.argmax(axis=1) == arrays.gold_option
    cards = view.cards
    assert cards["ece"] == pytest.approx(ref_ece(conf, correct, 12), abs=1e-12)
    assert cards["accuracy"] == pytest.approx(correct.mean())
    assert cards["trust"] == pytest.approx(correct.mean() - cards["ece"])
    onehot = np.eye(p.shape[1])[arrays.gold_option]
    assert cards["brier"] == pytest.approx(((p - onehot) ** 2).sum(axis=1).mean())
    assert cards["nll"] == pytest.approx(-np.log(p[np.arange(len(p)), arrays.gold_option]).mean())
    assert cards["ece_low"] <= cards["ece"] <= cards["ece_high"]
    assert len(view.bins) == 12 and view.bins["count"].sum() == len(arrays)


def _reference_scaled(arrays, c, mode, convention):
    """Independent: the transform written out with scipy's softmax, no first_core code."""
    def scaled(p):
        with np.errstate(divide="ignore"):
            return softmax((np.log(p) if mode == "logit" else p) / c, axis=1)
    options = scaled(arrays.option_probs)
    if convention == "option":
        conf, correct = options.max(axis=1), options.argmax(axis=1) == arrays.gold_option
    else:
        topk = arrays.topk_probs
        if mode == "logit":
            topk = np.hstack([topk, np.clip(1 - topk.sum(axis=1, keepdims=True), 0, None)])
        conf, correct = scaled(topk)[:, 0], arrays.correct
    onehot = np.eye(options.shape[1])[arrays.gold_option]
    hit = np.maximum(options[np.arange(len(options)), arrays.gold_option], 2.0 ** -52)
    return conf, correct, ((options - onehot) ** 2).sum(axis=1).mean(), -np.log(hit).mean()


@pytest.mark.parametrize("mode", ["logit", "first"])
@pytest.mark.parametrize("convention", ["option", "paper"])
@pytest.mark.parametrize("c", [0.07, 0.5, 1.0, 4.0])
def test_slider_numbers_match_an_independent_transform(arrays, mode, convention, c):
    conf, correct, brier, nll = _reference_scaled(arrays, c, mode, convention)
    scaled = rescaling.rescale(arrays, c, mode, convention)
    np.testing.assert_allclose(scaled.confidence, conf, rtol=1e-12)
    np.testing.assert_array_equal(scaled.correct, correct)
    assert scaled.brier == pytest.approx(brier, rel=1e-12)
    assert scaled.nll == pytest.approx(nll, rel=1e-12)
    for strategy in ("uniform", "quantile"):
        cards = rescaling.calibration_view(arrays, c, mode, convention, 7, strategy, 0).cards
        assert cards["ece"] == pytest.approx(expected_calibration_error(
            conf, correct, 7, strategy), abs=1e-12)
        assert cards["mce"] == pytest.approx(maximum_calibration_error(
            conf, correct, 7, strategy), abs=1e-12)


def test_arrays_are_validated_once_and_the_slider_never_rechecks(arrays, monkeypatch):
    before = rescaling.calibration_view(arrays, 0.4, "first", "paper", n_boot=0).cards

    def refuse(*args, **kwargs):
        raise AssertionError("the slider path re-validated its input")

    for module in (checks, binning, point_scores, conventions, intervals):  # wherever bound
        for name in ("check_probs", "check_confidence", "check_correct", "check_labels"):
            if hasattr(module, name):
                monkeypatch.setattr(module, name, refuse)
    for mode, convention in (("first", "paper"), ("logit", "option"), ("logit", "paper")):
        rescaling.calibration_view(arrays, 0.4, mode, convention, n_boot=0)
    np.testing.assert_equal(rescaling.calibration_view(arrays, 0.4, "first", "paper",
                                                   n_boot=0).cards, before)


@pytest.mark.parametrize("field, value, word", [
    ("option_probs", np.array([[0.7, 0.5]]), "option_probs: row 0 sums"),
    ("option_probs", np.array([[np.nan, 0.5]]), "option_probs: contains NaN"),
    ("topk_probs", np.array([[1.5, 0.0]]), "topk_probs: probabilities must lie"),
    ("gold_option", np.array([2]), "gold_option: value 2"),
    ("correct", np.array([True, False]), "topk_probs: 1 rows, expected 2"),
])
def test_prediction_arrays_reject_bad_values_naming_the_field(field, value, word):
    good = {"topk_probs": np.array([[0.6, 0.3]]), "correct": np.array([True]),
            "option_probs": np.array([[0.6, 0.3]]), "gold_option": np.array([0])}
    with pytest.raises(ValueError, match=word):
        run_arrays.PredictionArrays(**(good | {field: value}))
    assert len(run_arrays.PredictionArrays(np.zeros((0, 2)), np.zeros(0, bool), np.zeros((0, 2)),
                                      np.zeros(0, int))) == 0  # an empty split is fine


def test_ece_moves_with_the_slider(arrays):
    eces = {c: rescaling.calibration_view(arrays, c, "first", "paper", n_boot=0).cards["ece"]
            for c in (0.1, 0.3, 1.0)}
    assert len(set(np.round(list(eces.values()), 6))) == 3


@pytest.mark.parametrize("mode,convention", [("logit", "option"), ("first", "paper")])
def test_best_temperature_is_the_argmin_over_the_grid(arrays, mode, convention):
    best = rescaling.best_temperature(arrays, mode, convention, n_bins=10)
    brute = []
    for c in view_state.TEMPERATURE_GRID:
        s = rescaling.rescale(arrays, float(c), mode, convention)
        brute.append(ref_ece(s.confidence, s.correct, 10))
    assert best == view_state.TEMPERATURE_GRID[int(np.argmin(brute))]


def test_rescale_rejects_unknown_mode_and_convention(arrays):
    with pytest.raises(ValueError, match="mode"):
        rescaling.rescale(arrays, 1.0, "softmax", "option")
    with pytest.raises(ValueError, match="convention"):
        rescaling.rescale(arrays, 1.0, "logit", "vocab")


@pytest.mark.parametrize("convention", ["option", "paper"])
@pytest.mark.parametrize("strategy", ["uniform", "quantile"])
def test_bin_members_are_the_rows_the_diagram_counts(arrays, convention, strategy):
    scaled = rescaling.rescale(arrays, 0.5, "logit", convention)
    view = rescaling.summarize(scaled, 8, strategy, n_boot=0)
    edges = np.r_[view.bins["lo"].to_numpy(), view.bins["hi"].iloc[-1]]
    for b in range(8):
        rows = example_rows.bin_members(scaled, 8, strategy, b)
        assert len(rows) == view.bins["count"].iloc[b]
        if len(rows):  # independent rule: (lo, hi], 0 in the first bin
            conf = scaled.confidence[rows]
            assert ((conf > edges[b]) | (b == 0)).all() and (conf <= edges[b + 1]).all()
            assert (np.diff(conf) <= 0).all()  # most confident first
            assert scaled.correct[rows].mean() == pytest.approx(view.bins["accuracy"].iloc[b])
    with pytest.raises(ValueError, match="bin"):
        example_rows.bin_members(scaled, 8, strategy, 8)


def test_bin_at_maps_a_clicked_bar_centre_to_its_bin():
    bins = rescaling.bins_frame(np.array([0.05, 0.55, 0.95]), np.array([True, False, True]), 10)
    assert example_rows.bin_at(bins, 0.95) == 9 and example_rows.bin_at(bins, 0.05) == 0
    assert example_rows.bin_at(bins, 1.5) is None
    assert example_rows.bin_at(bins, float("nan")) is None


def test_drilldown_lists_a_bins_examples_at_the_current_temperature(fixture_store, preds, arrays):
    scaled = rescaling.rescale(arrays, 2.0, "logit", "paper")
    rows = example_rows.bin_members(scaled, 10, "uniform", 5)
    examples = load_examples(fixture_store, split="test")
    runs = list_runs(fixture_store)
    teacher = load_predictions(fixture_store, tables.teacher_for(runs, preds["run_id"][0]),
                               "test", columns=["example_id", "topk_tokens", "topk_probs"])
    table = example_rows.drilldown_table(arrays, scaled, rows, "paper", preds, examples, teacher)
    assert list(table.columns) == list(example_rows.DRILL_COLUMNS) and len(table) == len(rows) > 0
    first = table.iloc[0]
    src = preds.set_index("example_id").loc[first["example_id"]]
    text = examples.set_index("example_id").loc[first["example_id"]]
    assert first["gold"] == src["gold"] and first["prediction"] == src["pred"]
    assert first["question"] == text["question"]
    assert first["options"].startswith(f"A: {text['choices'][0]} | B: ")
    assert first["confidence"] == pytest.approx(scaled.confidence[rows[0]])
    assert first["confidence"] != pytest.approx(src["confidence"])  # re-scaled, not stored
    top = teacher.set_index("example_id").loc[first["example_id"]]
    assert first["teacher_top5"].startswith(f"{top['topk_tokens'][0]!r} "
                                            f"{top['topk_probs'][0]:.1%}, ")
    bare = example_rows.drilldown_table(arrays, scaled, rows, "option", preds, examples.iloc[:0])
    assert bare["question"].isna().all() and bare["teacher_top5"].isna().all()
    assert bare.iloc[0]["prediction"] == src["pred_option"]


def test_smooth_ece_is_relplots_own_on_the_same_inputs(arrays):
    relplot = pytest.importorskip("relplot", reason="relplot not installed (requirements.txt)")
    scaled = rescaling.rescale(arrays, 0.7, "logit", "option")
    smooth = rescaling.smooth_calibration(scaled.confidence, scaled.correct)
    f, y = scaled.confidence, scaled.correct.astype(float)
    assert smooth.ece == pytest.approx(relplot.smECE(f, y), rel=1e-12)
    assert smooth.n_used == len(f)
    ref = relplot.prepare_rel_diagram(f, y, plot_confidence_band=False, report_CE_std=False)
    np.testing.assert_allclose(smooth.curve["x"], ref["mesh"])
    np.testing.assert_allclose(smooth.curve["y"], ref["mu"], rtol=1e-10)
    assert smooth.sigma == pytest.approx(ref["sigma"])


def test_smooth_ece_tells_calibrated_from_overconfident_and_samples_large_inputs():
    pytest.importorskip("relplot", reason="relplot not installed (requirements.txt)")
    rng = np.random.default_rng(3)
    conf = rng.uniform(0.3, 1.0, 6000)
    calibrated = rng.random(6000) < conf
    over = rng.random(6000) < conf - 0.2
    good, bad = (rescaling.smooth_calibration(conf, ok).ece for ok in (calibrated, over))
    assert good < 0.03 < 0.15 < bad < 0.25  # smECE of a 0.2 shift is about 0.2
    sampled = rescaling.smooth_calibration(conf, over, max_n=1000)
    rows = rescaling.smooth_sample(6000, 1000)
    assert sampled.n_used == 1000 and len(np.unique(rows)) == 1000
    assert sampled.ece == pytest.approx(rescaling.smooth_calibration(conf[rows], over[rows]).ece)
    with pytest.raises(ValueError, match="confidence"):
        rescaling.smooth_calibration(conf[:0], over[:0])


def test_format_interval():
    assert rescaling.format_interval(0.059, 0.0844) == "[5.9, 8.4]"
    assert rescaling.format_interval(float("nan"), float("nan")) is None


# ---------------------------------------------------------------- tables and filters

@pytest.fixture
def metric_rows() -> pd.DataFrame:
    rows = []
    for method, acc in (("first_ts", 0.7), ("teacher_ft", 0.9)):
        for seed in (0, 1):
            for split, shift in (("test", 0.0), ("test_ood", -0.1), ("val", 0.5)):
                for metric, value in (("accuracy", acc + shift + seed / 100), ("ece", 0.1),
                                      ("trust", acc + shift + seed / 100 - 0.1)):
                    rows.append({"run_id": f"{method}{seed}", "split": split, "seed": seed,
                                 "convention": "paper", "metric": metric, "value": value,
                                 "method": method})
    return pd.DataFrame(rows)


def test_headline_is_table_one_in_the_reports_cells(metric_rows):
    """Home's headline is the report's Table 1: percent with one decimal (trailing zeros
    kept), mean ± std over seeds, every column the report has (item 19)."""
    table, numbers = report.headline(metric_rows, "paper")
    assert table["method"].tolist() == ["teacher_ft", "first_ts"]  # METHODS order
    assert list(table.columns) == ["pipeline", "method", "seeds", "ID Acc", "ID ECE",
                                   "ID Trust", "OOD Acc", "OOD ECE", "OOD Trust"]
    assert table.loc[0, "OOD Acc"] == "80.5 ± 0.7"  # seeds 0.80, 0.81: std with ddof 1
    assert table.loc[0, "ID ECE"] == "10.0 ± 0.0"  # never "10"
    assert numbers.loc[(numbers["method"] == "teacher_ft") & (numbers["split"] == "test_ood")
                       & (numbers["metric"] == "accuracy"), "mean"].item() == pytest.approx(80.5)
    assert report.headline(metric_rows, "option")[0].columns.tolist() == ["pipeline", "method"]


def _two_pipelines(metric_rows: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The same runs in pipeline "a" and, 0.2 less accurate, in pipeline "b"."""
    other = metric_rows.assign(run_id="b-" + metric_rows["run_id"],
                               value=metric_rows["value"] - 0.2)
    rows = pd.concat([metric_rows, other], ignore_index=True)
    runs = pd.DataFrame({"run_id": rows["run_id"].unique()})
    runs["pipeline"] = np.where(runs["run_id"].str.startswith("b-"), "b", "a")
    return tables.with_pipeline(rows, runs), runs


def test_seeds_are_averaged_within_one_pipeline_only(metric_rows):
    rows, runs = _two_pipelines(metric_rows)
    assert tables.pipelines(runs) == ["a", "b"]
    table, _ = report.headline(rows, "paper")
    assert table[["pipeline", "method"]].values.tolist() == [
        ["a", "teacher_ft"], ["a", "first_ts"], ["b", "teacher_ft"], ["b", "first_ts"]]
    acc = table.set_index(["pipeline", "method"])["OOD Acc"]
    assert acc["a", "teacher_ft"] == "80.5 ± 0.7"       # seeds of "a" only
    assert acc["b", "teacher_ft"] == "60.5 ± 0.7"       # not (80.5 + 60.5) / 2
    only_b, _ = report.headline(rows, "paper", pipeline="b")
    assert set(only_b["pipeline"]) == {"b"} and len(only_b) == 2
    cmp = tables.compare_table(rows, "paper", pipeline=None)
    seeds = cmp[(cmp["metric"] == "accuracy") & (cmp["split"] == "test")]
    assert seeds["seeds"].tolist() == [2, 2, 2, 2]  # never 4: seeds of two pipelines
    assert tables.compare_table(rows, "paper", pipeline="a")["pipeline"].unique().tolist() == ["a"]


def test_compare_table_mean_std_and_seeds(metric_rows):
    table = tables.compare_table(metric_rows, "paper")
    row = table[(table["method"] == "first_ts") & (table["split"] == "test")
                & (table["metric"] == "accuracy")].iloc[0]
    assert row["mean"] == pytest.approx(0.705) and row["seeds"] == 2
    assert set(table["pipeline"]) == {tables.NO_PIPELINE}  # rows without runs' pipeline
    assert row["std"] == pytest.approx(np.std([0.70, 0.71], ddof=1))
    assert set(table["split"]) == {"test", "test_ood"}


def test_filters_pick_wrong_confident_and_right_unsure(preds):
    conf, ok = preds["confidence_option"], preds["correct_option"]
    wrong = example_rows.filter_predictions(preds, "wrong_confident", "option", confident=0.6)
    assert set(wrong.index) == set(preds.index[~ok & (conf >= 0.6)])
    assert wrong["confidence_option"].is_monotonic_decreasing
    unsure = example_rows.filter_predictions(preds, "right_unsure", "paper", unsure=0.5)
    assert set(unsure.index) == set(preds.index[preds["correct"] & (preds["confidence"] < 0.5)])
    assert len(example_rows.filter_predictions(preds, "all")) == len(preds)
    with pytest.raises(ValueError, match="kind"):
        example_rows.filter_predictions(preds, "DROP TABLE")


def test_teacher_for_prefers_the_same_pipeline():
    runs = pd.DataFrame({"run_id": ["a/t", "b/t", "b/s"],
                         "method": ["teacher_ft", "teacher_ft", "first_ts"],
                         "pipeline": ["a", "b", "b"]})
    assert tables.teacher_for(runs, "b/s") == "b/t"
    assert tables.teacher_for(runs[runs["method"] != "teacher_ft"], "b/s") is None
    imported = pd.concat([runs, pd.DataFrame({"run_id": ["x/imported/seed0"],
                                              "method": ["imported"], "pipeline": ["x"]})])
    assert tables.teacher_for(imported, "x/imported/seed0") is None  # another model's


def test_token_labels_show_spaces_and_find_gold():
    labels, gold = example_rows.token_labels([" A", " The", "B"], "B")
    assert labels == ["' A'", "' The'", "'B'"] and gold == "'B'"
    assert example_rows.token_labels([" A"], "C")[1] is None


def test_search_curves_long_format_and_chosen():
    search = pd.DataFrame({"kind": ["TS", "TS", "LS"], "value": [0.2, 0.3, 0.1],
                           "ece_val": [0.2, 0.1, 0.3], "ece_test": [0.25, 0.15, np.nan],
                           "chosen": [False, True, True]})
    curves, chosen = tables.search_curves(search)
    assert len(curves) == 5 and set(curves["series"]) == {"validation", "test"}
    assert chosen[["kind", "value", "ece"]].values.tolist() == [["TS", 0.3, 0.1],
                                                               ["LS", 0.1, 0.3]]


def test_parse_progress():
    assert tables.parse_progress("[3/12] topk ...\n") == (3, 12, "topk ...")
    assert tables.parse_progress("[seed 0, 1/3] 15 stages done in 41.2 s\n") == (
        1, 3, "seed 0: 15 stages done in 41.2 s")
    assert tables.parse_progress("loading") is None and tables.parse_progress("[1/0] x") is None


# ---------------------------------------------------------------- coverage arithmetic

def test_disk_usage_reproduces_terabytes_vs_gigabytes():
    disk = storage_math.disk_usage([1, 5], n_positions=1.875e9, vocab_size=32000, prob_bytes=2)
    assert disk["full_bytes"].iloc[0] == pytest.approx(120e12)
    assert disk["topk_bytes"].tolist() == pytest.approx([1.875e9 * 6, 1.875e9 * 30])
    assert storage_math.human_bytes(120e12) == "120 TB" and storage_math.human_bytes(999) == "999 B"
    with pytest.raises(ValueError, match="vocab_size"):
        storage_math.disk_usage([5], 10, 0, 2)


# ---------------------------------------------------------------- teaching page

def test_simulated_classifier_hits_accuracy_and_is_calibrated_at_s_one():
    probs, labels = teaching.simulate_classifier(0.7, 1.0, n=20000, seed=3)
    view = teaching.classifier_view(probs, labels)
    assert view.cards["accuracy"] == pytest.approx(0.7, abs=0.02)
    assert view.cards["ece"] < 0.02


def test_classic_scaling_with_c_equal_s_undoes_over_confidence():
    probs, labels = teaching.simulate_classifier(0.6, 2.5, n=20000, seed=4)
    raw = teaching.classifier_view(probs, labels)
    fixed = teaching.classifier_view(probs, labels, c=2.5, mode="logit")
    conf = probs.max(axis=1)
    assert raw.cards["ece"] == pytest.approx(ref_ece(conf, probs.argmax(1) == labels, 10))
    assert raw.cards["ece"] > 0.1 and fixed.cards["ece"] < 0.02
    assert raw.cards["accuracy"] == fixed.cards["accuracy"]


@pytest.mark.parametrize("kwargs,name", [({"accuracy": 0.2}, "accuracy"),
                                         ({"accuracy": 1.0}, "accuracy"),
                                         ({"overconfidence": 0.0}, "overconfidence")])
def test_simulated_classifier_rejects_bad_arguments(kwargs, name):
    args = {"accuracy": 0.7, "overconfidence": 1.0} | kwargs
    with pytest.raises(ValueError, match=name):
        teaching.simulate_classifier(**args)


def test_discrimination_keeps_accuracy_and_calibration_and_orders_auroc():
    from sklearn.metrics import roc_auc_score

    aurocs = []
    for d in (0.0, 0.4, 1.0):
        probs, labels = teaching.simulate_classifier(0.7, 1.0, n=20000, seed=3,
                                                     discrimination=d)
        view = teaching.classifier_view(probs, labels)
        assert view.cards["accuracy"] == pytest.approx(0.7, abs=0.02)
        assert view.cards["ece"] < 0.02
        conf, ok = probs.max(axis=1), probs.argmax(axis=1) == labels
        acting = teaching.classifier_selective(probs, labels)
        assert acting.auroc == pytest.approx(roc_auc_score(ok, conf))
        aurocs.append(acting.auroc)
        if d == 0:  # the base rate for every question: one tie group, AUROC 0.5, flat curve
            assert np.unique(conf).size == 1 and acting.auroc == 0.5
            assert np.ptp(acting.curve["risk"]) == 0
    assert aurocs[0] < aurocs[1] - 0.05 < aurocs[2] - 0.1


def test_discrimination_one_is_the_unchanged_classifier():
    a = teaching.simulate_classifier(0.6, 2.0, n=500, seed=1)
    b = teaching.simulate_classifier(0.6, 2.0, n=500, seed=1, discrimination=1.0)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    with pytest.raises(ValueError, match="discrimination"):
        teaching.simulate_classifier(0.6, 1.0, discrimination=1.5)


# ---------------------------------------------------------------- acting on the confidence

def test_selective_view_reorders_with_the_temperature_and_matches_references(arrays):
    """Re-scaling moves each row's confidence by its own amount: the curve is recomputed
    from the slider's confidences, and its numbers are sklearn's / a mask's."""
    from sklearn.metrics import roc_auc_score

    orders = []
    for c in (0.3, 3.0):
        scaled = rescaling.rescale(arrays, c, "first", "paper")
        conf, ok = scaled.confidence, scaled.correct
        view = selective.selective_view(conf, ok, 0.4)
        assert view.auroc == pytest.approx(roc_auc_score(ok, conf))
        answered = conf >= 0.4
        assert (view.at.answered, view.at.wrong) == (answered.sum(), (answered & ~ok).sum())
        assert view.base_risk == pytest.approx(1 - ok.mean())
        assert np.isfinite(view.intervals["auroc"]).all()  # small split: intervals shown
        orders.append(np.argsort(-conf, kind="stable"))
    assert not np.array_equal(*orders)  # the case the page has to handle
    big = np.random.default_rng(0).random(50_000)
    many = selective.selective_view(big, big > 0.5, 0.5, max_points=200)
    assert len(many.curve) <= 201 and np.isnan(many.intervals["aurc"]).all()  # above 5,000
    i, right = np.arange(1, 50_001), (big > 0.5).sum()  # a perfect ranker: wrong only at the end
    assert many.auroc == 1.0 and many.aurc == pytest.approx(np.mean(np.maximum(0, i - right) / i))


def test_selective_view_of_a_one_class_split_has_no_auroc():
    view = selective.selective_view(np.array([0.6, 0.8]), np.array([True, True]), 0.7)
    assert np.isnan(view.auroc) and view.aurc == 0.0
    assert selective.format_score(view.auroc) == "n/a"
    assert selective.format_range(float("nan"), 0.5) is None
    assert selective.format_range(0.61234, 0.7) == "[0.612, 0.700]"


# ---------------------------------------------------------------- instruction runs (issue 13)

@pytest.mark.parametrize("seeds, want", [(None, "runs/x"), ([3, 4], "runs/x/seed4")])
def test_instruct_run_dir_is_the_pipelines_run_dir(seeds, want):
    from first_core.config.settings import RunConfig
    from first_core.config.loading import load_config
    cfg = load_config(overrides=["data.kind='instruct'", "teacher_train.loss_on='response'",
                                 "student_train.loss_on='response'", "name='x'"])
    cfg = dataclasses.replace(cfg, seeds=seeds, seed=4)
    assert token_views.instruct_run_dir(json.dumps(cfg.to_dict())) == cfg.run_dir
    assert str(token_views.instruct_run_dir(cfg.to_dict())) == want
    assert token_views.instruct_run_dir(json.dumps(RunConfig(name="x").to_dict())) is None  # mc
    assert token_views.instruct_run_dir(None) is None
    assert token_views.instruct_run_dir('{"data": {"kind": "instruct"}}') is None  # no name


@pytest.fixture(scope="module")
def token_store(tmp_path_factory):
    from first_core.knowledge.token_topk import extract_token_topk
    from helpers.tiny_instruct import make_examples, make_model
    folder = tmp_path_factory.mktemp("tokens")
    examples = make_examples(folder, n=12)
    model, tok = make_model(examples)
    extract_token_topk(model, tok, examples, folder / "s", k=3, coverage_k=3, shard_size=20,
                       batch_size=4, max_length=64)
    return folder / "s", examples, tok


def test_token_example_ids_are_the_stores_examples_in_order(token_store):
    from first_core.knowledge.manifest import TOKENS
    from first_core.knowledge.reader import load_topk
    path, examples, _ = token_store
    assert len(load_topk(path, layout=TOKENS).manifest.shards) > 1  # examples cross shard borders
    assert token_views.token_example_ids(path) == [e.id for e in examples]


def test_token_view_table_shows_each_token_before_and_after(token_store):
    path, examples, tok = token_store
    view = token_views.token_topk_view(path, examples[2].id, 0.5, tokenizer=tok)
    table = token_views.token_view_table(view, 0.5)
    assert table["token"].tolist() == view["token"].tolist()
    assert list(table.columns[-2:]) == ["teacher top-k (raw)", "after FIRST, c = 0.5"]
    first = view.iloc[0]
    assert table.iloc[0, -2] == ", ".join(f"{t!r} {p:.1%}" for t, p in
                                          zip(first["topk_tokens"], first["raw_probs"]))
    assert table.iloc[0, -1] == ", ".join(f"{t!r} {p:.1%}" for t, p in
                                          zip(first["topk_tokens"], first["first_probs"]))
    ranks = table["rank in top-k"].tolist()
    assert ranks == [str(r + 1) if r >= 0 else "-" for r in view["gold_rank"]]
    no_tok = token_views.token_view_table(
        token_views.token_topk_view(path, examples[2].id, 0.5), 0.5)
    assert no_tok["token"].tolist() == [str(i) for i in view["token_id"]]


# ---------------------------------------------------------------- the store's own run folders

def _instruct_config(runs_dir, name: str = "x") -> dict:
    from first_core.config.loading import load_config
    return load_config(overrides=["data.kind='instruct'", "teacher_train.loss_on='response'",
                                  "student_train.loss_on='response'", f"name='{name}'",
                                  f"runs_dir='{runs_dir}'"]).to_dict()


def _run_folder(folder, config: dict, shard: str = "part-r000-00000.parquet"):
    """A run folder as the pipeline leaves it, as far as `own_run_folder` looks."""
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(config))
    for split in ("train", "val"):
        store_dir = folder / "topk" / split
        store_dir.mkdir(parents=True)
        (store_dir / "part-r000-00000.parquet").write_bytes(b"")
        (store_dir / "manifest.json").write_text(json.dumps({"shards": [{"file": shard,
                                                                          "rows": 1}]}))
    return folder


def test_own_run_folder_reads_the_runs_own_folder_only(tmp_path):
    cfg = _instruct_config(tmp_path / "runs")
    folder = _run_folder(tmp_path / "runs" / "x", cfg)
    got = token_views.own_run_folder(json.dumps(cfg), [tmp_path])
    assert got.root == folder.resolve() and got.val == (folder / "topk" / "val").resolve()
    assert got.tokenizer is None  # no teacher folder: token ids instead of text
    (folder / "models" / "teacher_ft" / "final").mkdir(parents=True)
    assert token_views.own_run_folder(cfg, [tmp_path]).tokenizer is not None
    assert token_views.own_run_folder(dict(cfg, store="other.duckdb"), [tmp_path]).root  # store
    with pytest.raises(token_views.RunFolderError, match="outside the folders"):
        token_views.own_run_folder(cfg, [tmp_path / "runs" / "y"])
    with pytest.raises(token_views.RunFolderError, match="not this run's config"):
        token_views.own_run_folder(dict(cfg, seed=9), [tmp_path])
    with pytest.raises(FileNotFoundError):
        token_views.own_run_folder(_instruct_config(tmp_path / "runs", "gone"), [tmp_path])
    assert token_views.own_run_folder(json.dumps({"name": "x"}), [tmp_path]) is None  # mc


@pytest.mark.parametrize("shard", ["../../../etc/passwd", "/etc/passwd", "..", "", "a/b"])
def test_own_run_folder_refuses_shards_listed_outside_the_store(tmp_path, shard):
    cfg = _instruct_config(tmp_path / "runs")
    _run_folder(tmp_path / "runs" / "x", cfg, shard=shard)
    with pytest.raises(token_views.RunFolderError, match="not a plain file name"):
        token_views.own_run_folder(cfg, [tmp_path])


def test_own_run_folder_refuses_a_shard_symlinked_out(tmp_path):
    cfg = _instruct_config(tmp_path / "runs")
    folder = _run_folder(tmp_path / "runs" / "x", cfg)
    shard = folder / "topk" / "val" / "part-r000-00000.parquet"
    shard.unlink()
    shard.symlink_to(tmp_path / "secret.parquet")
    with pytest.raises(token_views.RunFolderError, match="outside"):
        token_views.own_run_folder(cfg, [tmp_path])
