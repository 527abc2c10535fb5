"""first_core.metrics (binning, point scores, conventions, intervals) against independent
implementations (scikit-learn, torchmetrics, netcal).

torchmetrics and netcal use left-closed bins [a, b) where we (and scikit-learn) use (a, b], and
torchmetrics gives a confidence of exactly 1.0 a bin of its own; comparisons with them use
confidences away from inner edges and below 1 (0 included), while the scikit-learn comparison
deliberately puts values exactly on the edges, 0 and 1.
"""

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from netcal.metrics import ECE as NetcalECE
from netcal.metrics import MCE as NetcalMCE
from sklearn.calibration import calibration_curve
from sklearn.metrics import brier_score_loss, log_loss
from torchmetrics.functional.classification import (binary_calibration_error,
                                                    multiclass_calibration_error)

from first_core.metrics.binning import (expected_calibration_error, maximum_calibration_error,
                                        reliability_bins, uniform_bin_ids)
from first_core.metrics.checks import row_reduce
from first_core.metrics.conventions import option_convention, paper_convention, topk_labels
from first_core.metrics.intervals import bootstrap_interval
from first_core.metrics.point_scores import (accuracy, brier_score, negative_log_likelihood,
                                             proper_score_sums, trust_score)
from first_core.metrics import resampling
from first_core.errors import ConfigError

SETTINGS = settings(max_examples=60, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])
seeds = st.integers(0, 2**32 - 1)
n_bins_st = st.integers(1, 25)


def sample(seed: int, n: int, n_bins: int, on_edges: bool):
    """Confidences with ties and exact 0; with `on_edges`, also exact 1 and values on edges."""
    rng = np.random.default_rng(seed)
    conf = rng.random(n)
    pick = rng.random(n)
    conf[pick < 0.15] = np.round(conf[pick < 0.15], 1)  # ties
    ends = (pick >= 0.15) & (pick < 0.2)
    conf[ends] = rng.choice([0.0, 1.0] if on_edges else [0.0], ends.sum())
    edges = np.linspace(0, 1, n_bins + 1)
    if on_edges:
        at = (pick >= 0.2) & (pick < 0.4)
        conf[at] = rng.choice(edges, at.sum())
    else:  # nudge anything near an inner edge away from it
        q = conf * n_bins
        near = (np.abs(q - np.round(q)) < 1e-6) & (conf > 0) & (conf < 1)
        conf[near] = (np.floor(q[near]) + 0.5) / n_bins
        conf[conf == 1.0] = 1 - 0.5 / n_bins  # rounding made some
    return conf, rng.random(n) < conf


@SETTINGS
@given(seeds, st.integers(1, 400), n_bins_st, st.sampled_from(["uniform", "quantile"]))
def test_bins_match_sklearn_calibration_curve_including_edges(seed, n, n_bins, strategy):
    conf, ok = sample(seed, n, n_bins, on_edges=True)
    bins = reliability_bins(conf, ok, n_bins, strategy)
    prob_true, prob_pred = calibration_curve(ok, conf, n_bins=n_bins, strategy=strategy)
    full = bins.count > 0
    np.testing.assert_allclose(bins.accuracy[full], prob_true, rtol=1e-12, atol=0)
    np.testing.assert_allclose(bins.confidence[full], prob_pred, rtol=1e-12, atol=0)
    assert bins.count.sum() == n and np.isnan(bins.accuracy[~full]).all()
    np.testing.assert_allclose(bins.gap[full], prob_pred - prob_true, atol=1e-12)
    # ECE is the count-weighted mean |gap| of these very bins
    assert expected_calibration_error(conf, ok, n_bins, strategy) == pytest.approx(
        np.sum(bins.count[full] / n * np.abs(bins.gap[full])), abs=1e-12)


def test_edge_values_go_to_the_lower_bin_like_sklearn_not_torchmetrics():
    conf = np.array([0.0, 0.1, 0.5, 0.5000001, 1.0])
    ok = np.array([True, False, True, False, True])
    bins = reliability_bins(conf, ok, n_bins=10)
    assert list(np.flatnonzero(bins.count)) == [0, 4, 5, 9]  # 0.1 in (0, .1]; 0.5 in (.4, .5]
    tm = binary_calibration_error(torch.tensor(conf), torch.tensor(ok).long(), n_bins=10)
    assert float(tm) != pytest.approx(expected_calibration_error(conf, ok))


