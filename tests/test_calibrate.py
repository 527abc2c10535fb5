"""first_core.calibration.transforms: transforms against independent formulas, searches against
brute force."""

import json

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy.optimize import minimize_scalar
from scipy.special import softmax

from first_core.calibration import transforms as C
from first_core.metrics.binning import expected_calibration_error
from first_core.errors import ConfigError

SETTINGS = settings(max_examples=50, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])
seeds = st.integers(0, 2**32 - 1)
temperatures = st.floats(0.01, 100.0)


def topk_rows(seed: int, n: int, k: int, ties: bool = True):
    """Raw top-k rows: sorted descending, summing to < 1, with some ties and zeros."""
    rng = np.random.default_rng(seed)
    p = -np.sort(-rng.dirichlet(np.full(k + 1, 0.4), n)[:, :k], axis=1)
    if ties and n > 2:
        p[0] = p[0].mean()
        p[1, 1:] = 0.0
    labels = rng.integers(-1, k, n)
    return p, labels


def brute_ece(rows: np.ndarray, labels: np.ndarray, n_bins: int) -> float:
    return expected_calibration_error(rows.max(axis=1), rows.argmax(axis=1) == labels, n_bins)


# ---------------------------------------------------------------- transforms


def test_worked_example_of_the_issue():
    # (0.9, .05, .05, .05, .05) sums to 1.1, so numpy input rejects it as probabilities;
    # the unvalidated torch path shows the formula's numbers (~0.37 at c = 1, ~0.84 at 0.28).
    row = [[0.9, 0.05, 0.05, 0.05, 0.05]]
    t = torch.tensor(row, dtype=torch.float64)
    assert float(C.temperature_scale(t, 1.0)[0, 0]) == pytest.approx(0.369, abs=5e-3)
    assert float(C.temperature_scale(t, 0.28)[0, 0]) == pytest.approx(0.839, abs=5e-3)
    with pytest.raises(ValueError, match="probs: row 0 sums to 1.1"):
        C.temperature_scale(np.array(row), 1.0)
    valid = np.array([[0.9, 0.025, 0.025, 0.025, 0.025]])
    assert C.temperature_scale(valid, 1.0)[0, 0] == pytest.approx(0.3749, abs=1e-4)
    assert C.temperature_scale(valid, 0.28)[0, 0] == pytest.approx(0.8506, abs=1e-4)


@SETTINGS
@given(seeds, st.integers(1, 40), st.integers(1, 6), temperatures)
def test_transforms_match_independent_formulas(seed, n, k, c):
    p, _ = topk_rows(seed, n, k)
    np.testing.assert_allclose(C.temperature_scale(p, c, "first"), softmax(p / c, axis=1),
                               rtol=1e-10, atol=1e-300)
    with np.errstate(divide="ignore"):
        log_p = np.log(p)
    np.testing.assert_allclose(C.temperature_scale(p, c, "logit"), softmax(log_p / c, axis=1),
                               rtol=1e-9, atol=1e-300)
    np.testing.assert_allclose(C.temperature_scale(p, 1.0, "renorm"),
                               p / p.sum(axis=1, keepdims=True), rtol=1e-12)


@SETTINGS
@given(seeds, st.integers(1, 40), st.integers(1, 6), temperatures,
       st.sampled_from(["first", "logit"]))
def test_both_modes_keep_the_argmax(seed, n, k, c, mode):
    p, _ = topk_rows(seed, n, k)
    q = C.temperature_scale(p, c, mode)
    assert (q.argmax(axis=1) == p.argmax(axis=1)).all()
    np.testing.assert_allclose(q.sum(axis=1), 1.0, rtol=1e-12)


@SETTINGS
@given(seeds, st.integers(1, 40), st.integers(1, 6))
def test_logit_mode_at_c_1_is_the_identity(seed, n, k):
    p, _ = topk_rows(seed, n, k)
    p = p / p.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(C.temperature_scale(p, 1.0, "logit"), p, rtol=1e-12, atol=1e-300)
    assert not np.allclose(C.temperature_scale(p[:1], 1.0, "first"), p[:1]) or k == 1 \
        or np.allclose(p[0], p[0, 0])  # first mode at c = 1 is not the identity


