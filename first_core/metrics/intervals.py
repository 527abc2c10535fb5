"""Percentile bootstrap intervals of the stored metrics (accuracy, ECE, MCE, Brier, NLL,
trust), each from its per-example or per-bin decomposition (`resampling`).

AUROC and AURC get theirs in `selective`, on the same resamples.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ..errors import ConfigError
from .binning import bin_ids, expected_calibration_error, maximum_calibration_error
from .checks import check_correct, check_n_bins, conf_correct, probs_labels
from .point_scores import (accuracy, brier_rows, brier_score, negative_log_likelihood, nll_rows,
                           trust_score)
from .resampling import Decomposed, check_bootstrap, resample_stats


def _binned(confidence, correct, n_bins=10, strategy="uniform", *, extra: str) -> Decomposed:
    conf, ok = conf_correct(confidence, correct)
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
    "brier": (brier_score, lambda p, y: _mean_of(brier_rows(*probs_labels(p, y)))),
    "nll": (negative_log_likelihood, lambda p, y: _mean_of(nll_rows(*probs_labels(p, y)))),
}
_BY_FUNCTION = {point: name for name, (point, _) in _BOOTSTRAPPABLE.items()}
_BY_FUNCTION[trust_score] = "trust"


def bootstrap_interval(metric: str | Callable[..., float], *arrays, n_boot: int = 1000,
                       seed: int = 0, level: float = 0.95,
                       **kwargs) -> tuple[float, float, float]:
    """(point, low, high): the metric and its percentile bootstrap interval.

    `metric` is a metric function (`point_scores`, `binning`) or its store name (`accuracy`,
    `ece`, `mce`, `brier`, `nll`, `trust`); `arrays`/`kwargs` are that metric's arguments
    (`trust` takes `confidence, correct` like ECE). Binned metrics keep the bins of the full
    sample (exact for uniform bins; the usual conditional approximation for quantile bins).
    AUROC and AURC: `selective.bootstrap_intervals`, on the same resamples.
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