@SETTINGS
@given(seeds, st.integers(1, 400), n_bins_st)
def test_ece_and_mce_match_torchmetrics_binary_away_from_edges(seed, n, n_bins):
    conf, ok = sample(seed, n, n_bins, on_edges=False)
    c, t = torch.tensor(conf), torch.tensor(ok).long()
    ece = binary_calibration_error(c, t, n_bins=n_bins, norm="l1")
    mce = binary_calibration_error(c, t, n_bins=n_bins, norm="max")
    assert expected_calibration_error(conf, ok, n_bins) == pytest.approx(float(ece), abs=1e-9)
    assert maximum_calibration_error(conf, ok, n_bins) == pytest.approx(float(mce), abs=1e-9)


@SETTINGS
@given(seeds, st.integers(6, 300), st.integers(2, 6), st.integers(1, 20))
def test_multiclass_ece_matches_torchmetrics_and_netcal(seed, n, k, n_bins):
    rng = np.random.default_rng(seed)
    probs = rng.dirichlet(np.full(k, 0.5), n)
    labels = rng.integers(0, k, n)
    labels[:k] = np.arange(k)  # netcal infers the number of classes from the labels seen
    conf, ok = probs.max(axis=1), probs.argmax(axis=1) == labels
    q = conf * n_bins
    if (np.abs(q - np.round(q)) < 1e-6).any():  # these references bin edges the other way
        return
    ours = expected_calibration_error(conf, ok, n_bins)
    tm = multiclass_calibration_error(torch.tensor(probs), torch.tensor(labels), num_classes=k,
                                      n_bins=n_bins, norm="l1")
    assert ours == pytest.approx(float(tm), abs=1e-6)  # torchmetrics computes in float32 here
    if k == 2:  # netcal calibrates class 1's probability for two classes, not the top label
        return
    assert ours == pytest.approx(NetcalECE(bins=n_bins).measure(probs, labels), abs=1e-9)
    assert maximum_calibration_error(conf, ok, n_bins) == pytest.approx(
        NetcalMCE(bins=n_bins).measure(probs, labels), abs=1e-9)


@pytest.mark.parametrize("n_bins", [1, 2, 3, 7, 9, 10, 15, 30, 97, 1000])
def test_uniform_bin_ids_equal_searchsorted_on_and_next_to_every_edge(n_bins):
    # the floor-and-one-comparison shortcut against scikit-learn's rule, at the floats where
    # rounding of conf * n_bins could put a value in the wrong bin
    edges = np.linspace(0, 1, n_bins + 1)
    near = np.concatenate([edges, np.nextafter(edges, 2), np.nextafter(edges, -1),
                           np.random.default_rng(n_bins).random(5000)])
    conf = near[(near >= 0) & (near <= 1)]
    np.testing.assert_array_equal(uniform_bin_ids(conf, n_bins),
                                  np.searchsorted(edges[1:-1], conf))


@settings(max_examples=30, deadline=None)
@given(seeds, st.integers(1, 300), n_bins_st, st.sampled_from(["uniform", "quantile"]))
def test_unchecked_paths_give_the_checked_numbers(seed, n, n_bins, strategy):
    conf, ok = sample(seed, n, n_bins, on_edges=True)
    for fn in (expected_calibration_error, maximum_calibration_error):
        assert fn(conf, ok, n_bins, strategy, check=False) == fn(conf, ok, n_bins, strategy)
    bins = reliability_bins(conf, ok, n_bins, strategy, check=False)
    assert bins.ece == pytest.approx(expected_calibration_error(conf, ok, n_bins, strategy),
                                     abs=1e-12)
    assert bins.mce == maximum_calibration_error(conf, ok, n_bins, strategy)
    assert accuracy(ok, check=False) == accuracy(ok)
    probs = np.random.default_rng(seed).dirichlet(np.ones(3), n)
    labels = np.random.default_rng(seed + 1).integers(0, 3, n)
    for fn in (brier_score, negative_log_likelihood):
        assert fn(probs, labels, check=False) == fn(probs, labels)


