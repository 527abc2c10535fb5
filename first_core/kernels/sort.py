"""The risk-coverage curve's compiled loops: a radix sort of packed keys, and its tie groups.

`selective_metrics.risk_coverage` sorts one packed key per prediction, (confidence bits << 1)
| correct, on every move of the dashboard's temperature slider. numpy's `np.sort` of a
million int64 keys costs about 125 ms on this project's 2-core machines under load (its SIMD
sorts are not used on them); a byte-wise LSD radix sort is several times faster: one pass
counts all eight digit histograms, then each digit that is not the same for every key moves
the keys once (a stable counting scatter). Confidences in a narrow range share their leading
bytes, and those passes are skipped. `tie_groups` then reads the curve off the sorted keys in
one pass, where numpy needs about eight. `benchmarks/bench_dashboard.py` has the figures.
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


@numba.njit(nogil=True, cache=True)
def _tie_groups(keys: np.ndarray):  # pragma: no cover - compiled
    n = keys.size
    value = np.empty(n, np.int64)
    answered = np.empty(n, np.int64)
    wrong = np.empty(n, np.int64)
    groups = 0
    seen_wrong = 0
    group_start, group_wrong = 0, 0
    area = 0.0    # sum over groups of size x risk
    below = 0     # sum over groups of right x (wrong up to and including the group)
    within = 0    # sum over groups of right x wrong, both of the group
    for j in range(n):  # most confident first
        i = n - 1 - j
        k = keys[i]
        miss = 1 - (k & 1)
        seen_wrong += miss
        group_wrong += miss
        if i == 0 or (keys[i - 1] >> 1) != (k >> 1):  # the last member of its tie group
            size = j + 1 - group_start
            right = size - group_wrong
            value[groups] = k >> 1
            answered[groups] = j + 1
            wrong[groups] = seen_wrong
            area += size * (seen_wrong / (j + 1))
            below += right * seen_wrong
            within += right * group_wrong
            groups += 1
            group_start, group_wrong = j + 1, 0
    n_right = n - seen_wrong
    pairs = 2 * (n_right * seen_wrong - below) + within
    return value[:groups], answered[:groups], wrong[:groups], area, pairs


def tie_groups(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, float, int]:
    """Of keys (value << 1) | correct sorted ascending, in one pass: per tie group of values,
    most confident first, (value, items with a value >= it, wrong ones among them), then the
    sum over groups of size x (wrong / answered) (n x AURC) and twice the number of (right,
    wrong) pairs ranked right-first, ties counting half (2 x right x wrong x AUROC)."""
    keys = np.ascontiguousarray(keys, dtype=np.int64)
    if keys.ndim != 1 or not len(keys):
        raise ValueError(f"keys: expected a non-empty 1-D array, got shape {keys.shape}")
    value, answered, wrong, area, pairs = _tie_groups(keys)
    return value, answered, wrong, float(area), int(pairs)
