"""The top-`width` logits and the log-normaliser of float32 CPU logit rows, compiled.

Extraction needs, per answer position, the teacher's top-100 logits (the kept top-5 and the
coverage statistics) and logsumexp over the vocabulary (a kept token's probability is
exp(logit - lse)). torch's `topk(.., 100)` over a 32k vocabulary and its `logsumexp` (not
fused: max, subtract, exp, sum and log are separate passes) cost a noticeable share of a small
teacher's forward pass on a CPU; this does both in one pass per row
(`benchmarks/bench_extract.py` times extraction against the bare forward):

- **top-width by block maxima.** torch's `amax` over a [B, V / 32, 32] view gives each block
  of 32 logits its maximum. Any t with at least `width` block maxima >= t is a lower bound on
  the width-th largest logit (each of those blocks holds a value >= t), so the top `width`
  all lie in blocks whose maximum is >= t: only those are scanned, their values >= t
  collected, and those few sorted (stable: the lower id first on ties). t is found by
  bisection on the block maxima (`_threshold`: branch-free counting passes, which vectorise,
  where a selection such as `np.partition` branches on every comparison), stopped once at
  most 25% more blocks than needed qualify.
- **logsumexp** = max + log(sum exp(x - max)) with a float32 `exp` (the Cody-Waite reduction
  of `ece_kernel._exp` with a degree-7 polynomial: within 1 float32 ulp, tested) into 32
  float32 partial sums that LLVM vectorises, added together in float64. Its
  error is that of float32 logits (~1e-7 relative), the same as torch's float32 logsumexp.

A NaN or +inf logit (or a row of only -inf) makes the row's normaliser NaN, so every
probability of the row is NaN (torch gives NaN for some of them; its ids are then the first
`width`); -inf logits (masked tokens) count as probability 0. Rows are split over up to
`torch.get_num_threads()` threads, `ROWS_PER_THREAD` rows at least each (the kernel releases
the GIL).
"""

from __future__ import annotations

import numba
import numpy as np
import torch

from .ece import map_chunks

BLOCK = 32   # logits per block maximum
_LANES = 32  # independent partial sums in the exp-sum loop (two AVX-512 registers)
ROWS_PER_THREAD = 512  # fewer rows per thread cost more in hand-offs than they save

_f32 = np.float32
_LOG2E = _f32(1.4426950408889634)
_LN2_HI = _f32(0.693145751953125)       # ln 2 split so that n * _LN2_HI is exact in float32
_LN2_LO = _f32(1.428606765330187e-06)
_ROUND = _f32(12582912.0)               # 1.5 * 2^23: x + _ROUND - _ROUND rounds to an integer
_LOW = _f32(-87.0)                      # exp(-87) ~ 1.6e-38, the smallest normal float32 scale
_ZERO = _f32(0.0)
_P7, _P6, _P5, _P4 = _f32(1 / 5040), _f32(1 / 720), _f32(1 / 120), _f32(1 / 24)
_P3, _P2, _ONE = _f32(1 / 6), _f32(0.5), _f32(1.0)

_jit = numba.njit(nogil=True, cache=True, fastmath={"contract"}, error_model="numpy")


@numba.njit(inline="always", fastmath={"contract"})
def _exp32(x):
    """exp(x) in float32 for x <= 0: 0 below _LOW (and at -inf), NaN for NaN."""
    xc = max(x, _LOW)
    n = (xc * _LOG2E + _ROUND) - _ROUND
    r = (xc - n * _LN2_HI) - n * _LN2_LO       # |r| <= ln(2) / 2
    p = _P7 * r + _P6                           # Taylor to r^7 / 7!: error < 2^-26
    p = p * r + _P5
    p = p * r + _P4
    p = p * r + _P3
    p = p * r + _P2
    p = p * r + _ONE
    p = p * r + _ONE
    e = p * np.int32((np.int32(n) + 127) << 23).view(np.float32)  # times 2^n
    if x < _LOW:
        e = _ZERO
    if x != x:
        e = x
    return e


@_jit
def exp32_array(x: np.ndarray) -> np.ndarray:
    """`_exp32` over a float32 array (what the tests compare with float64 `np.exp`)."""
    out = np.empty_like(x)
    for i in range(x.size):
        out[i] = _exp32(x[i])
    return out


@numba.njit(inline="always")
def _count_at_least(values, t):
    c = 0
    for b in range(values.size):  # no branch: LLVM vectorises the compare-and-add
        c += values[b] >= t
    return c


