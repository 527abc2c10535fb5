"""Trustworthy maximization: temperature transforms, label smoothing and their searches.

Transforms of N x k probability rows (see docs/METRICS.md for the formulas):

- `first`: the paper's transform of the teacher's raw top-k probabilities,
  P'(i) = exp(P(i)/c) / sum_j exp(P(j)/c). c = 1 is NOT the identity.
- `logit`: classic temperature scaling, softmax(log p / c) = p^(1/c) renormalised; c = 1 is
  the identity (up to renormalisation).
- `renorm`: p / sum(p), i.e. `logit` at c = 1 (direct distillation); it takes c = 1 only.

One implementation per formula serves numpy arrays and torch tensors: `temperature_scale` and
`label_smooth` pick numpy or torch operations from the input's type and apply the same code,
so the distillation loss can run the transform on tensors with gradients (`log=True` gives
log-probabilities for a KL). numpy input is fully validated; torch input is trusted (only the
scalar arguments are checked) so the training loop never waits on a device sync.

The grid searches score ECE (uniform bins, scikit-learn's edge rule) of the transformed
rows, with the label convention of docs/DESIGN.md: labels[i] = column of the gold token, or -1;
a row is correct when its arg-max column equals the label.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from ..errors import ConfigError
from ..metrics.checks import check_labels, check_n_bins, check_probs, row_reduce

MODES = ("first", "logit", "renorm")
SEARCH_MODES = ("first", "logit")
STRATEGIES = ("grid", "nll")  # how `choose_temperature` picks c
THREADS: int | None = None  # grid-search threads; None = `ece_kernel.default_threads()`


# ---------------------------------------------------------------- numpy / torch operations


class _Ops(NamedTuple):
    log: Callable[[Any], Any]
    exp: Callable[[Any], Any]
    where: Callable[[Any, Any, Any], Any]
    amax: Callable[[Any], Any]        # over the last axis, keeping it
    total: Callable[[Any], Any]       # sum over the last axis, keeping it
    first_max: Callable[[Any], Any]   # bool mask of the first arg-max of the last axis


_NUMPY = _Ops(np.log, np.exp, np.where,
              lambda x: row_reduce(np.maximum, x)[..., None],
              lambda x: row_reduce(np.add, x)[..., None],
              lambda x: np.argmax(x, axis=-1)[..., None] == np.arange(x.shape[-1]))


def _torch_ops() -> _Ops:
    import torch  # lazily: the dashboard's numpy paths should not pay for importing torch

    return _Ops(torch.log, torch.exp, torch.where,
                lambda x: x.amax(dim=-1, keepdim=True),
                lambda x: x.sum(dim=-1, keepdim=True),
                lambda x: x.argmax(dim=-1, keepdim=True)
                == torch.arange(x.shape[-1], device=x.device))


def _prepare(probs, name: str = "probs", check: bool = True) -> tuple[Any, _Ops]:
    """float64 numpy rows (validated unless `check=False`), or a torch tensor as is, with the
    matching operations."""
    if type(probs).__module__.startswith("torch"):
        if probs.ndim < 1 or probs.shape[-1] == 0:
            raise ValueError(f"{name}: expected a tensor of shape (..., k), "
                             f"got {tuple(probs.shape)}")
        return probs, _torch_ops()
    return (check_probs(probs, name) if check else np.asarray(probs, np.float64)), _NUMPY


# ---------------------------------------------------------------- argument checks


def check_temperature(c) -> float:
    """c as a float; ConfigError unless finite and > 0."""
    try:
        value = float(c.detach() if hasattr(c, "detach") else c)
    except (TypeError, ValueError, RuntimeError):
        raise ConfigError(f"c: expected a number > 0, got {c!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise ConfigError(f"c: expected a finite temperature > 0, got {c!r}")
    return value


def check_delta(delta) -> float:
    """delta as a float; ConfigError unless in [0, 1)."""
    try:
        value = float(delta)
    except (TypeError, ValueError):
        raise ConfigError(f"delta: expected a number in [0, 1), got {delta!r}") from None
    if not 0 <= value < 1:  # also rejects NaN
        raise ConfigError(f"delta: expected a value in [0, 1), got {delta!r}")
    return value


def _check_mode(mode: str, allowed: tuple[str, ...] = MODES) -> str:
    if mode not in allowed:
        raise ConfigError(f"mode: expected one of {allowed}, got {mode!r}")
    return mode


# ---------------------------------------------------------------- transforms


def _scores(x, mode: str, ops: _Ops):
    """z = p (`first`) or log p: what the temperature divides, up to a shift per row."""
    if mode == "first":
        return x
    with np.errstate(divide="ignore"):  # log 0 = -inf -> weight 0, as p^(1/c) = 0
        return ops.log(x)


def _centered(x, mode: str, ops: _Ops):
    """z - max z per row: the scores with the row's top at 0 (no overflow in exp)."""
    z = _scores(x, mode, ops)
    return z - ops.amax(z)