@SETTINGS
@given(seeds, st.integers(1, 200), st.integers(2, 8), st.floats(0.1, 10.0))
def test_proper_score_sums_match_sklearn_on_unnormalised_columns(seed, n, k, scale):
    rng = np.random.default_rng(seed)
    weights = rng.random((k, n)) * scale  # k x N, columns sum to anything
    labels = rng.integers(0, k, n)
    probs = (weights / weights.sum(axis=0)).T
    brier, nll = proper_score_sums(weights, weights.sum(axis=0), weights[labels, np.arange(n)])
    assert brier == pytest.approx(
        n * brier_score_loss(labels, probs, labels=range(k), scale_by_half=False), rel=1e-12)
    assert nll == pytest.approx(n * log_loss(labels, probs, labels=range(k)), rel=1e-12)


@pytest.mark.parametrize("shape", [(50, 1), (50, 5), (3, 20, 7), (40, 12)])
def test_row_reduce_equals_numpy_reductions(shape):
    x = np.random.default_rng(0).random(shape)
    np.testing.assert_array_equal(row_reduce(np.maximum, x), x.max(axis=-1))
    if shape[-1] <= 8:  # same order of additions: the same floats
        np.testing.assert_array_equal(row_reduce(np.add, x), x.sum(axis=-1))
    np.testing.assert_allclose(row_reduce(np.add, x), x.sum(axis=-1), rtol=1e-14)


def test_single_example_and_all_in_one_bin():
    assert expected_calibration_error([0.7], [True]) == pytest.approx(0.3)
    assert maximum_calibration_error([0.7], [False]) == pytest.approx(0.7)
    assert expected_calibration_error([1.0, 1.0], [True, True]) == 0.0
    assert expected_calibration_error([0.0, 0.0], [False, False]) == 0.0


@settings(max_examples=10, deadline=None)
@given(seeds)
def test_ece_of_a_perfectly_calibrated_sample_goes_to_zero(seed):
    rng = np.random.default_rng(seed)

    def ece(n):
        conf = rng.random(n)
        return expected_calibration_error(conf, rng.random(n) < conf)

    small, large = ece(500), ece(200_000)
    assert large < 0.01 and large < small


@SETTINGS
@given(seeds, st.integers(1, 200), st.integers(2, 8))
def test_brier_and_nll_match_sklearn(seed, n, k):
    rng = np.random.default_rng(seed)
    probs = rng.dirichlet(np.full(k, 0.7), n)
    labels = rng.integers(0, k, n)
    assert brier_score(probs, labels) == pytest.approx(
        brier_score_loss(labels, probs, labels=range(k), scale_by_half=False), rel=1e-12)
    assert negative_log_likelihood(probs, labels) == pytest.approx(
        log_loss(labels, probs, labels=range(k)), rel=1e-12)


def test_accuracy_and_trust_score():
    assert accuracy([True, False, True, True]) == 0.75
    assert accuracy(np.array([1, 0])) == 0.5
    assert trust_score(0.8, 0.07) == pytest.approx(0.73)


def test_conventions():
    topk = np.array([[0.6, 0.3], [0.5, 0.4], [0.2, 0.7]])
    ids = np.array([[11, 12], [12, 11], [13, 11]])
    gold = np.array([11, 11, 11])
    paper = paper_convention(topk, ids, gold)
    assert paper.pred.tolist() == [11, 12, 11]
    assert paper.confidence.tolist() == [0.6, 0.5, 0.7]
    assert paper.correct.tolist() == [True, False, True]
    assert topk_labels(ids, np.array([12, 99, 11])).tolist() == [1, -1, 1]
    options = np.array([[0.2, 0.2], [0.1, 0.3]])  # raw letter probabilities
    opt = option_convention(options, [1, 1])
    assert opt.pred.tolist() == [0, 1]  # a tie goes to the first option
    np.testing.assert_allclose(opt.confidence, [0.5, 0.75])
    assert opt.correct.tolist() == [False, True]


# ---------------------------------------------------------------- bootstrap


def _reference_bootstrap(fn, arrays, n_boot, seed, **kw):
    """A plain loop: same resampled indices, each resample scored by the metric itself."""
    n = len(arrays[0])
    idx = np.random.default_rng(seed).integers(0, n, size=(n_boot, n))
    values = [fn(*(a[i] for a in arrays), **kw) for i in idx]
    return np.quantile(values, [0.025, 0.975])


