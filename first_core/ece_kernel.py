"""ECE as a function of a transform parameter: one compiled pass over the rows per value.

Both temperature transforms keep each row's arg-max, so correctness does not depend on c and
only the top-1 confidence has to be recomputed for every c:

- FIRST, softmax(p / c):   conf(c) = 1 / (1 + sum_j exp((p_j - p_top) / c))
- classic, softmax(log p / c) = p^(1/c) renormalised:
                           conf(c) = 1 / (1 + sum_j exp((log p_j - log p_top) / c))
                                   = 1 / sum_j (p_j / p_top)^(1/c)

with the sums over the k - 1 non-top columns. The caller passes those c-independent gaps
once ((k - 1) x N, `temperature_bin_sums`); the kernel does k - 1 exponentials per row and
value, no renormalised matrix. Label smoothing (`smoothing_bin_sums`) can move the arg-max, so
it re-derives the prediction per delta from the renormalised rows, with the same operations as
`calibrate.label_smooth` (no transcendental function: those confidences are bit-identical).

Each confidence is binned as it is made, by scikit-learn's rule (edges linspace(0, 1, n + 1),
right-closed bins, 0 in the first; the floor shortcut of `metrics.uniform_bin_ids`), and three
sums per (value, bin) are accumulated in the same pass: count, correct count, confidence sum.
ECE, MCE and the reliability diagram all follow from those (`ece_from_sums`).

Why numba, and why its own `exp`: a compiled loop fuses exp, sum, reciprocal, binning and the
per-bin sums into one pass over cache-resident blocks, where numpy needs ~8 passes and a
`bincount` that holds the GIL. numba's `math.exp` is glibc's scalar exp (about 4 ns here;
the pip build of llvmlite has no SVML), so `_exp` below is the textbook Cody-Waite reduction
plus a degree-13 Taylor polynomial that LLVM vectorises (about 0.8 ns, like numpy's AVX-512
exp); it is within 1 ulp of numpy's `np.exp` and exact at 0 and -inf (tested), which is what
keeps the curves equal to the numpy reference to 1e-12 and values on bin edges on them.
torch was the other candidate: its float64 `exp` measured 1.7 ns per value here (Sleef, one
thread) and it has no fused binning, so the compiled loop is the faster of the two.

Rows are split into a fixed number of chunks (it depends on N only) that a small thread pool
scores (the kernels release the GIL), and chunk sums are added in chunk order: the result
does not depend on the number of threads.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache

import numba
import numpy as np

from .metrics import _floor_lower_edges

SUMS = ("count", "correct", "confidence")  # the last axis of every bin-sum array
_BLOCK = 2048          # rows per inner block: its gaps and confidences stay in L1/L2
_MAX_CHUNKS = 64       # chunks per call at most (each holds one values x bins x 3 array)
_MIN_CHUNK = 8 * _BLOCK

_LOG2E = 1.4426950408889634
_LN2_HI = 6.93147180369123816490e-01   # ln 2 split in two (fdlibm's constants) so that
_LN2_LO = 1.90821492927058770002e-10   # x - n ln 2 is exact to double precision
_ROUND = 6755399441055744.0            # 1.5 * 2^52: x + _ROUND - _ROUND rounds x to an integer
_LOW = -50.0    # exp(-50) < 2^-72: added to a sum >= 1 it never changes a bit, so it is 0 here
_HIGH = 709.0   # the largest exponent whose 2^n scale is a normal double
_OVERFLOW = 709.782712893384  # log(DBL_MAX): above this exp is inf (conf becomes 0)

# contract: fused mul-add. error_model="numpy": no zero-division check on `1.0 / s` (s >= 1
# here), which would keep that loop scalar.
_jit = numba.njit(nogil=True, cache=True, fastmath={"contract"}, error_model="numpy")


@numba.njit(inline="always", fastmath={"contract"})
def _exp(x: float) -> float:
    """exp(x) for x <= 0 to 1 ulp; exactly 0 below _LOW (see above), inf above _OVERFLOW."""
    xc = min(max(x, _LOW), _HIGH)
    n = (xc * _LOG2E + _ROUND) - _ROUND            # nearest integer to x / ln 2
    r = (xc - n * _LN2_HI) - n * _LN2_LO           # |r| <= ln(2) / 2
    p = 1.0 / 6227020800.0                         # Taylor to r^13 / 13!: error < 2^-56
    p = p * r + 1.0 / 479001600.0
    p = p * r + 1.0 / 39916800.0
    p = p * r + 1.0 / 3628800.0
    p = p * r + 1.0 / 362880.0
    p = p * r + 1.0 / 40320.0
    p = p * r + 1.0 / 5040.0
    p = p * r + 1.0 / 720.0
    p = p * r + 1.0 / 120.0
    p = p * r + 1.0 / 24.0
    p = p * r + 1.0 / 6.0
    p = p * r + 0.5
    p = p * r + 1.0
    p = p * r + 1.0
    e = p * np.int64((np.int64(n) + 1023) << 52).view(np.float64)  # times 2^n
    if x < _LOW:
        e = 0.0
    if x > _OVERFLOW:
        e = np.inf
    return e


@_jit
def exp_array(x: np.ndarray) -> np.ndarray:
    """`_exp` over an array (what the tests compare with `np.exp`)."""
    out = np.empty_like(x)
    for i in range(x.size):
        out.flat[i] = _exp(x.flat[i])
    return out


@numba.njit(inline="always")
def _floor_bin(conf: float, n_bins: int, lower: np.ndarray) -> int:
    """Right-closed bin of conf by the floor rule (branch-free, so a loop of it vectorises)."""
    b = min(max(int(conf * n_bins), 0), n_bins)
    b -= 1 if conf <= lower[b] else 0
    return min(max(b, 0), n_bins - 1)


@numba.njit(inline="always")
def _bin(conf: float, n_bins: int, lower: np.ndarray, inner: np.ndarray,
         use_floor: bool) -> int:
    """Right-closed bin of conf (metrics.uniform_bin_ids' rule), clipped to a valid index."""
    if use_floor:
        return _floor_bin(conf, n_bins, lower)
    return min(max(np.searchsorted(inner, conf), 0), n_bins - 1)


@numba.njit(inline="always")
def _add_block(conf, bins, correct, start, rows, acc, out):
    """out (bins x 3) += the sums of a block, through 4 interleaved partial histograms:
    consecutive rows often fall in the same bin, and one histogram would make every add
    wait for the previous one's store."""
    acc[:] = 0.0
    for i in range(rows):
        lane, b = i & 3, bins[i]
        acc[lane, b, 0] += 1.0
        acc[lane, b, 1] += correct[start + i]
        acc[lane, b, 2] += conf[i]
    for lane in range(4):
        out += acc[lane]


@_jit
def _temperature_chunk(gaps, correct, cs, n_bins, lower, inner, use_floor, lo, hi, out):
    """Add the bin sums of rows lo:hi for every c to out (values x bins x 3)."""
    m = gaps.shape[0]
    s = np.empty(_BLOCK)
    bins = np.empty(_BLOCK, np.int64)
    acc = np.empty((4, n_bins, 3))
    for start in range(lo, hi, _BLOCK):
        rows = min(_BLOCK, hi - start)
        block_correct = correct[start:start + rows]
        for g in range(cs.shape[0]):
            c = cs[g]
            for i in range(rows):
                s[i] = 1.0                       # exp(0) of the top entry
            for j in range(m):
                # a contiguous 1-D slice: `gaps[j, start + i]` compiles to a gather (numba
                # cannot prove the index non-negative), this to plain vector loads
                col = gaps[j][start:start + rows]
                for i in range(rows):
                    s[i] += _exp(col[i] / c)
            if use_floor:                        # two loops, so that the common one vectorises
                for i in range(rows):
                    s[i] = 1.0 / s[i]
                    bins[i] = _floor_bin(s[i], n_bins, lower)
            else:
                for i in range(rows):
                    s[i] = 1.0 / s[i]
                    bins[i] = _bin(s[i], n_bins, lower, inner, False)
            _add_block(s, bins, block_correct, 0, rows, acc, out[g])


@_jit
def _smoothing_chunk(q, top, labels, deltas, n_bins, lower, inner, use_floor, lo, hi, out):
    """Label smoothing of the k x N renormalised rows q: per delta, the top column loses
    delta, the others gain delta / (k - 1); the new arg-max (first on ties) and its value are
    the prediction and confidence, correct when it is the row's label."""
    k = q.shape[0]
    for g in range(deltas.shape[0]):
        delta = deltas[g]
        add = delta / (k - 1)
        for i in range(lo, hi):
            t = top[i]
            best, conf = 0, q[0, i] - delta if t == 0 else q[0, i] + add
            for j in range(1, k):
                v = q[j, i] - delta if j == t else q[j, i] + add
                if v > conf:
                    best, conf = j, v
            b = _bin(conf, n_bins, lower, inner, use_floor)
            out[g, b, 0] += 1.0
            out[g, b, 1] += 1.0 if best == labels[i] else 0.0
            out[g, b, 2] += conf


@_jit
def _confidence_chunk(conf, correct, n_bins, lower, inner, use_floor, lo, hi, out):
    """Bin sums of given confidences (one value): the reliability diagram in one pass."""
    for i in range(lo, hi):
        b = _bin(conf[i], n_bins, lower, inner, use_floor)
        out[0, b, 0] += 1.0
        out[0, b, 1] += correct[i]
        out[0, b, 2] += conf[i]


# ---------------------------------------------------------------- drivers


def default_threads() -> int:
    return max(1, min(len(os.sched_getaffinity(0)), 8))


@lru_cache(maxsize=64)
def _edges(n_bins: int) -> tuple[np.ndarray, np.ndarray, bool]:
    """(lower edges for the floor rule, inner edges for the fallback search, use_floor)."""
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    lower = _floor_lower_edges(n_bins)
    return (edges if lower is None else np.asarray(lower)), edges[1:-1].copy(), lower is not None


def _run(kernel, n: int, n_values: int, n_bins: int, args: tuple,
         threads: int | None) -> np.ndarray:
    """Score rows in fixed chunks on a thread pool; (values x bins x 3) sums in chunk order."""
    lower, inner, use_floor = _edges(n_bins)
    n_chunks = max(1, min(_MAX_CHUNKS, n // _MIN_CHUNK))
    bounds = np.linspace(0, n, n_chunks + 1).astype(np.int64)
    parts = np.zeros((n_chunks, n_values, n_bins, 3))

    def score(i: int) -> None:
        kernel(*args, n_bins, lower, inner, use_floor, bounds[i], bounds[i + 1], parts[i])

    map_chunks(score, n_chunks, threads or default_threads())
    return parts.sum(axis=0)


def map_chunks(score: Callable[[int], None], n_chunks: int, workers: int) -> None:
    """score(i) for every chunk i on up to `workers` threads (the compiled kernels release
    the GIL); in this thread when one is enough. Shared with `topk_kernel`."""
    workers = min(workers, n_chunks)
    if workers <= 1:
        for i in range(n_chunks):
            score(i)
    else:
        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(score, range(n_chunks)))


def _as_correct(correct: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(correct, dtype=np.float64)


def temperature_bin_sums(gaps: np.ndarray, correct: np.ndarray, cs: np.ndarray,
                         n_bins: int = 10, threads: int | None = None) -> np.ndarray:
    """(values x bins x 3) sums (`SUMS`) of conf(c) = 1 / (1 + sum_j exp(gaps[j] / c)).

    `gaps` is (k - 1) x N: each non-top score minus the top one (<= 0 when the top is the
    row's maximum; a positive gap is allowed and lowers the confidence), `correct` N
    booleans, `cs` the temperatures (> 0). Trusted: the callers validated them.
    """
    gaps = np.ascontiguousarray(gaps, dtype=np.float64)
    cs = np.ascontiguousarray(cs, dtype=np.float64).ravel()
    return _run(_temperature_chunk, gaps.shape[1], len(cs), n_bins,
                (gaps, _as_correct(correct), cs), threads)


def smoothing_bin_sums(q: np.ndarray, labels: np.ndarray, deltas: np.ndarray,
                       n_bins: int = 10, threads: int | None = None) -> np.ndarray:
    """(values x bins x 3) sums of `calibrate.label_smooth(q, delta)`'s top-1 for each delta.

    `q` is N x k rows (renormalised, k >= 2), `labels` the gold column or -1.
    """
    q = np.asarray(q, dtype=np.float64)
    top = np.argmax(q, axis=1)  # first arg-max, as label_smooth's mask
    deltas = np.ascontiguousarray(deltas, dtype=np.float64).ravel()
    return _run(_smoothing_chunk, len(q), len(deltas), n_bins,
                (np.ascontiguousarray(q.T), top, np.ascontiguousarray(labels, np.int64),
                 deltas), threads)


def confidence_bin_sums(confidence: np.ndarray, correct: np.ndarray, n_bins: int = 10,
                        threads: int | None = None) -> np.ndarray:
    """(bins x 3) sums of given confidences in [0, 1]."""
    conf = np.ascontiguousarray(confidence, dtype=np.float64)
    return _run(_confidence_chunk, len(conf), 1, n_bins, (conf, _as_correct(correct)),
                threads)[0]


def ece_from_sums(sums: np.ndarray) -> np.ndarray:
    """ECE per value from (..., bins x 3) sums: sum_b |correct_b - conf_b| / n."""
    n = sums[..., 0].sum(axis=-1)
    return np.abs(sums[..., 1] - sums[..., 2]).sum(axis=-1) / n