def centered_scores(probs, mode: str = "first", *, check: bool = True) -> np.ndarray:
    """z - max z per row (z = p, or log p in `logit`/`renorm`): all of the transform that does
    not depend on c, so `temperature_scale(p, c, mode)` is softmax(centered_scores(p) / c).

    Callers that re-scale the same rows for many c (the dashboard's slider) compute this
    once; `check=False` skips validating rows that were validated when they were loaded.
    """
    x, ops = _prepare(probs, check=check)
    return _centered(x, _check_mode(mode), ops)


def temperature_scale(probs, c: float, mode: str = "first", *, log: bool = False,
                      check: bool = True):
    """Rows rescaled by temperature c in `mode` (`first`, `logit` or `renorm`); keeps arg-max.

    Computed as e = exp((z - max z) / c), e / sum(e), with z = p (`first`) or log p
    (`logit`, `renorm`). With `log=True` returns log-probabilities (z - max)/c - log sum(e).
    Accepts numpy arrays or torch tensors (any leading shape; with tensors, c may be a 0-d
    tensor that requires grad); returns the same kind. `check=False` skips validating numpy
    rows that the caller has already validated (a hot loop over the same rows).
    """
    mode = _check_mode(mode)
    value = check_temperature(c)
    if mode == "renorm" and value != 1.0:
        raise ConfigError(f"c: mode 'renorm' is p / sum(p) (logit at c = 1), got c = {value}")
    x, ops = _prepare(probs, check=check)
    z = _centered(x, mode, ops) / (value if ops is _NUMPY else c)  # a tensor c keeps its grad
    e = ops.exp(z)
    norm = ops.total(e)
    return z - ops.log(norm) if log else e / norm


def label_smooth(probs, delta: float):
    """The paper's label smoothing: top-1 entry - delta, each of the other k - 1 + delta/(k-1).

    Applied to the rows as given (pass p / sum(p) for a distribution, as the pipeline does).
    numpy rows whose top-1 probability is below delta are an error: they would go negative.
    """
    delta = check_delta(delta)
    x, ops = _prepare(probs)
    k = x.shape[-1]
    if k < 2:
        raise ValueError(f"probs: label smoothing needs k >= 2 columns, got {k}")
    if ops is _NUMPY and delta > 0:
        top = x.max(axis=1)
        if top.min() < delta:
            i = int(top.argmin())
            raise ValueError(f"delta: {delta} exceeds the top-1 probability {top[i]:.6g} of "
                             f"row {i}; smoothing would make it negative")
    return ops.where(ops.first_max(x), x - delta, x + delta / (k - 1))


# ---------------------------------------------------------------- searches


@dataclass(frozen=True)
class SearchResult:
    """A grid search's outcome: the whole ECE curve (NaN where a value is invalid) and its
    arg-min. `kind` is `TS` (values are temperatures c) or `LS` (smoothing deltas)."""

    kind: str
    mode: str            # the temperature mode (`renorm` for LS: it smooths p / sum(p))
    n_bins: int
    grid: np.ndarray     # sorted, unique
    ece: np.ndarray      # ECE at each grid value
    best: float
    best_ece: float


def scores_ece_curve(scores: np.ndarray, correct: np.ndarray, grid, n_bins: int = 10,
                     top: int | np.ndarray | None = None) -> np.ndarray:
    """ECE at every c of `grid` for the confidence exp(z_top / c) / sum_j exp(z_j / c) of
    k x N c-independent scores z (`centered_scores(...).T`, or any shift of them per column),
    with fixed correctness: one compiled pass per c. `top` is the row whose confidence is
    scored: one index for every column, a per-column index array, or None for each column's
    first arg-max.

    The dashboard's ECE-vs-c curve (its slider's own conventions) and the grid searches
    go through this; the arrays are trusted (validated by their owner), c must be > 0.
    """
    from ..kernels import ece as ece_kernel

    n = np.shape(scores)[1]
    if n == 0:
        raise ValueError("scores: no predictions to score")
    if top is None:
        top = np.argmax(scores, axis=0)
    sums = ece_kernel.temperature_bin_sums(scores, np.broadcast_to(top, (n,)), correct,
                                           np.asarray(grid, np.float64), check_n_bins(n_bins),
                                           threads=THREADS)
    return ece_kernel.ece_from_sums(sums)


