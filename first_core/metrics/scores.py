"""Calibration and accuracy metrics: the only place these numbers are computed.

Bins (see docs/METRICS.md): `uniform` uses scikit-learn's convention, edges
`np.linspace(0, 1, n_bins + 1)`, right-closed bins (a, b] with a confidence of 0 in the first
bin, so per-bin values equal `sklearn.calibration.calibration_curve` exactly, edges included.
torchmetrics uses left-closed bins [a, b) instead, so the two differ only for confidences that
sit exactly on an inner edge. `quantile` gives equal-mass bins (edges at the percentiles of the
confidences, as scikit-learn does).

Arguments are validated here (`ValueError` naming the argument) because a silent NaN in a
calibration number is worse than a crash. Scalar settings (n_bins, strategy, n_boot, ...) raise
`ConfigError`, a `ValueError` that the CLI reports without a traceback.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import reduce

import numpy as np

from ..kernels.bin_edges import floor_lower_edges
from ..errors import ConfigError
from .resampling import Decomposed, check_bootstrap, resample_stats

STRATEGIES = ("uniform", "quantile")
# Rows of probabilities may sum to < 1 (a dropped tail), never to more than 1 + ROW_SUM_TOL
# (rounding: 26 options written with 6 decimals can reach 1 + 1.3e-5) and never to 0. One rule
# for the pages (`check_probs`) and the importer (`row_sums_ok`), so a file the importer
# accepts is one the Reliability page can show (issue 30, item 4).
ROW_SUM_TOL = 1e-4
_NLL_FLOOR = np.finfo(np.float64).eps  # as scikit-learn's log_loss: log(0) would be -inf


# ---------------------------------------------------------------- row reductions


def row_reduce(ufunc: np.ufunc, x: np.ndarray) -> np.ndarray:
    """`ufunc.reduce` over the last axis of x (e.g. np.add: row sums, np.maximum: row max).

    numpy reduces each short row in its own inner loop, which for the few columns of
    top-k or option rows costs 3-5x more than combining whole columns; below 8 columns
    numpy's own row sums add in this same order, so the result is the same floats.
    """
    if x.shape[-1] > 8 or x.shape[-1] == 0:
        return ufunc.reduce(x, axis=-1)
    return reduce(ufunc, np.moveaxis(x, -1, 0))


# ---------------------------------------------------------------- input checks


def check_confidence(confidence, name: str = "confidence") -> np.ndarray:
    """A non-empty 1-D float64 array of finite values in [0, 1]."""
    x = np.asarray(confidence, dtype=np.float64)
    if x.ndim != 1:
        raise ValueError(f"{name}: expected a 1-D array, got shape {x.shape}")
    if x.size == 0:
        raise ValueError(f"{name}: empty input")
    if not np.isfinite(x).all():
        raise ValueError(f"{name}: contains NaN or inf (first at index "
                         f"{int(np.flatnonzero(~np.isfinite(x))[0])})")
    if x.min() < 0 or x.max() > 1:
        raise ValueError(f"{name}: values must lie in [0, 1], got range "
                         f"[{x.min():.6g}, {x.max():.6g}]")
    return x


def check_correct(correct, n: int, name: str = "correct") -> np.ndarray:
    """A 1-D boolean array of length n (0/1 and True/False accepted)."""
    x = np.asarray(correct)
    if x.ndim != 1 or len(x) != n:
        raise ValueError(f"{name}: expected length {n} to match, got shape {x.shape}")
    if x.dtype != bool:
        if not np.isin(x, (0, 1)).all():
            raise ValueError(f"{name}: expected booleans or 0/1 values")
        x = x.astype(bool)
    return x


def check_probs(probs, name: str = "probs") -> np.ndarray:
    """A non-empty N x k float64 array, finite, in [0, 1], rows summing to <= 1 + tol and > 0."""
    x = np.asarray(probs, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(f"{name}: expected a non-empty N x k array, got shape {x.shape}")
    if not np.isfinite(x).all():
        row = int(np.flatnonzero(~np.isfinite(x).all(axis=1))[0])
        raise ValueError(f"{name}: contains NaN or inf (first in row {row})")
    if x.min() < 0 or x.max() > 1:
        raise ValueError(f"{name}: probabilities must lie in [0, 1], got range "
                         f"[{x.min():.6g}, {x.max():.6g}]")
    sums = row_reduce(np.add, x)
    bad = ~row_sums_ok(sums)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        if sums[row] > 0:
            raise ValueError(f"{name}: row {row} sums to {sums[row]:.9g} > 1")
        raise ValueError(f"{name}: row {row} is all zeros")
    return x


def row_sums_ok(sums: np.ndarray) -> np.ndarray:
    """Which row sums `check_probs` accepts: more than 0 and at most 1 + ROW_SUM_TOL."""
    sums = np.asarray(sums, dtype=np.float64)
    return (sums > 0) & (sums <= 1 + ROW_SUM_TOL)


def check_labels(labels, n: int, k: int, name: str = "labels",
                 allow_missing: bool = True) -> np.ndarray:
    """Integer column indices in [0, k), or -1 (gold not in the top-k) when allowed."""
    x = np.asarray(labels)
    if x.ndim != 1 or len(x) != n:
        raise ValueError(f"{name}: expected length {n} to match, got shape {x.shape}")
    if x.dtype.kind not in "iub":
        if x.dtype.kind != "f" or not np.all(np.isfinite(x) & (x == np.round(x))):
            raise ValueError(f"{name}: expected integer column indices")
    x = x.astype(np.int64)
    low = -1 if allow_missing else 0
    bad = (x < low) | (x >= k)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        allowed = f"[0, {k})" + (" or -1" if allow_missing else "")
        raise ValueError(f"{name}: value {x[i]} at index {i} is outside {allowed}")
    return x


def check_n_bins(n_bins) -> int:
    if isinstance(n_bins, bool) or not isinstance(n_bins, (int, np.integer)) or n_bins < 1:
        raise ConfigError(f"n_bins: expected an integer >= 1, got {n_bins!r}")
    return int(n_bins)


def _check_strategy(strategy: str) -> str:
    if strategy not in STRATEGIES:
        raise ConfigError(f"strategy: expected one of {STRATEGIES}, got {strategy!r}")
    return strategy


def _conf_correct(confidence, correct, check: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Validated (confidence, correct); `check=False` trusts arrays the caller validated."""
    if not check:
        return np.asarray(confidence, np.float64), np.asarray(correct, bool)
    conf = check_confidence(confidence)
    return conf, check_correct(correct, len(conf))


