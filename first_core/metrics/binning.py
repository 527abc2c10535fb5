"""Binned calibration: bin edges and ids, the reliability diagram's per-bin data, ECE and MCE.

Bins (see docs/METRICS.md): `uniform` uses scikit-learn's convention, edges
`np.linspace(0, 1, n_bins + 1)`, right-closed bins (a, b] with a confidence of 0 in the first
bin, so per-bin values equal `sklearn.calibration.calibration_curve` exactly, edges included.
torchmetrics uses left-closed bins [a, b) instead, so the two differ only for confidences that
sit exactly on an inner edge. `quantile` gives equal-mass bins (edges at the percentiles of the
confidences, as scikit-learn does).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..kernels.bin_edges import floor_lower_edges
from ..errors import ConfigError
from .checks import check_n_bins, conf_correct

STRATEGIES = ("uniform", "quantile")


def _check_strategy(strategy: str) -> str:
    if strategy not in STRATEGIES:
        raise ConfigError(f"strategy: expected one of {STRATEGIES}, got {strategy!r}")
    return strategy


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
    conf, ok = conf_correct(confidence, correct, check)
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


def expected_calibration_error(confidence, correct, n_bins: int = 10,
                               strategy: str = "uniform", *, check: bool = True) -> float:
    """ECE = sum_b (n_b / n) |acc_b - conf_b| = (1/n) sum_b |sum_{i in b} (correct_i - conf_i)|.

    `check=False` skips validating arrays the caller has already validated.
    """
    conf, ok = conf_correct(confidence, correct, check)
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