def _ts_curve(p: np.ndarray, labels: np.ndarray, cs: np.ndarray, mode: str,
              n_bins: int) -> np.ndarray:
    """ECE of `temperature_scale(p, c, mode)` for every c, without materialising the rows:
    the arg-max (so correctness) does not depend on c, only the top-1 confidence does. The
    kernel takes differences to the top score, so z = p or log p needs no centring."""
    top = np.argmax(p, axis=1)
    return scores_ece_curve(_scores(p, mode, _NUMPY).T, top == labels, cs, n_bins, top)


def _ls_curve(p: np.ndarray, labels: np.ndarray, deltas: np.ndarray,
              n_bins: int) -> np.ndarray:
    """ECE of `label_smooth(p / sum(p), delta)` per delta; NaN where a row would go negative."""
    from ..kernels import ece as ece_kernel

    q = temperature_scale(p, 1.0, mode="renorm")
    valid = deltas <= q.max(axis=1).min()
    out = np.full(len(deltas), np.nan)
    if valid.any():
        sums = ece_kernel.smoothing_bin_sums(q, labels, deltas[valid], n_bins,
                                             threads=THREADS)
        out[valid] = ece_kernel.ece_from_sums(sums)
    return out


def _clean_grid(grid, valid: Callable[[np.ndarray], np.ndarray], what: str) -> np.ndarray:
    """Sorted unique grid; invalid values are kept (their ECE is NaN) unless none is valid."""
    g = np.unique(np.asarray(grid, dtype=np.float64).ravel())
    with np.errstate(invalid="ignore"):
        if g.size == 0 or not valid(g).any():
            raise ConfigError(f"grid: no valid value (expected {what}), got {g.tolist()}")
    return g


def _search(kind: str, mode: str, curve: Callable[[np.ndarray], np.ndarray], grid,
            default: tuple[np.ndarray, float, float, float], valid, what: str,
            n_bins: int) -> SearchResult:
    """Grid search; with no grid, the paper's two stages: a coarse grid, then fine steps
    around its best value (the returned curve holds both)."""
    if grid is not None:
        values = _clean_grid(grid, valid, what)
        ece = _masked(curve, values, valid)
    else:
        coarse, step, lo, hi = default
        ece_coarse = _masked(curve, coarse, valid)
        best = coarse[np.nanargmin(ece_coarse)]
        fine = np.round(best + step * np.arange(-5, 6), 6)
        fine = np.setdiff1d(fine[(fine >= lo) & (fine < hi) & valid(fine)], coarse)
        values = np.concatenate([coarse, fine])
        ece = np.concatenate([ece_coarse, _masked(curve, fine, valid)])
        order = np.argsort(values)
        values, ece = values[order], ece[order]
    if np.isnan(ece).all():
        raise ValueError(f"grid: no value gives a valid ECE on these probs (for {kind})")
    i = int(np.nanargmin(ece))
    return SearchResult(kind, mode, n_bins, values, ece, float(values[i]), float(ece[i]))


def _masked(curve, values: np.ndarray, valid) -> np.ndarray:
    ok = valid(values)
    out = np.full(len(values), np.nan)
    if ok.any():
        out[ok] = curve(values[ok])
    return out


def _valid_c(values: np.ndarray) -> np.ndarray:
    return np.isfinite(values) & (values > 0)


def _valid_delta(values: np.ndarray) -> np.ndarray:
    return (values >= 0) & (values < 1)


def _coarse(stop: float, step: float = 0.1, start: float = 0.1) -> np.ndarray:
    return np.round(np.arange(start, stop + step / 2, step), 6)


_TS_DEFAULT = {"first": (_coarse(1.0), 0.02, 1e-9, np.inf),   # paper: 0.1 .. 1, then 0.02
               "logit": (_coarse(5.0), 0.02, 1e-9, np.inf)}   # classic optima often lie > 1
_LS_DEFAULT = (_coarse(0.9, start=0.0), 0.02, 0.0, 1.0)


def _topk_inputs(probs, labels) -> tuple[np.ndarray, np.ndarray]:
    p = check_probs(probs)
    return p, check_labels(labels, len(p), p.shape[1])


