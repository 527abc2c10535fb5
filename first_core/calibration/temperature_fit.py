"""The NLL temperature fit (Guo et al. 2017): the T minimising the mean negative
log-likelihood of the gold entries under softmax(s / T), for rows of scores s.

One solver for every place that fits a temperature by likelihood:

- post-hoc temperature scaling of a trained model (`posthoc`): s = the model's logits over
  the whole vocabulary at the answer position, or at every response token;
- the `nll` strategy of the FIRST transform and of classic scaling on a stored top-k
  (`calibrate.fit_temperature_nll`): s = p (`first`) or log p (`logit`);
- the dashboard's "fit T on validation (NLL)" (`views.rescaling.fit_temperature`): s = the
  answer letters' scores of the slider's current mode.

Why a safeguarded Newton on beta = 1 / T rather than a generic optimiser: the mean NLL
f(beta) = mean_i [logsumexp(beta s_i) - beta s_i,gold] is convex in beta (a log-sum-exp of
functions linear in beta, minus a linear term), with f'(beta) = mean_i (E_beta[s_i] -
s_i,gold) and f''(beta) = mean_i Var_beta[s_i] >= 0. So f' is increasing: its root is the
optimum, a bracket on it always holds the optimum, and Newton steps, falling back to
bisection whenever a step leaves the bracket, converge in a handful of passes over the rows
(each pass computes f' and f'' together). The result is exact to ~1e-10 in beta, not a
grid point.

Rows are N x m (`axis=1`) or m x N (`axis=0`, the dashboard's transposed layout, read
without a copy); entries of -inf (log 0) have weight 0 at every T. Rows whose gold entry is
-inf (probability 0 at every T, an infinite NLL) cannot be fitted and are left out, counted
in the result. Worked in blocks of rows in float64, so a float32 N x V logit matrix of a real
vocabulary is never copied whole.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numba
import numpy as np

from ..kernels.ece import fast_exp

T_MIN, T_MAX = 1e-3, 1e3  # separable data drives T to 0, constant scores to infinity
BLOCK_BYTES = 1 << 25   # float64 per block of rows (32 MiB): its temporaries stay bounded
CACHE_BYTES = 1 << 29   # prepared blocks are kept between passes up to this size (512 MiB)
_ABSENT = -1e150        # stands for -inf: weight exp(beta * -1e150) = 0, its square finite
NLL_FLOOR = 1e-12       # a mean NLL this close to its infimum 0 is fitted
_GROUP = 512            # rows whose running sums the kernel keeps in cache


@dataclass(frozen=True)
class TemperatureFit:
    """The fitted T and what the fit saw: `nll_before` at T = 1, `nll_after` at T."""

    temperature: float
    nll_before: float
    nll_after: float
    n_rows: int            # rows fitted on
    n_left_out: int        # rows whose gold entry is -inf (probability 0 at every T)
    iterations: int
    at_limit: bool         # T was clipped to [T_MIN, T_MAX]


def _prepare(scores: np.ndarray, gold: np.ndarray, axis: int, lo: int, hi: int
             ) -> tuple[np.ndarray, np.ndarray, int]:
    """Rows lo..hi as (s, g, left out): s is m x rows float64 (C order: each score index a
    contiguous run over the rows, so the kernel's inner loop vectorises across rows), each
    row centred at its max, -inf as `_ABSENT`; g the gold entries; rows whose gold is -inf
    dropped and counted."""
    part = scores[lo:hi].T if axis == 1 else scores[:, lo:hi]
    s = np.array(part, dtype=np.float64, order="C")
    if np.isnan(s).any() or (s == np.inf).any():
        raise ValueError("scores: NaN or +inf values (expected finite scores or -inf)")
    g = s[gold[lo:hi], np.arange(s.shape[1])]
    fit = np.isfinite(g)
    if not fit.all():
        s, g = np.ascontiguousarray(s[:, fit]), g[fit]
    top = s.max(axis=0)
    s -= top
    s[np.isneginf(s)] = _ABSENT
    return s, g - top, int((~fit).sum())


@numba.njit(nogil=True, cache=True, fastmath={"contract"}, error_model="numpy")
def _moments(s: np.ndarray, g: np.ndarray, beta: float) -> np.ndarray:
    """Sums over a block's rows (the columns of `s`) of the NLL, f'(beta) = E[s] - s_gold
    and f''(beta) = Var[s] under softmax(beta * s), in one fused pass per score index over
    cache-sized groups of rows (numpy would need about ten passes and as many temporaries);
    the inner loop runs across rows, so it vectorises with `fast_exp`. Rows are added in
    order: every run gives the same bits.

    A weight exp(beta * s) below exp(-50) counts as 0: next to the top's weight 1 it cannot
    change a sum (and it turns `_ABSENT` into an exact 0). Var as E[s^2] - E[s]^2 can lose
    a few digits to cancellation, which only slows Newton a little: the optimum is where
    the exact f' vanishes."""
    m, n = s.shape
    sums = np.zeros(3)
    total = np.empty(_GROUP)
    first = np.empty(_GROUP)
    second = np.empty(_GROUP)
    for lo in range(0, n, _GROUP):
        rows = min(_GROUP, n - lo)
        total[:rows] = 0.0
        first[:rows] = 0.0
        second[:rows] = 0.0
        for j in range(m):
            for i in range(rows):
                x = s[j, lo + i]
                y = beta * x
                w = fast_exp(y) if y > -50.0 else 0.0
                total[i] += w
                first[i] += w * x
                second[i] += w * x * x
        for i in range(rows):
            mean = first[i] / total[i]
            sums[0] += math.log(total[i]) - beta * g[lo + i]
            sums[1] += mean - g[lo + i]
            sums[2] += max(second[i] / total[i] - mean * mean, 0.0)
    return sums


def fit_temperature(scores: np.ndarray, gold: np.ndarray, *, axis: int = 1,
                    max_iter: int = 100, tol: float = 1e-10) -> TemperatureFit:
    """The T minimising the mean NLL of `gold` under softmax(scores / T) (module doc).

    `scores`: N x m (`axis=1`) or m x N (`axis=0`) finite or -inf values; `gold`: N column
    indices into each row. Raises ValueError on bad shapes, NaN or +inf scores, gold out of
    range, or when no row can be fitted.
    """
    scores = np.asarray(scores)
    if scores.ndim != 2 or axis not in (0, 1):
        raise ValueError(f"scores: expected a 2-d array and axis 0 or 1, got shape "
                         f"{scores.shape} and axis {axis}")
    n, m = (scores.shape[0], scores.shape[1]) if axis == 1 else scores.shape[::-1]
    gold = np.asarray(gold)
    if gold.shape != (n,) or not np.issubdtype(gold.dtype, np.integer):
        raise ValueError(f"gold: expected {n} integer column indices, got {gold.dtype} "
                         f"of shape {gold.shape}")
    if n == 0:
        raise ValueError("scores: no rows to fit a temperature on")
    if gold.min() < 0 or gold.max() >= m:
        raise ValueError(f"gold: column indices must be in [0, {m}), got "
                         f"{gold.min()}..{gold.max()}")
    step = max(1, BLOCK_BYTES // (8 * max(m, 1)))
    spans = [(lo, min(lo + step, n)) for lo in range(0, n, step)]
    cached = [_prepare(scores, gold, axis, lo, hi) for lo, hi in spans] \
        if 8 * n * m <= CACHE_BYTES else None
    left_out = (sum(c[2] for c in cached) if cached is not None else
                sum(_prepare(scores, gold, axis, lo, hi)[2] for lo, hi in spans))
    kept = n - left_out
    if kept == 0:
        raise ValueError("no row can be fitted: every gold entry has probability 0")

    def mean_moments(beta: float) -> np.ndarray:
        """Mean NLL, f' and f'' over the fitted rows: one pass over the scores."""
        blocks = cached if cached is not None else (
            _prepare(scores, gold, axis, lo, hi) for lo, hi in spans)
        return sum(_moments(s, g, beta) for s, g, _ in blocks) / kept

    lo, hi = 1.0 / T_MAX, 1.0 / T_MIN  # a bracket on the optimal beta (f' < 0 below it)
    beta, iterations = 1.0, 0
    moments = mean_moments(beta)
    nll_before = moments[0]  # beta = 1: the first step's pass gives it
    for iterations in range(1, max_iter + 1):
        loss, grad, curv = moments
        # separable rows (every gold on top): the NLL falls towards 0 as T -> 0 with f'
        # vanishing exponentially, so Newton crawls; within NLL_FLOOR of 0 is the optimum
        if grad == 0 or loss < NLL_FLOOR:
            break
        if grad < 0:
            lo = beta
        else:
            hi = beta
        # a Newton step of at most a factor 4 (f'' can be tiny far from the optimum), or,
        # when it leaves the bracket, the bracket's geometric midpoint
        step = beta - grad / curv if curv > 0 else (4 * beta if grad < 0 else beta / 4)
        step = min(max(step, beta / 4), 4 * beta)
        if abs(step - beta) <= tol * beta:  # converged: the step no longer moves beta
            beta = step
            break
        beta = step if lo < step < hi else math.sqrt(lo * hi)
        if hi - lo <= tol * lo:  # the bracket has closed on the optimum (or on a limit)
            break
        moments = mean_moments(beta)
    beta = float(np.clip(beta, 1.0 / T_MAX, 1.0 / T_MIN))
    t = 1.0 / beta
    return TemperatureFit(temperature=t, nll_before=float(nll_before),
                          nll_after=float(mean_moments(beta)[0]), n_rows=kept,
                          n_left_out=left_out, iterations=iterations,
                          at_limit=bool(t <= T_MIN * (1 + 1e-9) or t >= T_MAX * (1 - 1e-9)))