@SETTINGS
@given(seeds, st.integers(1, 40), st.integers(1, 6), temperatures,
       st.sampled_from(["first", "logit"]))
def test_centered_scores_are_the_c_independent_part(seed, n, k, c, mode):
    p, _ = topk_rows(seed, n, k)
    z = C.centered_scores(p, mode)
    assert (z.max(axis=1) == 0).all()
    np.testing.assert_allclose(softmax(z / c, axis=1), C.temperature_scale(p, c, mode),
                               rtol=1e-12, atol=1e-300)
    np.testing.assert_array_equal(C.temperature_scale(p, c, mode, check=False),
                                  C.temperature_scale(p, c, mode))


def test_check_false_skips_only_the_row_validation():
    row = np.array([[0.9, 0.05, 0.05, 0.05, 0.05]])  # sums to 1.1: rejected when checked
    with pytest.raises(ValueError, match="probs"):
        C.centered_scores(row)
    assert C.temperature_scale(row, 1.0, check=False)[0, 0] == pytest.approx(0.369, abs=5e-3)
    with pytest.raises(ConfigError, match="c:"):  # scalar arguments are always checked
        C.temperature_scale(row, 0.0, check=False)


def test_torch_path_equals_numpy_and_has_gradients():
    p, _ = topk_rows(1, 30, 5)
    t = torch.tensor(p, requires_grad=True)
    for mode, c in (("first", 0.3), ("logit", 2.0), ("renorm", 1.0)):
        np.testing.assert_allclose(C.temperature_scale(t, c, mode).detach().numpy(),
                                   C.temperature_scale(p, c, mode), rtol=1e-12)
        logq = C.temperature_scale(t, c, mode, log=True)
        np.testing.assert_allclose(logq.detach().exp().numpy(),
                                   C.temperature_scale(p, c, mode), rtol=1e-12)
    t3 = torch.tensor(p[None, :, :], requires_grad=True)  # (batch, positions, k)
    assert torch.autograd.gradcheck(lambda x: C.temperature_scale(x, 0.4, "first"), (t3,))
    c = torch.tensor(0.5, dtype=torch.float64, requires_grad=True)
    C.temperature_scale(t, c, "first")[:, 0].sum().backward()
    assert c.grad is not None and float(c.grad) != 0