# ---------------------------------------------------------------- binning


def uniform_bin_ids(confidence: np.ndarray, n_bins: int, out: np.ndarray | None = None
                    ) -> np.ndarray:
    """Bin of each confidence for edges `linspace(0, 1, n_bins + 1)`, bins (a, b], 0 in bin 0.

    Equal to `np.searchsorted(edges[1:-1], confidence)` (scikit-learn's rule) but without the
    binary search: floor(conf * n) is never below the true bin and at most one above it
    (`floor_lower_edges`), so one comparison with the true lower edge corrects it. The grid
    searches bin 10^8 confidences through this, into a reused intp buffer `out`.
    """
    lower = floor_lower_edges(n_bins)
    if lower is None:
        return np.searchsorted(np.linspace(0.0, 1.0, n_bins + 1)[1:-1], confidence)
    ids = np.empty(confidence.shape, np.intp) if out is None else out
    np.copyto(ids, np.multiply(confidence, n_bins), casting="unsafe")  # floor: conf >= 0
    ids -= confidence <= lower.take(ids)
    return ids


def bin_edges(confidence: np.ndarray, n_bins: int, strategy: str = "uniform") -> np.ndarray:
    """The n_bins + 1 bin edges; for `quantile`, percentiles of the confidences (sklearn's)."""
    if _check_strategy(strategy) == "uniform":
        return np.linspace(0.0, 1.0, n_bins + 1)
    # the same percentiles; sorting first (a SIMD sort in numpy 2) makes numpy's selection of
    # the order statistics cheap, about twice as fast as selecting from unsorted values
    return np.percentile(np.sort(confidence), np.linspace(0, 1, n_bins + 1) * 100)


def bin_ids(confidence: np.ndarray, n_bins: int, strategy: str = "uniform") -> np.ndarray:
    """Bin index of each confidence under `strategy` (right-closed bins, see module doc)."""
    return _ids_in(confidence, bin_edges(confidence, n_bins, strategy), strategy)


def _ids_in(confidence: np.ndarray, edges: np.ndarray, strategy: str) -> np.ndarray:
    """Right-closed bin of each confidence for `edges` (from `bin_edges`)."""
    if strategy == "uniform":
        return uniform_bin_ids(confidence, len(edges) - 1)
    ids = np.zeros(len(confidence), np.intp)
    for edge in edges[1:-1]:  # count of inner edges < conf: searchsorted's rule, 2-3x faster
        ids += confidence > edge
    return ids