@numba.njit(inline="always")
def _threshold(blocks, width, hi):
    """A t with at least `width` of the block maxima >= t and, where bisection gets there, at
    most width + width / 4 of them; -inf when fewer than `width` are finite. `hi` is their
    (finite) maximum."""
    lo, finite = np.inf, 0
    for b in range(blocks.size):
        if blocks[b] > -np.inf:
            lo = min(lo, blocks[b])
            finite += 1
    if finite < width:
        return -np.inf                   # -inf logits may be needed to fill the top `width`
    if _count_at_least(blocks, hi) >= width:
        return hi                        # ties at the maximum
    n_lo = finite                        # invariant: n_lo = #(blocks >= lo) >= width
    for _ in range(32):
        if n_lo <= width + width // 4:
            break
        mid = lo + (hi - lo) * _f32(0.5)
        if not lo < mid < hi:            # float32 resolution reached
            break
        n = _count_at_least(blocks, mid)
        if n >= width:
            lo, n_lo = mid, n
        else:
            hi = mid
    return lo


@_jit
def _rows(x, bmax, width, lo, hi, top, ids, lse):
    """Rows lo:hi of x (B x V float32) with their block maxima bmax (B x nb)."""
    v = x.shape[1]
    nb = bmax.shape[1]
    cand_v = np.empty(v, np.float32)
    cand_i = np.empty(v, np.int64)
    acc = np.empty(_LANES, np.float32)
    for r in range(lo, hi):
        row, blocks = x[r], bmax[r]
        m = blocks.max()                         # NaN if any block (so any logit) is NaN
        if not np.isfinite(m):                   # NaN, +inf or all -inf logits:
            for j in range(width):               # no finite normaliser, every p is NaN
                top[r, j] = row[j]
                ids[r, j] = j
            lse[r] = np.nan
            continue
        t = _threshold(blocks, width, m)
        n = 0
        for b in range(nb):                      # only blocks that can hold a top value
            if blocks[b] >= t:
                for i in range(b * BLOCK, min(v, (b + 1) * BLOCK)):
                    if row[i] >= t:
                        cand_v[n] = row[i]
                        cand_i[n] = i
                        n += 1
        if n < width:                            # impossible by the bound above; guards memory
            raise RuntimeError("topk_kernel: fewer candidates than the width")
        order = np.argsort(-cand_v[:n], kind="mergesort")[:width]
        for j in range(width):
            top[r, j] = cand_v[order[j]]
            ids[r, j] = cand_i[order[j]]
        acc[:] = 0.0
        full = v - v % _LANES
        for i in range(0, full, _LANES):
            for lane in range(_LANES):           # vectorised: 32 independent sums
                acc[lane] += _exp32(row[i + lane] - m)
        s = 0.0
        for lane in range(_LANES):
            s += acc[lane]
        for i in range(full, v):
            s += _exp32(row[i] - m)
        lse[r] = m + np.log(s)


def top_logits(logits: torch.Tensor, width: int
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(top logits [B, width] float32, their ids [B, width] int64, logsumexp [B, 1] float32)
    of float32 CPU logits [B, V], like `torch.topk(logits, width)` and `torch.logsumexp`.
    Ties are broken towards the lower id."""
    x = logits.detach().contiguous()
    b, v = x.shape
    if not 1 <= width <= v:
        raise ValueError(f"width must be in 1..{v}, got {width}")
    full = v - v % BLOCK
    parts = [x[:, :full].view(b, full // BLOCK, BLOCK).amax(-1)] if full else []
    if full < v:
        parts.append(x[:, full:].amax(-1, keepdim=True))
    bmax = torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]
    arr, blocks = x.numpy(), np.ascontiguousarray(bmax.numpy())
    top = np.empty((b, width), np.float32)
    ids = np.empty((b, width), np.int64)
    lse = np.empty(b, np.float64)
    # a thread hand-off only pays for many rows (torch's OpenMP workers still spin after its
    # own parallel regions); an extraction batch of 64 rows runs in this thread
    chunks = max(1, min(torch.get_num_threads(), b // ROWS_PER_THREAD))
    bounds = np.linspace(0, b, chunks + 1).astype(np.int64)

    def score(i: int) -> None:
        _rows(arr, blocks, width, bounds[i], bounds[i + 1], top, ids, lse)

    map_chunks(score, chunks, chunks)
    return (torch.from_numpy(top), torch.from_numpy(ids),
            torch.from_numpy(lse.astype(np.float32)[:, None]))
