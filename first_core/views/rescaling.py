"""The slider's recompute path: re-scale stored probabilities at a temperature c, then every
metric card, reliability bin, the ECE-vs-c curve and SmoothECE.

What the temperature slider re-scales (documented on the Reliability page too):
- `option` convention: the stored raw probabilities of the answer letters (`option_probs`).
  Classic scaling (`logit`) at c = 1 gives back the stored option-renormalised confidence.
- `paper` convention: the stored top-k probabilities (`topk_probs`). The FIRST transform
  works on the k entries as the paper defines it. Classic scaling adds the dropped tail mass
  as one extra entry, so c = 1 gives back the stored top-1 confidence exactly; for other c
  it is an approximation (the tail's individual tokens are not stored).
Correctness never changes with c (both transforms keep the arg-max). Brier and NLL are
always over the answer options, re-scaled with the same c and mode. The hot path works on
`PredictionArrays` prepared once per store version and does no Python loop over examples.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import pandas as pd

from ..calibration import transforms as calibrate
from ..metrics.binning import ReliabilityBins, expected_calibration_error, reliability_bins
from ..metrics.intervals import bootstrap_interval
from ..metrics.point_scores import accuracy, proper_score_sums, trust_score
from ..calibration.transforms import check_temperature
from .run_arrays import PredictionArrays
from .view_state import CONVENTIONS, MODES, TEMPERATURE_GRID


CHUNK_ROWS = 1 << 14  # rows per block: the block's temporaries stay in cache
_POOL = ThreadPoolExecutor(max_workers=max(1, min(4, os.cpu_count() or 1)))


@dataclass(frozen=True)
class Rescaled:
    """Confidence and correctness under one convention; Brier and NLL over the options.

    Made by `rescale` from validated arrays, so `summarize` does not re-check it.
    """

    confidence: np.ndarray
    correct: np.ndarray
    brier: float
    nll: float


def _softmax_parts(centered: np.ndarray, c: float) -> tuple[np.ndarray, np.ndarray]:
    """e = exp(centered / c) (k x rows) and its sums over k: `temperature_scale` is e / sum.

    The same operations in the same order as `temperature_scale` (for k <= 8 columns), so
    the slider shows the same floats.
    """
    e = np.divide(centered, c)
    np.exp(e, out=e)
    return e, np.add.reduce(e, axis=0)


def _rescale_block(options: np.ndarray, gold: np.ndarray, topk: np.ndarray | None,
                   rows: slice, c: float, confidence: np.ndarray) -> tuple[float, float]:
    """One block of rows of the centered scores: writes its confidences (of the best option,
    or of the top-1 token when `topk` is given), returns its Brier and NLL sums."""
    e, norm = _softmax_parts(options[:, rows], c)
    if topk is None:  # the best option's e is exp(0) = 1
        np.divide(1.0, norm, out=confidence[rows])
    else:  # the top-1 token's share of the top-k (plus the tail in classic mode)
        top, top_norm = _softmax_parts(topk[:, rows], c)
        np.divide(top[0], top_norm, out=confidence[rows])
    return proper_score_sums(e, norm, np.exp(np.divide(gold[rows], c)))


def rescale(arrays: PredictionArrays, c: float, mode: str, convention: str) -> Rescaled:
    """Apply temperature `c` in `mode` to the stored probabilities (see the module docstring).

    The slider's hot path: the arrays were validated when they were built and their
    c-independent part (`PredictionArrays.centered`) is cached, so a move costs one
    exp over the rows, worked through cache-sized blocks on a small thread pool (numpy
    releases the GIL); Brier and NLL are means, so block sums add up exactly.
    """
    if mode not in MODES:
        raise ValueError(f"mode: {mode!r} is not one of {list(MODES)}")
    if convention not in CONVENTIONS:
        raise ValueError(f"convention: {convention!r} is not one of {list(CONVENTIONS)}")
    n = len(arrays)
    if n == 0:
        raise ValueError("arrays: no predictions to re-scale")
    c = check_temperature(c)
    options, gold = arrays.centered("option", mode), arrays.centered("gold", mode)
    topk = arrays.centered("topk", mode) if convention == "paper" else None
    confidence = np.empty(n)
    sums = list(_POOL.map(lambda lo: _rescale_block(
        options, gold, topk, slice(lo, lo + CHUNK_ROWS), c, confidence),
        range(0, n, CHUNK_ROWS)))
    brier, nll = np.sum(sums, axis=0) / n
    correct = arrays.option_correct if convention == "option" else arrays.correct
    return Rescaled(confidence, correct, float(brier), float(nll))


def _bins_table(bins: ReliabilityBins) -> pd.DataFrame:
    return pd.DataFrame({"lo": bins.edges[:-1], "hi": bins.edges[1:], "count": bins.count,
                         "confidence": bins.confidence, "accuracy": bins.accuracy,
                         "gap": bins.gap})


def bins_frame(confidence: np.ndarray, correct: np.ndarray, n_bins: int = 10,
               strategy: str = "uniform") -> pd.DataFrame:
    """`reliability_bins` as a table (lo, hi, count, confidence, accuracy, gap)."""
    return _bins_table(reliability_bins(confidence, correct, n_bins=n_bins,
                                        strategy=strategy))


@dataclass(frozen=True)
class CalibrationView:
    """Everything a reliability panel shows: metric cards and the bins of its diagram."""

    cards: dict[str, float]  # accuracy, ece, ece_low, ece_high, mce, brier, nll, trust
    bins: pd.DataFrame
    n: int


BOOT_RESAMPLES = 200
BOOT_MAX_N = 20_000


def interval_resamples(n: int) -> int:
    """Bootstrap resamples for the ECE card: `BOOT_RESAMPLES`, or 0 above `BOOT_MAX_N`.

    The bootstrap costs n_boot x n gathers per slider move (seconds at a million
    predictions), so large splits show the point ECE and keep the slider live; at that size
    the interval is narrow anyway.
    """
    return BOOT_RESAMPLES if n <= BOOT_MAX_N else 0


def summarize(scaled: Rescaled, n_bins: int = 10, strategy: str = "uniform",
              n_boot: int | None = None, seed: int = 0) -> CalibrationView:
    """Metric cards and bins for given confidences; `n_boot = 0` skips the ECE interval and
    None picks `interval_resamples(n)`."""
    if n_boot is None:
        n_boot = interval_resamples(len(scaled.confidence))
    conf, correct = scaled.confidence, scaled.correct
    # one binning serves the diagram, ECE and MCE; `rescale` made these arrays, so no checks
    bins = reliability_bins(conf, correct, n_bins, strategy, check=False)
    acc = accuracy(correct, check=False)
    low, high = (bootstrap_interval("ece", conf, correct, n_boot=n_boot, seed=seed,
                                    n_bins=n_bins, strategy=strategy)[1:]
                 if n_boot else (float("nan"), float("nan")))
    cards = {"accuracy": acc, "ece": bins.ece, "ece_low": low, "ece_high": high,
             "mce": bins.mce, "brier": scaled.brier, "nll": scaled.nll,
             "trust": trust_score(acc, bins.ece)}
    return CalibrationView({k: float(v) for k, v in cards.items()}, _bins_table(bins),
                           len(conf))


def calibration_view(arrays: PredictionArrays, c: float, mode: str, convention: str,
                     n_bins: int = 10, strategy: str = "uniform", n_boot: int | None = None,
                     seed: int = 0) -> CalibrationView:
    """The slider's recompute path: re-scale, then every metric card and bin (vectorised)."""
    return summarize(rescale(arrays, c, mode, convention), n_bins, strategy, n_boot, seed)


