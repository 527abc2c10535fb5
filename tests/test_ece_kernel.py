"""first_core.kernels.ece: the compiled ECE-vs-parameter kernel against the numpy reference.

The reference is the numpy implementation the kernel replaced (copied below as it was:
blocked exp, `searchsorted` bins with scikit-learn's rule, `bincount` sums) and, for every
value separately, the public transforms. Inputs include confidences that sit exactly on bin
edges (all-equal rows give 1/k, classic rows with zeros give 1.0), where a bin rule that is off
by one shows up as a large ECE difference.
"""

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from first_core.calibration import transforms as C
from first_core.kernels import ece as K
from first_core.metrics.binning import expected_calibration_error, reliability_bins
from first_core.views import rescaling, run_arrays

SETTINGS = settings(max_examples=60, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])
seeds = st.integers(0, 2**32 - 1)
grids = st.lists(st.floats(0.01, 50.0), min_size=1, max_size=12)


# ---------------------------------------------------------------- the numpy reference


def ref_bins(conf: np.ndarray, n_bins: int) -> np.ndarray:
    """scikit-learn's `calibration_curve` rule: right-closed bins, 0 in the first."""
    return np.searchsorted(np.linspace(0.0, 1.0, n_bins + 1)[1:-1], conf)


def ref_ece(conf: np.ndarray, correct: np.ndarray, n_bins: int) -> float:
    sums = np.bincount(ref_bins(conf, n_bins), weights=correct - conf, minlength=n_bins)
    return float(np.abs(sums).sum() / len(conf))


def ref_ts_curve(p, labels, cs, mode, n_bins):
    """The numpy curve before the kernel: 1 / (1 + sum exp(gap / c)), binned per c."""
    top = np.argmax(p, axis=1)[:, None] == np.arange(p.shape[1])
    correct = (np.argmax(p, axis=1) == labels).astype(np.float64)
    z = p if mode == "first" else np.log(np.where(p > 0, p, 0.0), where=p > 0,
                                         out=np.full_like(p, -np.inf))
    gaps = (z - z.max(axis=1, keepdims=True))[~top].reshape(len(p), -1)
    out = []
    for c in cs:
        conf = 1.0 / (1.0 + np.exp(gaps / c).sum(axis=1))
        out.append(ref_ece(conf, correct, n_bins))
    return np.array(out)


def renorm(p):
    """p / sum(p) as the public transform makes it: the same bits decide a bin on an edge
    (1/6 sits on an edge of 6 bins, and a plain division gives 1/6 + 1 ulp)."""
    return C.temperature_scale(p, 1.0, "renorm")


def ref_ls_curve(p, labels, deltas, n_bins):
    q = renorm(p)
    out = []
    for d in deltas:
        s = C.label_smooth(q, d)
        best = s.argmax(axis=1)
        out.append(ref_ece(s[np.arange(len(s)), best], (best == labels).astype(float), n_bins))
    return np.array(out)


def rows(seed: int, n: int, k: int):
    """Raw top-k rows with ties, zeros and rows whose confidence sits on a bin edge."""
    rng = np.random.default_rng(seed)
    p = -np.sort(-rng.dirichlet(np.full(k + 1, 0.4), n)[:, :k], axis=1)
    kind = rng.integers(0, 4, n)
    p[kind == 1] = 1.0 / k                   # all equal: conf = 1/k for every c
    if k > 1:
        p[kind == 2, 1:] = 0.0               # one non-zero: conf = 1 in classic mode
    p = p[:, ::-1] if rng.random() < 0.3 else p  # top not always in column 0
    return np.ascontiguousarray(p), rng.integers(-1, k, n)


# ---------------------------------------------------------------- exp


def test_exp_is_within_one_ulp_of_numpy_and_exact_at_the_ends():
    rng = np.random.default_rng(0)
    x = np.concatenate([-rng.random(200_000) * 50, -rng.random(1000) * 1e-6,
                        np.linspace(-50, 0, 10_001), rng.random(1000) * 700])
    got, want = K.exp_array(x), np.exp(x)
    assert (np.abs(got - want) <= np.spacing(want)).all()
    assert (got == want).mean() > 0.8
    special = np.array([0.0, -0.0, -np.inf, -50.5, -1000.0, 710.0, np.inf])
    tiny = K.exp_array(np.array([K._LOW]))[0]
    assert K.exp_array(special).tolist() == [1.0, 1.0, tiny, tiny, tiny, np.inf, np.inf]
    # below -50 the kernel's exp(-50) cannot change a sum that starts at 1, even k - 1 of them
    assert 0 < tiny < 2e-22 and 1.0 + tiny * 8 == 1.0 and 1.0 + (tiny + tiny) == 1.0


