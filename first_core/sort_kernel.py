"""Sorting non-negative int64 keys with a compiled LSD radix sort (the risk-coverage curve's).

`selective_metrics.risk_coverage` sorts one packed key per prediction on every move of the
dashboard's temperature slider. numpy's `np.sort` of a million int64 keys costs about
125 ms on this project's 2-core machines (its SIMD sorts are not used on them), a byte-wise
LSD radix sort about half that: one pass counts all eight digit histograms, then each
digit that is not the same for every key moves the keys once (a stable counting scatter).
Confidences in a narrow range share their leading bytes, and those passes are skipped.
`benchmarks/bench_dashboard.py` has the figures.
"""

from __future__ import annotations

import numba
import numpy as np

_BITS = 8
_PASSES = 64 // _BITS


@numba.njit(nogil=True, cache=True)
def _radix_sort(keys: np.ndarray) -> np.ndarray:  # pragma: no cover - compiled
    n = keys.size
    mask = (1 << _BITS) - 1
    count = np.zeros((_PASSES, 1 << _BITS), np.int64)
    for i in range(n):
        k = keys[i]
        for p in range(_PASSES):
            count[p, (k >> (p * _BITS)) & mask] += 1
    a = keys.copy()
    b = np.empty_like(a)
    for p in range(_PASSES):
        shift = p * _BITS
        c = count[p]
        if c[(a[0] >> shift) & mask] == n:
            continue  # every key has this digit: the order stays
        total = 0
        for r in range(1 << _BITS):
            size = c[r]
            c[r] = total
            total += size
        for i in range(n):
            k = a[i]
            d = (k >> shift) & mask
            b[c[d]] = k
            c[d] += 1
        a, b = b, a
    return a


def sort_nonnegative(keys: np.ndarray) -> np.ndarray:
    """A sorted copy of a 1-D int64 array whose values are all >= 0 (equal to `np.sort`)."""
    keys = np.ascontiguousarray(keys, dtype=np.int64)
    if keys.ndim != 1:
        raise ValueError(f"keys: expected a 1-D array, got shape {keys.shape}")
    if not len(keys):
        return keys.copy()
    if keys.min() < 0:
        raise ValueError("keys: expected non-negative values")
    return _radix_sort(keys)