def ece_curve(arrays: PredictionArrays, mode: str, convention: str, n_bins: int = 10,
              strategy: str = "uniform", grid: np.ndarray = TEMPERATURE_GRID) -> pd.DataFrame:
    """ECE at every slider value (columns c, ece), through exactly the slider's transform.

    Not `calibrate.search_temperature`: this one must score the slider's own conventions
    (option letters, or top-k plus tail in logit mode) so that "best c" is the arg-min of
    what the slider would show. Uniform bins: one compiled pass per grid value.
    """
    if strategy == "uniform":
        option = convention == "option"
        return pd.DataFrame({"c": grid, "ece": calibrate.scores_ece_curve(
            arrays.centered("option" if option else "topk", mode),
            arrays.option_correct if option else arrays.correct, grid, n_bins,
            top=None if option else 0)})
    eces = []
    for c in grid:
        scaled = rescale(arrays, float(c), mode, convention)
        eces.append(expected_calibration_error(scaled.confidence, scaled.correct,
                                               n_bins=n_bins, strategy=strategy,
                                               check=False))
    return pd.DataFrame({"c": grid, "ece": eces})


def best_temperature(arrays: PredictionArrays, mode: str, convention: str, n_bins: int = 10,
                     strategy: str = "uniform") -> float:
    """The slider value with the lowest ECE on `arrays` (the validation split on the page)."""
    if not len(arrays):
        raise ValueError("arrays: no predictions to search a temperature on")
    curve = ece_curve(arrays, mode, convention, n_bins, strategy)
    return float(curve["c"].iloc[int(curve["ece"].to_numpy().argmin())])