# ---------------------------------------------------------------- curves


@SETTINGS
@given(seeds, st.integers(1, 400), st.integers(1, 6), st.integers(1, 15),
       st.sampled_from(["first", "logit"]), grids)
def test_temperature_curve_equals_the_numpy_reference(seed, n, k, n_bins, mode, grid):
    p, labels = rows(seed, n, k)
    cs = np.unique(grid)
    got = C.search_temperature(p, labels, grid=cs, n_bins=n_bins, mode=mode).ece
    np.testing.assert_allclose(got, ref_ts_curve(p, labels, cs, mode, n_bins), rtol=0,
                               atol=1e-12)
    for c, ece in zip(cs, got):  # and value by value through the public transform
        q = C.temperature_scale(p, c, mode)
        assert abs(ece - ref_ece(q.max(axis=1), q.argmax(axis=1) == labels, n_bins)) < 1e-12


def test_confidences_on_bin_edges_are_binned_right_closed():
    p = np.array([[0.2] * 5, [0.5, 0.5, 0, 0, 0], [0.25] * 4 + [0.0], [0.6, 0, 0, 0, 0]])
    labels = np.array([0, 1, -1, 0])
    cs = np.array([0.1, 0.3, 1.0, 7.0])
    for mode in ("first", "logit"):
        conf = C.temperature_scale(p, 0.3, mode).max(axis=1)
        for n_bins in (5, 10, 20):
            edges = np.linspace(0, 1, n_bins + 1)
            assert np.isin(conf, edges[1:-1]).any()  # the test does exercise inner edges
            got = C.search_temperature(p, labels, grid=cs, n_bins=n_bins, mode=mode).ece
            np.testing.assert_allclose(got, ref_ts_curve(p, labels, cs, mode, n_bins),
                                       rtol=0, atol=1e-12)
    # row 3 in classic mode has confidence exactly 1: the last bin, and perfectly calibrated
    one = C.search_temperature(p[3:], np.array([0]), grid=cs, mode="logit").ece
    assert one.tolist() == [0.0] * 4


@SETTINGS
@given(seeds, st.integers(1, 300), st.integers(2, 6), st.integers(1, 15),
       st.lists(st.floats(0.0, 0.99), min_size=1, max_size=10))
@example(seed=0, n=19, k=6, n_bins=6, grid=[0.0])  # 1/6-rows on an edge of 6 bins (`renorm`)
def test_label_smoothing_curve_equals_the_numpy_reference(seed, n, k, n_bins, grid):
    p, labels = rows(seed, n, k)
    deltas = np.unique(grid)
    ok = deltas <= renorm(p).max(axis=1).min()
    if not ok.any():
        with pytest.raises(ValueError, match="no value gives a valid ECE"):
            C.search_label_smoothing(p, labels, grid=deltas, n_bins=n_bins)
        return
    got = C.search_label_smoothing(p, labels, grid=deltas, n_bins=n_bins).ece
    assert np.isnan(got[~ok]).all()
    np.testing.assert_allclose(got[ok], ref_ls_curve(p, labels, deltas[ok], n_bins), rtol=0,
                               atol=1e-12)


def test_label_smoothing_that_moves_the_argmax_scores_the_new_top():
    p = np.array([[0.4, 0.35, 0.25], [0.9, 0.05, 0.05]])
    labels = np.array([1, 0])
    got = C.search_label_smoothing(p, labels, grid=[0.0, 0.1]).ece
    # delta 0.1: row 0 becomes (0.3, 0.4, 0.3): predicts column 1 (correct) at 0.4
    np.testing.assert_allclose(got, [(abs(0 - 0.4) + abs(1 - 0.9)) / 2,
                                     (abs(1 - 0.4) + abs(1 - 0.8)) / 2], atol=1e-15)
    np.testing.assert_allclose(got, ref_ls_curve(p, labels, [0.0, 0.1], 10), atol=1e-15)


@SETTINGS
@given(seeds, st.integers(1, 3000), st.integers(1, 30))
def test_reliability_bins_and_ece_equal_numpy_bincount(seed, n, n_bins):
    rng = np.random.default_rng(seed)
    edges = np.linspace(0, 1, n_bins + 1)
    conf = np.where(rng.random(n) < 0.3, rng.choice(edges, n), rng.random(n))
    correct = rng.random(n) < conf
    ids = ref_bins(conf, n_bins)
    bins = reliability_bins(conf, correct, n_bins)
    assert bins.count.tolist() == np.bincount(ids, minlength=n_bins).tolist()
    with np.errstate(invalid="ignore"):
        want_conf = np.bincount(ids, conf, n_bins) / bins.count
        want_acc = np.bincount(ids, correct, n_bins) / bins.count
    np.testing.assert_allclose(bins.confidence, want_conf, rtol=1e-12)
    np.testing.assert_allclose(bins.accuracy, want_acc, rtol=1e-12)
    assert abs(expected_calibration_error(conf, correct, n_bins)
               - ref_ece(conf, correct.astype(float), n_bins)) < 1e-12


