"""first_core.metrics.selective against independent references: scikit-learn's roc_auc_score
for AUROC, plain Python loops over tie groups for the risk-coverage curve and AURC."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sklearn.metrics import roc_auc_score

from first_core.metrics.intervals import bootstrap_interval
from first_core.metrics import selective as S
from first_core.errors import ConfigError
from first_core.kernels.sort import sort_nonnegative

SETTINGS = settings(max_examples=60, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])
seeds = st.integers(0, 2**32 - 1)


def sample(seed: int, n: int, decimals: int | None):
    """Confidences (rounded to `decimals` for many ties, with exact 0 and 1) and correctness
    that depends on them; both classes present."""
    rng = np.random.default_rng(seed)
    conf = rng.random(n)
    if decimals is not None:
        conf = np.round(conf, decimals)
    ends = rng.random(n) < 0.05
    conf[ends] = rng.choice([0.0, 1.0], ends.sum())
    ok = rng.random(n) < conf
    ok[0], ok[-1] = True, False
    return conf, ok


def reference_aurc(conf, ok) -> float:
    """O(n^2) loop: item i takes the error rate among every item at least as confident."""
    risks = []
    for c in conf:
        answered = [not y for x, y in zip(conf, ok) if x >= c]
        risks.append(sum(answered) / len(answered))
    return sum(risks) / len(risks)


def reference_curve(conf, ok):
    """(coverage, risk) per distinct confidence, most confident first, by a plain loop."""
    points = []
    for t in sorted(set(conf.tolist()), reverse=True):
        answered = [y for x, y in zip(conf, ok) if x >= t]
        points.append((len(answered) / len(conf), 1 - sum(answered) / len(answered)))
    return np.array(points)


@SETTINGS
@given(seeds, st.integers(2, 300), st.sampled_from([None, 0, 1, 2]))
def test_auroc_matches_sklearn_including_ties(seed, n, decimals):
    conf, ok = sample(seed, n, decimals)
    assert S.auroc(conf, ok) == pytest.approx(roc_auc_score(ok, conf), abs=1e-12)


@SETTINGS
@given(seeds, st.integers(1, 120), st.sampled_from([None, 0, 1, 2]))
def test_aurc_and_curve_match_plain_loops_over_tie_groups(seed, n, decimals):
    conf, ok = sample(seed, n, decimals) if n > 1 else (np.array([0.3]), np.array([True]))
    assert S.aurc(conf, ok) == pytest.approx(reference_aurc(conf, ok), abs=1e-12)
    curve = S.risk_coverage(conf, ok)
    np.testing.assert_allclose(np.c_[curve.coverage, curve.risk], reference_curve(conf, ok),
                               atol=1e-12)


@SETTINGS
@given(seeds, st.integers(2, 200), st.sampled_from([0, 1, 2]))
def test_nothing_depends_on_the_input_order_under_ties(seed, n, decimals):
    conf, ok = sample(seed, n, decimals)
    order = np.random.default_rng(seed + 1).permutation(n)
    assert S.aurc(conf[order], ok[order]) == S.aurc(conf, ok)
    assert S.auroc(conf[order], ok[order]) == S.auroc(conf, ok)
    a, b = S.risk_coverage(conf, ok), S.risk_coverage(conf[order], ok[order])
    for name in ("threshold", "answered", "wrong"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))


def test_the_tie_convention_is_the_group_risk():
    # four items tied at 0.9 (one wrong) above one wrong at 0.1: every tied item takes the
    # group's risk 1/4, whichever order they come in; the last takes 2/5
    conf = [0.9, 0.9, 0.9, 0.9, 0.1]
    for ok in ([False, True, True, True, False], [True, True, True, False, False]):
        assert S.aurc(conf, ok) == pytest.approx((4 * 0.25 + 0.4) / 5)
        assert S.auroc(conf, ok) == pytest.approx((3 * 1.5) / (3 * 2))  # ties count half


def test_known_values_and_extremes():
    conf = np.array([0.9, 0.8, 0.7, 0.6])
    assert S.auroc(conf, [True, True, False, False]) == 1.0
    assert S.auroc(conf, [False, False, True, True]) == 0.0
    assert S.auroc(np.full(4, 0.7), [True, False, True, False]) == 0.5  # base rate only
    assert S.aurc(conf, [True, True, False, False]) == pytest.approx((0 + 0 + 1 / 3 + 1 / 2) / 4)
    assert S.aurc(conf, [True] * 4) == 0.0 and S.aurc(conf, [False] * 4) == 1.0
    for ok in ([True] * 4, [False] * 4):
        with pytest.raises(ValueError, match="both right and wrong"):
            S.auroc(conf, ok)


def test_selective_accuracy_coverage_at_accuracy_and_threshold():
    conf = np.array([0.95, 0.9, 0.9, 0.8, 0.6, 0.4])
    ok = np.array([True, True, False, True, True, False])
    assert S.selective_accuracy(conf, ok, 1 / 6) == 1.0
    assert S.selective_accuracy(conf, ok, 0.25) == pytest.approx(2 / 3)  # the tie enters whole
    assert S.selective_accuracy(conf, ok, 0.5) == pytest.approx(2 / 3)
    assert S.selective_accuracy(conf, ok, 1.0) == pytest.approx(4 / 6)
    assert S.coverage_at_accuracy(conf, ok, 0.75) == pytest.approx(5 / 6)  # 4 of 5 right
    assert S.coverage_at_accuracy(conf, ok, 1.0) == pytest.approx(1 / 6)
    assert S.coverage_at_accuracy(np.full(3, 0.5), [True, False, False], 0.9) == 0.0
    at = S.risk_coverage(conf, ok).at(0.9)
    assert (at.answered, at.wrong, at.deferred) == (3, 1, 3)
    assert at.coverage == 0.5 and at.accuracy == pytest.approx(2 / 3)
    none = S.risk_coverage(conf, ok).at(0.99)
    assert none.answered == 0 and np.isnan(none.accuracy) and none.deferred == 6
    assert S.risk_coverage(conf, ok).at(0.0).answered == 6


@SETTINGS
@given(seeds, st.integers(2, 200), st.floats(0, 1))
def test_threshold_counts_equal_a_mask(seed, n, t):
    conf, ok = sample(seed, n, 2)
    at = S.risk_coverage(conf, ok).at(t)
    answered = conf >= t
    assert at.answered == answered.sum() and at.wrong == (answered & ~ok).sum()


def test_bad_input_names_the_argument():
    for fn in (S.auroc, S.aurc, S.risk_coverage):
        with pytest.raises(ValueError, match="confidence"):
            fn([0.2, np.nan], [True, False])
        with pytest.raises(ValueError, match="correct"):
            fn([0.2, 0.3], [True])
    with pytest.raises(ConfigError, match="coverage"):
        S.selective_accuracy([0.2, 0.3], [True, False], 0.0)
    with pytest.raises(ConfigError, match="target"):
        S.coverage_at_accuracy([0.2, 0.3], [True, False], 1.5)
    with pytest.raises(ConfigError, match="t:"):
        S.risk_coverage([0.2, 0.3], [True, False]).at(float("nan"))


def test_curve_for_plots_is_downsampled_and_keeps_both_ends():
    rng = np.random.default_rng(0)
    conf = rng.random(50_000)
    ok = rng.random(50_000) < conf
    full = S.risk_coverage(conf, ok)
    small = full.curve(max_points=300)
    assert len(small["coverage"]) <= 301
    assert small["coverage"][0] == 0 and small["coverage"][-1] == 1.0
    assert small["risk"][-1] == pytest.approx(1 - ok.mean())
    assert np.all(np.diff(small["coverage"]) >= 0)
    assert np.all(np.diff(small["threshold"]) <= 0)
    assert len(full.curve()["coverage"]) == len(full.answered) + 1


def test_bootstrap_equals_a_loop_over_resamples_and_skips_one_class_resamples():
    rng = np.random.default_rng(4)
    n = 40
    conf = np.round(rng.random(n), 1)
    ok = np.zeros(n, bool)
    ok[[3, 17]] = True  # two right answers: about one resample in eight has none
    got = S.bootstrap_intervals(conf, ok, n_boot=300, seed=5)
    idx = np.random.default_rng(5).integers(0, n, size=(300, n))  # metrics' resamples
    ref_aurc = [S.aurc(conf[i], ok[i]) for i in idx]
    ref_auroc = [S.auroc(conf[i], ok[i]) for i in idx if 0 < ok[i].sum() < n]
    assert len(ref_auroc) < 300  # the case this test is about
    assert got["aurc"] == pytest.approx((S.aurc(conf, ok), *np.quantile(ref_aurc, [.025, .975])),
                                        abs=1e-12)
    assert got["auroc"] == pytest.approx(
        (S.auroc(conf, ok), *np.quantile(ref_auroc, [.025, .975])), abs=1e-12)
    # the same resamples as the ECE interval with the same seed
    assert bootstrap_interval("accuracy", ok, n_boot=300, seed=5)[1:] == pytest.approx(
        tuple(np.quantile([ok[i].mean() for i in idx], [.025, .975])), abs=1e-12)


def test_bootstrap_of_a_one_class_sample_has_no_auroc():
    got = S.bootstrap_intervals([0.6, 0.7, 0.9], [True, True, True], n_boot=50)
    assert all(np.isnan(v) for v in got["auroc"])
    assert got["aurc"] == (0.0, 0.0, 0.0)
    with pytest.raises(ConfigError, match="n_boot"):
        S.bootstrap_intervals([0.6, 0.7], [True, False], n_boot=0)


@settings(max_examples=30, deadline=None)
@given(st.lists(st.integers(0, 2**63 - 1), max_size=3000), seeds)
def test_radix_sort_equals_numpy_sort(values, seed):
    keys = np.array(values, dtype=np.int64)
    rng = np.random.default_rng(seed)  # and keys that share their leading bytes
    narrow = (np.float64(0.5) + rng.random(200) / 1e6).view(np.int64) << 1
    for k in (keys, narrow, np.zeros(5, np.int64)):
        np.testing.assert_array_equal(sort_nonnegative(k), np.sort(k))
    with pytest.raises(ValueError, match="non-negative"):
        sort_nonnegative(np.array([3, -1]))