@dataclass(frozen=True)
class ReliabilityBins:
    """Per-bin statistics of a reliability diagram; empty bins have count 0 and NaN means.

    `gap = confidence - accuracy`: positive where the model is over-confident.
    """

    edges: np.ndarray       # n_bins + 1
    count: np.ndarray       # int, n_bins
    confidence: np.ndarray  # mean confidence per bin
    accuracy: np.ndarray    # fraction correct per bin
    gap: np.ndarray

    @property
    def ece(self) -> float:
        """sum_b (n_b / n) |gap_b|: the ECE of the binned sample (no second binning pass)."""
        full = self.count > 0
        return float(np.sum(self.count[full] * np.abs(self.gap[full])) / self.count.sum())

    @property
    def mce(self) -> float:
        """max over non-empty bins of |gap_b|."""
        return float(np.abs(self.gap[self.count > 0]).max())


def reliability_bins(confidence, correct, n_bins: int = 10, strategy: str = "uniform", *,
                     check: bool = True) -> ReliabilityBins:
    """Count, mean confidence, accuracy and gap per bin (the reliability diagram's data).

    `check=False` skips validating `confidence`/`correct` (arrays the caller produced or
    validated itself, e.g. on every move of the dashboard's slider).
    """
    conf, ok = _conf_correct(confidence, correct, check)
    n_bins = check_n_bins(n_bins)
    edges = bin_edges(conf, n_bins, strategy)
    if strategy == "uniform":  # bins and per-bin sums in one compiled pass
        count, hits, conf_sum = _uniform_sums(conf, ok, n_bins).T
        count = count.astype(np.int64)
    else:
        ids = _ids_in(conf, edges, strategy)
        count = np.bincount(ids, minlength=n_bins)
        conf_sum = np.bincount(ids, weights=conf, minlength=n_bins)
        hits = np.bincount(ids[ok], minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf, acc = conf_sum / count, hits / count
    return ReliabilityBins(edges, count, mean_conf, acc, mean_conf - acc)


def _uniform_sums(conf: np.ndarray, ok: np.ndarray, n_bins: int) -> np.ndarray:
    """(bins x 3) count, correct count, confidence sum per uniform bin (`ece_kernel`)."""
    from ..kernels.ece import confidence_bin_sums  # lazily: it imports numba

    return confidence_bin_sums(conf, ok, n_bins)


# ---------------------------------------------------------------- metrics


def expected_calibration_error(confidence, correct, n_bins: int = 10,
                               strategy: str = "uniform", *, check: bool = True) -> float:
    """ECE = sum_b (n_b / n) |acc_b - conf_b| = (1/n) sum_b |sum_{i in b} (correct_i - conf_i)|.

    `check=False` skips validating arrays the caller has already validated.
    """
    conf, ok = _conf_correct(confidence, correct, check)
    n_bins = check_n_bins(n_bins)
    if _check_strategy(strategy) == "uniform":
        sums = _uniform_sums(conf, ok, n_bins)
        return float(np.abs(sums[:, 1] - sums[:, 2]).sum() / len(conf))
    sums = np.bincount(bin_ids(conf, n_bins, strategy), weights=ok - conf, minlength=n_bins)
    return float(np.abs(sums).sum() / len(conf))


def maximum_calibration_error(confidence, correct, n_bins: int = 10,
                              strategy: str = "uniform", *, check: bool = True) -> float:
    """MCE = max over non-empty bins of |acc_b - conf_b|."""
    return reliability_bins(confidence, correct, n_bins, strategy, check=check).mce


def accuracy(correct, *, check: bool = True) -> float:
    """Fraction of correct predictions (`check=False`: `correct` is a validated bool array)."""
    ok = np.asarray(correct)
    if not check:
        return float(ok.mean())
    if ok.ndim != 1 or ok.size == 0:
        raise ValueError(f"correct: expected a non-empty 1-D array, got shape {ok.shape}")
    return float(check_correct(ok, len(ok)).mean())


def _probs_labels(probs, labels, check: bool = True) -> tuple[np.ndarray, np.ndarray]:
    if not check:
        return np.asarray(probs, np.float64), np.asarray(labels, np.intp)
    p = check_probs(probs)
    return p, check_labels(labels, len(p), p.shape[1], allow_missing=False)


def brier_score(probs, labels, *, check: bool = True) -> float:
    """Multi-class Brier score: mean over rows of sum_j (p_j - [j == label])^2.

    Over the option distribution: pass rows that sum to 1 (a dropped tail is not counted).
    Ranges over [0, 2]; it equals scikit-learn's multi-class `brier_score_loss` with
    `scale_by_half=False`. `check=False` skips validating arrays validated by the caller.
    """
    p, y = _probs_labels(probs, labels, check)
    return float(_brier_rows(p, y).mean())


def negative_log_likelihood(probs, labels, *, check: bool = True) -> float:
    """Mean of -log p[label]; p is floored at float64 eps like scikit-learn's `log_loss`.

    `check=False` skips validating arrays validated by the caller.
    """
    p, y = _probs_labels(probs, labels, check)
    return float(_nll_rows(p, y).mean())


def _hits(p: np.ndarray, y: np.ndarray) -> np.ndarray:
    return np.take_along_axis(p, y[:, None], axis=1)[:, 0]


def _brier_from(squares: np.ndarray, hit: np.ndarray) -> np.ndarray:
    """Per-example Brier score from sum_j p_j^2 and p[label]."""
    return squares - 2 * hit + 1


def _nll_from(hit: np.ndarray) -> np.ndarray:
    return -np.log(np.maximum(hit, _NLL_FLOOR))


def _brier_rows(p: np.ndarray, y: np.ndarray) -> np.ndarray:
    return _brier_from(np.einsum("ij,ij->i", p, p), _hits(p, y))


def _nll_rows(p: np.ndarray, y: np.ndarray) -> np.ndarray:
    return _nll_from(_hits(p, y))


def proper_score_sums(weights: np.ndarray, norm: np.ndarray,
                      hit_weights: np.ndarray) -> tuple[float, float]:
    """Sums over examples of the Brier score and the NLL of q = weights / norm.

    `weights` are unnormalised, laid out k x N (one column per example), `norm` their column
    sums and `hit_weights` the label's weight per example. This is `brier_score` and
    `negative_log_likelihood` (times N) without forming q or gathering labels: the
    dashboard's slider calls it on every move with arrays validated when they were loaded.
    """
    hit = hit_weights / norm
    squares = np.einsum("ij,ij->j", weights, weights)
    squares /= norm * norm
    return float(_brier_from(squares, hit).sum()), float(_nll_from(hit).sum())


def trust_score(accuracy: float, ece: float) -> float:
    """Trust = accuracy - ECE, both as fractions. OUR definition, not verified from the paper.

    The FIRST paper reports a "Trust Score" combining accuracy and calibration; its exact
    formula could not be checked from the sources available to us, so this project uses
    Acc - ECE. This is the only place that knows the formula.
    """
    return float(accuracy) - float(ece)


# ---------------------------------------------------------------- confidence conventions


@dataclass(frozen=True)
class Predictions:
    """Prediction, confidence and correctness of each example under one convention."""

    pred: np.ndarray        # paper: token id; option: option index
    confidence: np.ndarray
    correct: np.ndarray


def paper_convention(topk_probs, topk_ids, gold_ids) -> Predictions:
    """The paper's convention: confidence = the largest probability over the whole vocabulary.

    `topk_probs`/`topk_ids` are a full-vocabulary top-k (k >= 1), so its best entry is the
    vocabulary's top-1; correct only if that token is the gold answer token.
    """
    p = check_probs(topk_probs, "topk_probs")
    ids = np.asarray(topk_ids)
    if ids.shape != p.shape:
        raise ValueError(f"topk_ids: shape {ids.shape} does not match topk_probs {p.shape}")
    gold = np.asarray(gold_ids)
    if gold.shape != (len(p),):
        raise ValueError(f"gold_ids: expected length {len(p)} to match, got shape {gold.shape}")
    best = p.argmax(axis=1)
    pred = ids[np.arange(len(p)), best]
    return Predictions(pred, p[np.arange(len(p)), best], pred == gold)


def option_convention(option_probs, gold_option) -> Predictions:
    """Option-renormalised convention: p over the answer letters / its sum; pred = best option."""
    p = check_probs(option_probs, "option_probs")
    gold = check_labels(gold_option, len(p), p.shape[1], "gold_option", allow_missing=False)
    q = p / p.sum(axis=1, keepdims=True)
    pred = q.argmax(axis=1)
    return Predictions(pred, q[np.arange(len(q)), pred], pred == gold)


def topk_labels(topk_ids, gold_ids) -> np.ndarray:
    """DESIGN's label convention: the column of the gold token in each top-k row, or -1."""
    ids, gold = np.asarray(topk_ids), np.asarray(gold_ids)
    if ids.ndim != 2 or gold.shape != (len(ids),):
        raise ValueError(f"gold_ids: expected length {len(ids)} to match topk_ids {ids.shape}")
    hit = ids == gold[:, None]
    return np.where(hit.any(axis=1), hit.argmax(axis=1), -1)


# ---------------------------------------------------------------- bootstrap


def _binned(confidence, correct, n_bins=10, strategy="uniform", *, extra: str) -> Decomposed:
    conf, ok = _conf_correct(confidence, correct)
    n_bins = check_n_bins(n_bins)
    ids = bin_ids(conf, n_bins, strategy)
    second = {"ece": (), "mce": (np.ones_like(conf),), "trust": (ok.astype(np.float64),)}[extra]

    def ece(s, n):
        return np.abs(s[..., 0]).sum(axis=1) / n

    def mce(s, n):  # |sum gap| / count over non-empty bins
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.nanmax(np.abs(s[..., 0]) / np.where(s[..., 1] > 0, s[..., 1], np.nan),
                             axis=1)

    def trust(s, n):  # accuracy - ECE
        return s[..., 1].sum(axis=1) / n - ece(s, n)

    return Decomposed(ids, n_bins, np.stack([ok - conf, *second]),
                       {"ece": ece, "mce": mce, "trust": trust}[extra])


def _mean_of(rows: np.ndarray) -> Decomposed:
    return Decomposed(np.zeros(len(rows), np.intp), 1, rows[None, :],
                       lambda s, n: s[:, 0, 0] / n)


def _trust_point(confidence, correct, n_bins=10, strategy="uniform") -> float:
    return trust_score(accuracy(correct),
                       expected_calibration_error(confidence, correct, n_bins, strategy))


# metric -> (point estimate, decomposition); names match the store's `metric` column
_BOOTSTRAPPABLE: dict[str, tuple[Callable[..., float], Callable[..., Decomposed]]] = {
    "ece": (expected_calibration_error, lambda *a, **k: _binned(*a, **k, extra="ece")),
    "mce": (maximum_calibration_error, lambda *a, **k: _binned(*a, **k, extra="mce")),
    "trust": (_trust_point, lambda *a, **k: _binned(*a, **k, extra="trust")),
    "accuracy": (accuracy, lambda c: _mean_of(check_correct(c, np.size(c)).astype(float))),
    "brier": (brier_score, lambda p, y: _mean_of(_brier_rows(*_probs_labels(p, y)))),
    "nll": (negative_log_likelihood, lambda p, y: _mean_of(_nll_rows(*_probs_labels(p, y)))),
}
_BY_FUNCTION = {point: name for name, (point, _) in _BOOTSTRAPPABLE.items()}
_BY_FUNCTION[trust_score] = "trust"


def bootstrap_interval(metric: str | Callable[..., float], *arrays, n_boot: int = 1000,
                       seed: int = 0, level: float = 0.95,
                       **kwargs) -> tuple[float, float, float]:
    """(point, low, high): the metric and its percentile bootstrap interval.

    `metric` is a function of this module or its store name (`accuracy`, `ece`, `mce`,
    `brier`, `nll`, `trust`); `arrays`/`kwargs` are that metric's arguments (`trust` takes
    `confidence, correct` like ECE). Binned metrics keep the bins of the full sample (exact
    for uniform bins; the usual conditional approximation for quantile bins). AUROC and AURC:
    `selective_metrics.bootstrap_intervals`, on the same resamples.
    """
    name = metric if isinstance(metric, str) else _BY_FUNCTION.get(metric)
    if name not in _BOOTSTRAPPABLE:
        raise ConfigError(f"metric: expected one of {sorted(_BOOTSTRAPPABLE)} or their "
                          f"functions, got {metric!r}")
    quantiles = check_bootstrap(n_boot, level)
    point_fn, decompose = _BOOTSTRAPPABLE[name]
    point = point_fn(*arrays, **kwargs)
    low, high = np.quantile(resample_stats(decompose(*arrays, **kwargs), n_boot, seed), quantiles)
    return float(point), float(low), float(high)
