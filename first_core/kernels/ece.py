"""ECE as a function of a transform parameter: one compiled pass over the rows per value.

Both temperature transforms keep each row's arg-max, so correctness does not depend on c and
only the top-1 confidence has to be recomputed for every c:

- FIRST, softmax(p / c):   conf(c) = 1 / (1 + sum_j exp((p_j - p_top) / c))
- classic, softmax(log p / c) = p^(1/c) renormalised:
                           conf(c) = 1 / (1 + sum_j exp((log p_j - log p_top) / c))
                                   = 1 / sum_j (p_j / p_top)^(1/c)

with the sums over the k - 1 non-top columns. The caller passes the c-independent scores
(p or log p, k x N, `temperature_bin_sums`); the kernel takes each block's gaps once, then
does k - 1 exponentials per row and value, no renormalised matrix. Label smoothing
(`smoothing_bin_sums`) can move the arg-max, so it re-derives the prediction per delta from
the renormalised rows, with the same operations as `calibrate.label_smooth` (no
transcendental function: those confidences are bit-identical).

Each confidence is binned as it is made, by scikit-learn's rule (edges linspace(0, 1, n + 1),
right-closed bins, 0 in the first; the floor shortcut of `metrics.uniform_bin_ids`), and three
sums per (value, bin) are accumulated in the same pass: count, correct count, confidence sum.
ECE, MCE and the reliability diagram all follow from those (`ece_from_sums`).

Why numba, and why its own `exp`: a compiled loop fuses exp, sum, reciprocal, binning and the
per-bin sums into one pass over cache-resident blocks, where numpy needs ~8 passes and a
`bincount` that holds the GIL. numba's `math.exp` is glibc's scalar exp (about 4 ns here;
the pip build of llvmlite has no SVML), so `_exp` below is the textbook Cody-Waite reduction
plus a degree-13 Taylor polynomial that LLVM vectorises (about 0.8 ns on an AVX-512 machine,
like numpy's exp there; about 2 ns on AVX2, where numpy's float64 exp is scalar); it is within
1 ulp of numpy's `np.exp` and exact at 0 (tested), which is what keeps the curves equal to the
numpy reference to 1e-12 and values on bin edges on them. On AVX2 (16 vector registers, no
vector double -> int64 conversion) the loops are latency- and register-bound, so the kernel
multiplies by 1/c instead of dividing, scores two columns per pass, and bins in floating
point (benchmarks/README.md has the figures).
torch was the other candidate: its float64 `exp` measured 1.7 ns per value here (Sleef, one
thread) and it has no fused binning, so the compiled loop is the faster of the two.

Rows are split into a fixed number of chunks (it depends on N only) that a small thread pool
scores (the kernels release the GIL), and chunk sums are added in chunk order: the result
does not depend on the number of threads.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache

import numba
import numpy as np

from .bin_edges import floor_lower_edges

SUMS = ("count", "correct", "confidence")  # the last axis of every bin-sum array
_BLOCK = 2048          # rows per inner block: its gaps and confidences stay in L1/L2
_MAX_CHUNKS = 64       # chunks per call at most (each holds one values x bins x 3 array)
_MIN_CHUNK = 8 * _BLOCK

_LOG2E = 1.4426950408889634
_LN2_HI = 6.93147180369123816490e-01   # ln 2 split in two (fdlibm's constants) so that
_LN2_LO = 1.90821492927058770002e-10   # x - n ln 2 is exact to double precision
_ROUND = 6755399441055744.0            # 1.5 * 2^52: x + _ROUND - _ROUND rounds x to an integer
_LOW = -50.0    # exp(-50) < 2^-72: added to a sum >= 1 it never changes a bit, so every x
                # below it (-inf included) may give exp(-50): no compare-and-select for 0
_HIGH = 709.0   # the largest exponent whose 2^n scale is a normal double
_OVERFLOW = 709.782712893384  # log(DBL_MAX): above this exp is inf (conf becomes 0)

# contract: fused mul-add. error_model="numpy": no zero-division check on `1.0 / s` (s >= 1
# here), which would keep that loop scalar.
_jit = numba.njit(nogil=True, cache=True, fastmath={"contract"}, error_model="numpy")


# Taylor coefficients 1/k! of the tail, r^4/4! .. r^13/13!
_A4, _A5, _A6, _A7, _A8 = 1 / 24, 1 / 120, 1 / 720, 1 / 5040, 1 / 40320
_A9, _A10, _A11, _A12, _A13 = 1 / 362880, 1 / 3628800, 1 / 39916800, 1 / 479001600, 1 / 6227020800
_ROUND_BITS = int(np.float64(_ROUND).view(np.int64))


@numba.njit(inline="always", fastmath={"contract"})
def _exp(x: float) -> float:
    """exp(x) for x <= 0 to 1 ulp; exp(_LOW) ~ 2e-22 below _LOW (see above), inf above
    _OVERFLOW. Written for a short dependency chain: the loops that call it are
    latency-bound, on AVX2 most of all (its ~20 constants do not fit AVX2's 16 registers)."""
    xc = min(max(x, _LOW), _HIGH)
    t = xc * _LOG2E + _ROUND                       # n sits in the low bits of t's mantissa
    n = t - _ROUND                                 # nearest integer to x / ln 2
    r = (xc - n * _LN2_HI) - n * _LN2_LO           # |r| <= ln(2) / 2
    # Taylor to r^13 / 13! (error < 2^-56): 1 + (r + r^2 (1/2 + r/6)) + r^4 tail, with the
    # small tail = 1/4! + r/5! + ... + r^9/13! by Estrin's scheme: independent short chains
    # of fused mul-adds instead of one chain of thirteen
    r2 = r * r
    r4 = r2 * r2
    tail = ((_A4 + _A5 * r) + (_A6 + _A7 * r) * r2
            + ((_A8 + _A9 * r) + (_A10 + _A11 * r) * r2 + (_A12 + _A13 * r) * r4) * r4)
    p = 1.0 + ((r + r2 * (0.5 + r * (1.0 / 6.0))) + r4 * tail)
    # times 2^n, built from t's bits: integer ops only (AVX2 has no vector double -> int64)
    e = p * np.int64((np.float64(t).view(np.int64) - _ROUND_BITS + 1023) << 52).view(np.float64)
    if x > _OVERFLOW:
        e = np.inf
    return e


fast_exp = _exp  # for other compiled loops (temperature_fit): the same 1-ulp exp


@_jit
def exp_array(x: np.ndarray) -> np.ndarray:
    """`_exp` over an array (what the tests compare with `np.exp`)."""
    out = np.empty_like(x)
    for i in range(x.size):
        out.flat[i] = _exp(x.flat[i])
    return out


@numba.njit(inline="always")
def _floor_bin(conf: float, n_bins: int, step: float) -> float:
    """Right-closed bin of conf by the floor rule, as a float. All in floating point and
    branch-free, so a loop of it vectorises on AVX2 too (which has no vector double -> int64
    conversion and slow gathers): the lower edge of bin b is b * step, which is exactly
    linspace's edge for inner b (`_edges` checks it); at b = 0 and b = n_bins the clip decides
    alone, as with metrics' table (-inf and 1.0 there)."""
    b = min(max(math.floor(conf * n_bins), 0.0), float(n_bins))
    b -= 1.0 if conf <= b * step else 0.0
    return min(max(b, 0.0), n_bins - 1.0)


@numba.njit(inline="always")
def _bin(conf: float, n_bins: int, step: float, inner: np.ndarray, use_floor: bool) -> int:
    """Right-closed bin of conf (metrics.uniform_bin_ids' rule), clipped to a valid index."""
    if use_floor:
        return int(_floor_bin(conf, n_bins, step))
    return min(max(np.searchsorted(inner, conf), 0), n_bins - 1)


@numba.njit(inline="always")
def _add_block(conf, bins, correct, start, rows, acc, out):
    """out (bins x 3) += the sums of a block, through 4 interleaved partial histograms:
    consecutive rows often fall in the same bin, and one histogram would make every add
    wait for the previous one's store."""
    acc[:] = 0.0
    for i in range(rows):
        lane, b = i & 3, int(bins[i])
        acc[lane, b, 0] += 1.0
        acc[lane, b, 1] += correct[start + i]
        acc[lane, b, 2] += conf[i]
    for lane in range(4):
        out += acc[lane]


@_jit
def _temperature_chunk(scores, top, correct, cs, n_bins, step, inner, use_floor, lo, hi, out):
    """Add the bin sums of rows lo:hi for every c to out (values x bins x 3)."""
    m = scores.shape[0] - 1
    gaps = np.empty((max(m, 1), _BLOCK))        # the block's gaps, built once for all c
    s = np.empty(_BLOCK)
    bins = np.empty(_BLOCK)                      # bin ids as floats (see _floor_bin)
    acc = np.empty((4, n_bins, 3))
    for start in range(lo, hi, _BLOCK):
        rows = min(_BLOCK, hi - start)
        block_correct = correct[start:start + rows]
        # gaps[j] = the j-th non-top score minus the top one, in column order. Built here,
        # per block, rather than by the caller: a (k - 1) x N array costs more to allocate
        # and fill at N = 10M than the whole 20-value curve (page faults, memory traffic).
        for i in range(rows):                    # s holds z_top until the first c resets it
            s[i] = scores[top[start + i], start + i]
        for j in range(m):
            for i in range(rows):
                r = start + i
                gaps[j, i] = (scores[j, r] if top[r] > j else scores[j + 1, r]) - s[i]
        for g in range(cs.shape[0]):
            # one division per value, a product per entry: the divider is slow and would sit
            # on every exp's critical path (the product is within 1 ulp of the quotient)
            inv = 1.0 / cs[g]
            for i in range(rows):
                s[i] = 1.0                       # exp(0) of the top entry
            # two columns per pass: two independent exp chains per row keep the FP units
            # busy where one chain's latency would leave them idle (AVX2 machines most of all).
            # Contiguous 1-D slices: `gaps[j, i]` compiles to a gather (numba cannot prove
            # the index non-negative), these to plain vector loads.
            for j in range(0, m - 1, 2):
                a, b = gaps[j][:rows], gaps[j + 1][:rows]
                for i in range(rows):
                    s[i] += _exp(a[i] * inv) + _exp(b[i] * inv)
            if m % 2:
                a = gaps[m - 1][:rows]
                for i in range(rows):
                    s[i] += _exp(a[i] * inv)
            if use_floor:                        # two loops, so that the common one vectorises
                for i in range(rows):
                    s[i] = 1.0 / s[i]
                    bins[i] = _floor_bin(s[i], n_bins, step)
            else:
                for i in range(rows):
                    s[i] = 1.0 / s[i]
                    bins[i] = _bin(s[i], n_bins, step, inner, False)
            _add_block(s, bins, block_correct, 0, rows, acc, out[g])


@_jit
def _smoothing_chunk(q, top, labels, deltas, n_bins, step, inner, use_floor, lo, hi, out):
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
            b = _bin(conf, n_bins, step, inner, use_floor)
            out[g, b, 0] += 1.0
            out[g, b, 1] += 1.0 if best == labels[i] else 0.0
            out[g, b, 2] += conf


@_jit
def _confidence_chunk(conf, correct, n_bins, step, inner, use_floor, lo, hi, out):
    """Bin sums of given confidences (one value): the reliability diagram in one pass."""
    for i in range(lo, hi):
        b = _bin(conf[i], n_bins, step, inner, use_floor)
        out[0, b, 0] += 1.0
        out[0, b, 1] += correct[i]
        out[0, b, 2] += conf[i]


# ---------------------------------------------------------------- drivers


def default_threads() -> int:
    return max(1, min(len(os.sched_getaffinity(0)), 8))


@lru_cache(maxsize=64)
def _edges(n_bins: int) -> tuple[float, np.ndarray, bool]:
    """(edge step for the floor rule, inner edges for the fallback search, use_floor).

    The floor rule needs the proof in `bin_edges.floor_lower_edges` and inner edges that are
    exactly b * step (linspace makes them so; checked, never assumed)."""
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    step = 1.0 / n_bins
    use_floor = (floor_lower_edges(n_bins) is not None
                 and np.array_equal(np.arange(1, n_bins) * step, edges[1:-1]))
    return step, edges[1:-1].copy(), use_floor


def _run(kernel, n: int, n_values: int, n_bins: int, args: tuple,
         threads: int | None) -> np.ndarray:
    """Score rows in fixed chunks on a thread pool; (values x bins x 3) sums in chunk order."""
    step, inner, use_floor = _edges(n_bins)
    n_chunks = max(1, min(_MAX_CHUNKS, n // _MIN_CHUNK))
    bounds = np.linspace(0, n, n_chunks + 1).astype(np.int64)
    parts = np.zeros((n_chunks, n_values, n_bins, 3))

    def score(i: int) -> None:
        kernel(*args, n_bins, step, inner, use_floor, bounds[i], bounds[i + 1], parts[i])

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


def temperature_bin_sums(scores: np.ndarray, top: np.ndarray, correct: np.ndarray,
                         cs: np.ndarray, n_bins: int = 10,
                         threads: int | None = None) -> np.ndarray:
    """(values x bins x 3) sums (`SUMS`) of conf(c) = 1 / (1 + sum_j exp((z_j - z_top) / c)).

    `scores` is k x N c-independent scores z (C- or Fortran-ordered: the transpose of N x k
    rows is taken as it is, no copy), `top` the N row indices whose confidence is scored
    (z_top is normally the column's maximum; a larger non-top score is allowed and lowers the
    confidence), `correct` N booleans, `cs` the temperatures (> 0). Trusted: the callers
    validated them.
    """
    scores = np.asarray(scores, dtype=np.float64)
    if not (scores.flags.c_contiguous or scores.flags.f_contiguous):
        scores = np.ascontiguousarray(scores)
    cs = np.ascontiguousarray(cs, dtype=np.float64).ravel()
    return _run(_temperature_chunk, scores.shape[1], len(cs), n_bins,
                (scores, np.ascontiguousarray(top, dtype=np.int64), _as_correct(correct), cs),
                threads)


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
