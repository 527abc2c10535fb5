"""Input checks of the metrics: every array a metric reads is validated here first.

Arguments are validated (`ValueError` naming the argument) because a silent NaN in a
calibration number is worse than a crash. Scalar settings (n_bins, strategy, n_boot, ...) raise
`ConfigError`, a `ValueError` that the CLI reports without a traceback. Every metric module
(binning, point scores, conventions, intervals, selective prediction), the calibration
transforms, the dashboard's arrays and the importer check with these same rules, so what one
of them accepts the others can score.
"""

from __future__ import annotations

from functools import reduce

import numpy as np

from ..errors import ConfigError

# Rows of probabilities may sum to < 1 (a dropped tail), never to more than 1 + ROW_SUM_TOL
# (rounding: 26 options written with 6 decimals can reach 1 + 1.3e-5) and never to 0. One rule
# for the pages (`check_probs`) and the importer (`row_sums_ok`), so a file the importer
# accepts is one the Reliability page can show (issue 30, item 4).
ROW_SUM_TOL = 1e-4


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


def conf_correct(confidence, correct, check: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Validated (confidence, correct); `check=False` trusts arrays the caller validated."""
    if not check:
        return np.asarray(confidence, np.float64), np.asarray(correct, bool)
    conf = check_confidence(confidence)
    return conf, check_correct(correct, len(conf))


def probs_labels(probs, labels, check: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Validated (probs, labels) with every label an option; `check=False` trusts them."""
    if not check:
        return np.asarray(probs, np.float64), np.asarray(labels, np.intp)
    p = check_probs(probs)
    return p, check_labels(labels, len(p), p.shape[1], allow_missing=False)