def _trust(conf, ok, n_bins=10):
    return trust_score(accuracy(ok), expected_calibration_error(conf, ok, n_bins))


@pytest.mark.parametrize("name, fn", [("ece", expected_calibration_error),
                                      ("mce", maximum_calibration_error),
                                      ("trust", _trust), ("accuracy", accuracy),
                                      ("brier", brier_score),
                                      ("nll", negative_log_likelihood)])
def test_bootstrap_equals_a_loop_over_resamples(name, fn):
    rng = np.random.default_rng(3)
    n = 300
    probs = rng.dirichlet(np.ones(4), n)
    labels = rng.integers(0, 4, n)
    conf, ok = probs.max(axis=1), probs.argmax(axis=1) == labels
    arrays = {"accuracy": (ok,), "brier": (probs, labels), "nll": (probs, labels)}.get(
        name, (conf, ok))
    kw = {"n_bins": 7} if name in ("ece", "mce", "trust") else {}
    point, low, high = bootstrap_interval(name, *arrays, n_boot=150, seed=5, **kw)
    assert point == pytest.approx(fn(*arrays, **kw), abs=1e-12)
    np.testing.assert_allclose([low, high], _reference_bootstrap(fn, arrays, 150, 5, **kw),
                               atol=1e-12)


def test_bootstrap_is_deterministic_chunked_and_accepts_functions(monkeypatch):
    rng = np.random.default_rng(0)
    conf = rng.random(2000)
    ok = rng.random(2000) < conf
    a = bootstrap_interval(expected_calibration_error, conf, ok, n_boot=300, seed=1)
    assert a == bootstrap_interval("ece", conf, ok, n_boot=300, seed=1)
    assert a != bootstrap_interval("ece", conf, ok, n_boot=300, seed=2)
    assert a[1] <= a[2]
    monkeypatch.setattr(resampling, "_BOOT_CELLS", 2000 * 7)  # 7 resamples per chunk
    chunked = bootstrap_interval("ece", conf, ok, n_boot=300, seed=1)
    assert chunked[0] == a[0] and chunked[1] <= chunked[2]


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize("args, kwargs, word", [
    (([0.1, 0.2], [True]), {}, "correct"),
    (([0.1, np.nan], [True, False]), {}, "confidence"),
    (([0.1, np.inf], [True, False]), {}, "confidence"),
    (([0.1, 1.5], [True, False]), {}, "confidence"),
    (([-0.1, 0.5], [True, False]), {}, "confidence"),
    (([], []), {}, "confidence"),
    (([0.1, 0.5], [True, 2]), {}, "correct"),
    (([0.1, 0.5], [True, False]), {"n_bins": 0}, "n_bins"),
    (([0.1, 0.5], [True, False]), {"n_bins": 2.5}, "n_bins"),
    (([0.1, 0.5], [True, False]), {"strategy": "equal"}, "strategy"),
])
def test_bad_calibration_input_names_the_argument(args, kwargs, word):
    for fn in (expected_calibration_error, maximum_calibration_error, reliability_bins):
        with pytest.raises(ValueError, match=word):
            fn(*args, **kwargs)


@pytest.mark.parametrize("probs, labels, word", [
    ([[0.5, 0.5]], [0, 1], "labels"),
    ([[0.5, 0.5]], [2], "labels"),
    ([[0.5, 0.5]], [-1], "labels"),
    ([[0.7, 0.5]], [0], "probs"),
    ([[np.nan, 0.5]], [0], "probs"),
    ([[1.2, -0.2]], [0], "probs"),
    (np.zeros((0, 3)), [], "probs"),
    ([0.5, 0.5], [0, 1], "probs"),
])
def test_bad_probability_input_names_the_argument(probs, labels, word):
    for fn in (brier_score, negative_log_likelihood):
        with pytest.raises(ValueError, match=word):
            fn(probs, labels)


def test_bad_bootstrap_settings():
    with pytest.raises(ConfigError, match="metric"):
        bootstrap_interval(np.mean, [0.5], [True])
    with pytest.raises(ConfigError, match="n_boot"):
        bootstrap_interval("ece", [0.5], [True], n_boot=0)
    with pytest.raises(ConfigError, match="level"):
        bootstrap_interval("ece", [0.5], [True], level=1.0)
    with pytest.raises(ValueError, match="correct"):
        accuracy([])