@SETTINGS
@given(seeds, st.integers(1, 40), st.integers(2, 6), st.floats(0.0, 0.2))
def test_label_smooth_moves_delta_from_top1_to_the_rest(seed, n, k, delta):
    p, _ = topk_rows(seed, n, k, ties=False)
    q = p / p.sum(axis=1, keepdims=True)
    s = C.label_smooth(q, delta)
    top = q.argmax(axis=1)
    expected = q + delta / (k - 1)
    expected[np.arange(n), top] = q[np.arange(n), top] - delta
    np.testing.assert_allclose(s, expected, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(s.sum(axis=1), 1.0, rtol=1e-12)
    np.testing.assert_allclose(C.label_smooth(torch.tensor(q), delta).numpy(), s, rtol=1e-12)


def test_label_smooth_rejects_rows_that_would_go_negative():
    with pytest.raises(ValueError, match="delta: 0.6 exceeds the top-1 probability 0.5 of row 1"):
        C.label_smooth(np.array([[0.9, 0.1], [0.5, 0.5]]), 0.6)


# ---------------------------------------------------------------- searches


@SETTINGS
@given(seeds, st.integers(1, 300), st.integers(1, 6), st.integers(1, 15),
       st.sampled_from(["first", "logit"]),
       st.lists(st.floats(0.02, 8.0), min_size=1, max_size=12))
def test_temperature_search_is_the_argmin_of_brute_force(seed, n, k, n_bins, mode, grid):
    p, labels = topk_rows(seed, n, k)
    res = C.search_temperature(p, labels, grid=grid, n_bins=n_bins, mode=mode)
    brute = [brute_ece(C.temperature_scale(p, c, mode), labels, n_bins) for c in res.grid]
    np.testing.assert_allclose(res.ece, brute, atol=1e-12)
    assert list(res.grid) == sorted(set(grid))
    assert res.best == res.grid[np.argmin(res.ece)] and res.best_ece == res.ece.min()
    np.testing.assert_allclose(C.evaluate_grid(res, p, labels), res.ece, atol=1e-15)


def test_search_chunking_and_threads_do_not_change_the_curve(monkeypatch):
    from first_core.kernels import ece as ece_kernel

    p, labels = topk_rows(7, 50_000, 5)
    grid = np.linspace(0.05, 3, 37)
    monkeypatch.setattr(C, "THREADS", 1)
    whole = C.search_temperature(p, labels, grid=grid).ece
    monkeypatch.setattr(C, "THREADS", 3)
    assert np.array_equal(C.search_temperature(p, labels, grid=grid).ece, whole)
    monkeypatch.setattr(ece_kernel, "_MIN_CHUNK", 700)  # many uneven row chunks
    np.testing.assert_allclose(C.search_temperature(p, labels, grid=grid).ece, whole, atol=1e-14)


@pytest.mark.parametrize("mode, coarse_top", [("first", 1.0), ("logit", 5.0)])
def test_default_grid_is_two_stage(mode, coarse_top):
    p, labels = topk_rows(3, 2000, 5)
    res = C.search_temperature(p, labels, mode=mode)
    coarse = np.round(np.arange(1, round(coarse_top * 10) + 1) * 0.1, 6)
    assert set(coarse) <= set(np.round(res.grid, 6))
    best_coarse = coarse[np.argmin(C.evaluate_grid(
        C.SearchResult("TS", mode, 10, coarse, coarse, 0, 0), p, labels))]
    fine = np.round(best_coarse + 0.02 * np.arange(-5, 6), 6)
    assert set(fine[fine > 0]) <= set(np.round(res.grid, 6))
    assert res.best == res.grid[np.nanargmin(res.ece)]


def test_first_mode_finds_a_temperature_that_fixes_underconfident_topk():
    # a teacher whose raw top-1 is always right 90% of the time: c = 1 in first mode is badly
    # under-confident (about 0.37), a small c recovers a calibrated confidence
    rng = np.random.default_rng(0)
    n = 20000
    p = np.tile([0.9, 0.025, 0.025, 0.025, 0.025], (n, 1))
    labels = np.where(rng.random(n) < 0.9, 0, 1)
    res = C.search_temperature(p, labels)
    assert 0.1 < res.best < 0.3 and res.best_ece < 0.02
    assert res.ece[np.isclose(res.grid, 1.0)][0] > 0.4


@SETTINGS
@given(seeds, st.integers(1, 200), st.integers(2, 6), st.integers(1, 15),
       st.lists(st.floats(0.0, 0.99), min_size=1, max_size=10))
def test_label_smoothing_search_is_the_argmin_of_brute_force(seed, n, k, n_bins, grid):
    p, labels = topk_rows(seed, n, k)
    # the same floats the search smooths: p / sum(p) computed another way can differ by an ulp
    # and move a confidence that sits on a bin edge (e.g. 1/3 with 9 bins) to the next bin
    q = C.temperature_scale(p, 1.0, mode="renorm")
    limit = q.max(axis=1).min()
    if min(grid) > limit:  # every delta would make some row negative
        with pytest.raises(ValueError, match="grid: no value"):
            C.search_label_smoothing(p, labels, grid=grid, n_bins=n_bins)
        return
    res = C.search_label_smoothing(p, labels, grid=grid, n_bins=n_bins)
    for d, e in zip(res.grid, res.ece):
        if d > limit:
            assert np.isnan(e)
        else:
            assert e == pytest.approx(brute_ece(C.label_smooth(q, d), labels, n_bins), abs=1e-12)
    assert res.best == res.grid[np.nanargmin(res.ece)]


def test_default_label_smoothing_grid():
    p, labels = topk_rows(2, 3000, 5)
    res = C.search_label_smoothing(p, labels)
    assert 0.0 in res.grid and res.grid.max() < 1 and res.best == res.grid[np.nanargmin(res.ece)]


def test_grid_with_some_invalid_values_marks_them_nan():
    p, labels = topk_rows(4, 100, 3)
    res = C.search_temperature(p, labels, grid=[-1.0, 0.0, 0.5, np.nan, 2.0])
    assert np.isnan(res.ece[:2]).all() and not np.isnan(res.ece[2:4]).any()
    assert res.best in (0.5, 2.0)


# ---------------------------------------------------------------- NLL temperature


def _nll(p, labels, c):  # independent: p^(1/c) renormalised, in log space
    logits = np.log(p) / c
    logits -= logits.max(axis=1, keepdims=True)
    logq = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    return -logq[np.arange(len(p)), labels].mean()


def test_fit_temperature_nll_matches_scipy_and_recovers_a_known_temperature():
    rng = np.random.default_rng(0)
    n, k, true_c = 20000, 4, 2.5
    p = rng.dirichlet(np.full(k, 0.3), n)
    p = np.maximum(p, 1e-12)
    p /= p.sum(axis=1, keepdims=True)
    truth = p ** (1 / true_c)
    truth /= truth.sum(axis=1, keepdims=True)
    labels = (truth.cumsum(axis=1) < rng.random((n, 1))).sum(axis=1).clip(max=k - 1)
    fitted = C.fit_temperature_nll(p, labels)
    ref = minimize_scalar(lambda lc: _nll(p, labels, np.exp(lc)), bounds=(-3, 3),
                          method="bounded", options={"xatol": 1e-8}).x
    assert fitted == pytest.approx(np.exp(ref), rel=1e-4)
    assert fitted == pytest.approx(true_c, rel=0.1)
    with_missing = np.where(rng.random(n) < 0.1, -1, labels)  # -1 rows are left out
    keep = with_missing >= 0
    assert C.fit_temperature_nll(p, with_missing) == pytest.approx(
        C.fit_temperature_nll(p[keep], labels[keep]), rel=1e-9)


# ---------------------------------------------------------------- bad input


def test_choose_temperature_by_grid_or_nll():
    rng = np.random.default_rng(5)
    p, _ = topk_rows(5, 4000, 5, ties=False)
    labels = (p.cumsum(axis=1) / p.sum(axis=1, keepdims=True) < rng.random((4000, 1))).sum(1)
    grid = np.linspace(0.1, 2.0, 20)
    by_grid = C.choose_temperature(p, labels, grid=grid, strategy="grid")
    plain = C.search_temperature(p, labels, grid=grid)
    assert by_grid.best == plain.best and np.array_equal(by_grid.ece, plain.ece)
    by_nll = C.choose_temperature(p, labels, grid=grid, strategy="nll", mode="first")
    c = C.fit_temperature_nll(p, labels, mode="first")
    assert by_nll.best == c and c in by_nll.grid and set(grid) <= set(by_nll.grid)
    q = C.temperature_scale(p, c, "first")
    assert by_nll.best_ece == pytest.approx(brute_ece(q, labels, 10), abs=1e-12)
    on_grid = np.isin(by_nll.grid, grid)
    np.testing.assert_array_equal(by_nll.ece[on_grid], by_grid.ece)
    with pytest.raises(ConfigError, match="strategy: expected one of"):
        C.choose_temperature(p, labels, strategy="bayes")


def test_token_labels_find_the_gold_letter_among_stored_tokens():
    tokens = [[" B", " A", "x"], [" C", " D", " B"], ["A", "B", "C"]]
    assert C.token_labels(tokens, ["A", "A", "C"]).tolist() == [1, -1, 2]


def test_pipeline_config_selects_the_strategy(tmp_path):
    from first_core.config.loading import load_config

    assert load_config().calibration.strategy == "grid"
    assert load_config(overrides=['calibration.strategy="nll"']).calibration.strategy == "nll"
    with pytest.raises(ConfigError, match="calibration.strategy"):
        load_config(overrides=['calibration.strategy="bayes"'])


def test_temperature_page_marks_the_nll_fit(monkeypatch, tmp_path):
    from test_app import open_app  # the dashboard tests' way of opening a page

    from first_core.store.reads import load_predictions
    from first_core.fixtures import write_fixture_store

    path = write_fixture_store(tmp_path / "f.duckdb", 60, seed=2)
    at = open_app(monkeypatch, path, "pages/temperature.py")
    at.radio(key="ts_strategy").set_value("nll").run()
    assert not at.exception and not at.warning, [w.value for w in at.warning]
    val = load_predictions(path, run_ids=at.selectbox(key="ts_run").value, split="val")
    c = C.fit_temperature_nll(np.array(val["topk_probs"].tolist()),
                              C.token_labels(val["topk_tokens"], val["gold"]), mode="first")
    ts_chart = json.loads(at.get("plotly_chart")[0].proto.spec)
    marked = [_plotly_values(t["x"]) for t in ts_chart["data"] if t.get("mode") == "markers+text"]
    assert len(marked) == 1 and marked[0].tolist() == pytest.approx([c], rel=1e-9)


def _plotly_values(x) -> np.ndarray:
    """Plotly's JSON keeps arrays as lists or as base64 typed arrays ({dtype, bdata})."""
    if isinstance(x, dict):
        import base64

        return np.frombuffer(base64.b64decode(x["bdata"]), dtype=x["dtype"])
    return np.asarray(x, dtype=float)


@pytest.mark.parametrize("c", [0, -1.0, float("nan"), float("inf"), "warm", None])
def test_bad_temperature(c):
    with pytest.raises(ConfigError, match="c:"):
        C.temperature_scale(np.array([[0.5, 0.5]]), c)


@pytest.mark.parametrize("call, word", [
    (lambda: C.temperature_scale(np.array([[0.5, 0.5]]), 1.0, mode="hot"), "mode"),
    (lambda: C.temperature_scale(np.array([[0.5, 0.5]]), 2.0, mode="renorm"), "c:"),
    (lambda: C.temperature_scale(np.array([[0.5, np.nan]]), 1.0), "probs"),
    (lambda: C.temperature_scale(np.array([[0.5, 1.5]]), 1.0), "probs"),
    (lambda: C.temperature_scale(np.zeros((0, 3)), 1.0), "probs"),
    (lambda: C.temperature_scale(np.array([[0.0, 0.0]]), 1.0), "probs"),
    (lambda: C.label_smooth(np.array([[0.5, 0.5]]), 1.0), "delta"),
    (lambda: C.label_smooth(np.array([[0.5, 0.5]]), -0.1), "delta"),
    (lambda: C.label_smooth(np.array([[1.0]]), 0.1), "k >= 2"),
    (lambda: C.search_temperature(np.array([[0.5, 0.5]]), [0, 1]), "labels"),
    (lambda: C.search_temperature(np.array([[0.5, 0.5]]), [2]), "labels"),
    (lambda: C.search_temperature(np.array([[0.5, 0.5]]), [0], grid=[0, -1]), "grid"),
    (lambda: C.search_temperature(np.array([[0.5, 0.5]]), [0], grid=[]), "grid"),
    (lambda: C.search_temperature(np.array([[0.5, 0.5]]), [0], n_bins=0), "n_bins"),
    (lambda: C.search_temperature(np.array([[0.5, 0.5]]), [0], mode="renorm"), "mode"),
    (lambda: C.search_label_smoothing(np.array([[0.5, 0.5]]), [0], grid=[1.0, 2]), "grid"),
    (lambda: C.search_label_smoothing(np.array([[0.5, 0.5]]), [0], grid=[0.6]), "grid"),
    (lambda: C.fit_temperature_nll(np.array([[0.5, 0.5]]), [-1]), "labels"),
])
def test_bad_input_names_the_argument(call, word):
    with pytest.raises(ValueError, match=word):
        call()