def test_bin_sums_fall_back_to_a_search_when_the_floor_rule_is_unsafe(monkeypatch):
    rng = np.random.default_rng(1)
    conf = np.concatenate([rng.random(5000), np.linspace(0, 1, 8)])
    correct = rng.random(len(conf)) < 0.5
    fast = K.confidence_bin_sums(conf, correct, 7)
    K._edges.cache_clear()
    monkeypatch.setattr(K, "floor_lower_edges", lambda n: None)
    try:
        slow = K.confidence_bin_sums(conf, correct, 7)
    finally:
        K._edges.cache_clear()
    assert np.array_equal(fast[:, :2], slow[:, :2])
    np.testing.assert_allclose(fast[:, 2], slow[:, 2], rtol=1e-13)


@pytest.mark.parametrize("mode", ["first", "logit"])
@pytest.mark.parametrize("convention", ["paper", "option"])
def test_dashboard_curve_equals_the_slider_value_by_value(mode, convention):
    rng = np.random.default_rng(3)
    n, m = 3000, 4
    full = rng.dirichlet(np.ones(m + 4), n)
    option = full[:, :m] * rng.uniform(0.5, 1.0, (n, 1))
    topk = -np.sort(-np.hstack([option, full[:, m:] * 0.3]), axis=1)[:, :5]
    topk[:5] = 0.2  # all-equal rows: a confidence of exactly 0.2 in the paper convention
    gold = rng.integers(0, m, n)
    arrays = run_arrays.PredictionArrays(topk, rng.random(n) < 0.6, option, gold)
    grid = np.array([0.05, 0.2, 0.3, 0.5, 1.0, 2.0, 4.0])
    curve = rescaling.ece_curve(arrays, mode, convention, grid=grid)
    want = []
    for c in grid:
        scaled = rescaling.rescale(arrays, float(c), mode, convention)
        want.append(ref_ece(scaled.confidence, scaled.correct.astype(float), 10))
    assert isinstance(curve, pd.DataFrame) and curve["c"].tolist() == grid.tolist()
    np.testing.assert_allclose(curve["ece"], want, rtol=0, atol=1e-12)


def test_kernel_sums_do_not_depend_on_the_thread_count():
    rng = np.random.default_rng(4)
    scores = rng.random((5, 100_000))
    correct = rng.random(100_000) < 0.5
    cs = np.linspace(0.05, 2, 11)
    top = np.argmax(scores, axis=0)
    one = K.temperature_bin_sums(scores, top, correct, cs, threads=1)
    assert np.array_equal(one, K.temperature_bin_sums(scores, top, correct, cs, threads=4))
    assert one[..., 0].sum(axis=1).tolist() == [100_000.0] * 11


@SETTINGS
@given(seeds, st.integers(1, 5000), st.integers(1, 6), grids)
def test_scored_row_may_be_any_row_and_scores_any_layout(seed, n, k, grid):
    """`top` as one index, per column, or the first arg-max (ties: rounded scores); the
    reference takes the non-top scores with a plain mask. C and Fortran order, and scores
    shifted so that the top is 0, give the same bits (the kernel only uses z_j - z_top)."""
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(k, n)).round(1)
    correct = rng.random(n) < 0.5
    cs = np.unique(grid)
    for top in (None, int(rng.integers(0, k)), rng.integers(0, k, n)):
        t = np.argmax(z, axis=0) if top is None else np.broadcast_to(top, (n,))
        keep = np.arange(k)[:, None] != t[None, :]
        gaps = z.T[keep.T].reshape(n, k - 1) - z[t, np.arange(n)][:, None]
        want = [ref_ece(1.0 / (1.0 + np.exp(gaps / c).sum(axis=1)), correct, 10) for c in cs]
        got = C.scores_ece_curve(z, correct, cs, top=top)
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)
        fortran = np.asfortranarray(z)
        assert np.array_equal(got, C.scores_ece_curve(fortran, correct, cs, top=top))
        shifted = z - z[t, np.arange(n)]  # z_top - z_top = 0 exactly: the same gaps
        assert np.array_equal(got, C.scores_ece_curve(shifted, correct, cs, top=t))