def fit_temperature(arrays: PredictionArrays, mode: str) -> float:
    """The c minimising the page's NLL card on `arrays` (the validation split on the page):
    the gold option's NLL under the slider's re-scaling in `mode` (Guo et al.'s post-hoc
    fit when `mode` is classic scaling), by `temperature_fit` on the cached centred scores
    (which it copies once, row by row, into its own layout). Exact, not a slider value: the
    page snaps it."""
    if mode not in MODES:
        raise ValueError(f"mode: {mode!r} is not one of {list(MODES)}")
    if not len(arrays):
        raise ValueError("arrays: no predictions to fit a temperature on")
    from ..calibration.temperature_fit import fit_temperature as fit
    return fit(arrays.centered("option", mode), arrays.gold_option, axis=0).temperature


def format_interval(low: float, high: float) -> str | None:
    """'[5.9, 8.4]': a bootstrap interval in percent, shown under the ECE card (None if NaN)."""
    if not (np.isfinite(low) and np.isfinite(high)):
        return None
    return f"[{100 * low:.1f}, {100 * high:.1f}]"


SMOOTH_MAX_N = 20_000  # above this, SmoothECE and its curve use a fixed random sample


@dataclass(frozen=True)
class SmoothCalibration:
    """SmoothECE (Blasiok & Nakkiran 2023) and its kernel-smoothed reliability curve."""

    ece: float
    curve: pd.DataFrame  # x (confidence mesh), y (smoothed accuracy)
    n_used: int          # predictions it was computed on (a sample above SMOOTH_MAX_N)
    sigma: float         # the kernel bandwidth relplot chose


@lru_cache(maxsize=16)
def smooth_sample(n: int, max_n: int = SMOOTH_MAX_N, seed: int = 0) -> np.ndarray | None:
    """The fixed rows SmoothECE uses above `max_n` predictions (None: all of them); drawn
    once per size (read-only), not on every slider move."""
    if n <= max_n:
        return None
    rows = np.sort(np.random.default_rng(seed).choice(n, size=max_n, replace=False))
    rows.flags.writeable = False
    return rows


def smooth_calibration(confidence: np.ndarray, correct: np.ndarray,
                       max_n: int = SMOOTH_MAX_N, seed: int = 0) -> SmoothCalibration:
    """SmoothECE and its smoothed curve, computed by the `relplot` package (not re-derived).

    `relplot.prepare_rel_diagram` without bootstrap bands: the same call that draws the
    package's own diagrams, so value and curve are exactly relplot's. It costs ~0.5 s at a
    million predictions, so above `max_n` it runs on a fixed random sample (`smooth_sample`)
    to keep the slider live; the page says so.
    """
    import relplot  # imports matplotlib and seaborn: only when the first panel needs it

    conf = np.asarray(confidence, dtype=np.float64)
    ok = np.asarray(correct, dtype=np.float64)
    if conf.ndim != 1 or conf.shape != ok.shape or not len(conf):
        raise ValueError(f"confidence, correct: need equal non-empty 1-D arrays, got "
                         f"{conf.shape} and {ok.shape}")
    rows = smooth_sample(len(conf), max_n, seed)
    if rows is not None:
        conf, ok = conf[rows], ok[rows]
    diagram = relplot.prepare_rel_diagram(conf, ok, plot_confidence_band=False,
                                          report_CE=True, report_CE_std=False)
    curve = pd.DataFrame({"x": diagram["mesh"], "y": diagram["mu"]})
    return SmoothCalibration(float(diagram["ce"]), curve, len(conf), float(diagram["sigma"]))