def search_temperature(probs, labels, grid=None, n_bins: int = 10,
                       mode: str = "first") -> SearchResult:
    """The c minimising ECE of `temperature_scale(probs, c, mode)`, and the whole curve.

    `grid=None` follows the paper: c = 0.1 .. 1.0 in steps of 0.1 (to 5.0 in `logit` mode),
    then steps of 0.02 within +-0.1 of the best. Work is chunked over (values x rows x k), so
    memory stays bounded, and spread over a small thread pool.
    """
    mode = _check_mode(mode, SEARCH_MODES)
    n_bins = check_n_bins(n_bins)
    p, y = _topk_inputs(probs, labels)
    return _search("TS", mode, lambda cs: _ts_curve(p, y, cs, mode, n_bins), grid,
                   _TS_DEFAULT[mode], _valid_c, "temperatures c > 0", n_bins)


def search_label_smoothing(probs, labels, grid=None, n_bins: int = 10) -> SearchResult:
    """The delta minimising ECE of `label_smooth(probs / sum(probs), delta)`, and the curve.

    `grid=None`: delta = 0 .. 0.9 in steps of 0.1, then steps of 0.02 around the best. Deltas
    above the smallest top-1 probability (rows would go negative) get NaN and are never chosen.
    """
    n_bins = check_n_bins(n_bins)
    p, y = _topk_inputs(probs, labels)
    if p.shape[1] < 2:
        raise ValueError(f"probs: label smoothing needs k >= 2 columns, got {p.shape[1]}")
    return _search("LS", "renorm", lambda ds: _ls_curve(p, y, ds, n_bins), grid, _LS_DEFAULT,
                   _valid_delta, "deltas in [0, 1)", n_bins)


def evaluate_grid(result: SearchResult, probs, labels, n_bins: int | None = None) -> np.ndarray:
    """ECE at every value of `result.grid` on another split (e.g. test), same transform."""
    n_bins = result.n_bins if n_bins is None else check_n_bins(n_bins)
    p, y = _topk_inputs(probs, labels)
    if result.kind == "TS":
        return _masked(lambda cs: _ts_curve(p, y, cs, result.mode, n_bins), result.grid,
                       _valid_c)
    return _masked(lambda ds: _ls_curve(p, y, ds, n_bins), result.grid, _valid_delta)


# ---------------------------------------------------------------- NLL temperature


def fit_temperature_nll(probs, labels, mode: str = "logit") -> float:
    """The c minimising the NLL of the labels under `temperature_scale(probs, c, mode)`.

    Guo et al. (2017), through `temperature_fit.fit_temperature` on the transform's scores
    (p for `first`, log p for `logit`; softmax(score / c) is the transform). Rows whose gold
    token is outside the top-k (label -1) have no likelihood here and are left out. The
    result lies in [1e-3, 1e3] (separable data drives c to 0).
    """
    from .temperature_fit import fit_temperature

    mode = _check_mode(mode, SEARCH_MODES)
    p, y = _topk_inputs(probs, labels)
    keep = y >= 0
    if not keep.any():
        raise ValueError("labels: every label is -1 (gold outside the top-k); nothing to fit")
    return fit_temperature(_scores(p[keep], mode, _NUMPY), y[keep]).temperature


def choose_temperature(probs, labels, grid=None, n_bins: int = 10, mode: str = "first",
                       strategy: str = "grid") -> SearchResult:
    """The temperature the pipeline uses, by `strategy` (`[calibration] strategy`):

    - `grid`: `search_temperature`, the c with the lowest validation ECE (the paper);
    - `nll`: `fit_temperature_nll` (Guo et al.), the c maximising the likelihood of the
      labels; the ECE curve of the grid is still computed (the dashboard shows it) and the
      fitted c is added to it, scored the same way, as the result's `best`.
    """
    if strategy not in STRATEGIES:
        raise ConfigError(f"strategy: expected one of {STRATEGIES}, got {strategy!r}")
    res = search_temperature(probs, labels, grid=grid, n_bins=n_bins, mode=mode)
    if strategy == "grid":
        return res
    c = fit_temperature_nll(probs, labels, mode=mode)
    p, y = _topk_inputs(probs, labels)
    values = np.union1d(res.grid, [c])
    ece = _masked(lambda cs: _ts_curve(p, y, cs, mode, res.n_bins), values, _valid_c)
    return SearchResult("TS", mode, res.n_bins, values, ece, c, float(ece[values == c][0]))


def token_labels(topk_tokens, gold) -> np.ndarray:
    """Column of the gold answer letter among each row's stored top-k token texts, or -1
    (`evaluate.predict` stores tokens as decoded, e.g. " A", and the gold as the letter)."""
    tokens = np.char.strip(np.asarray([list(map(str, row)) for row in topk_tokens], dtype=str))
    hit = tokens == np.asarray(gold, dtype=str)[:, None]
    return np.where(hit.any(axis=1), hit.argmax(axis=1), -1).astype(np.int64)
