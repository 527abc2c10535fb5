"""The floor rule for uniform bins, proven per bin count: one floor(conf * n_bins) and one
comparison find the right-closed bin (a, b] of scikit-learn's `calibration_curve` without a
binary search. Both `metrics` (numpy) and `ece_kernel` (compiled) bin this way, so it lives
here, below both."""

from __future__ import annotations

from functools import lru_cache

import numpy as np


@lru_cache(maxsize=64)
def floor_lower_edges(n_bins: int) -> np.ndarray | None:
    """Lower edge of the bin that floor(conf * n_bins) names, or None where floor is unsafe.

    Index n_bins (conf = 1) holds 1.0 and index 0 holds -inf, so `floor - (conf <= lower)`
    is the right-closed bin for every conf in [0, 1] provided floor(fl(conf * n_bins)) is
    never below the true bin and at most one above it. Rounding is monotone, so checking
    the floats on either side of each inner edge proves that for all conf (it holds for
    every n_bins up to 20000; the check keeps this exact for any other).
    """
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    inner, b = edges[1:-1], np.arange(1, n_bins)
    if not ((np.floor(np.nextafter(inner, 2.0) * n_bins) >= b).all()
            and (np.floor(inner * n_bins) <= b).all()):
        return None
    lower = edges.copy()
    lower[0] = -np.inf
    lower.flags.writeable = False
    return lower
