"""Acting on the confidence: AUROC, AURC, the risk-coverage curve and the deferral threshold
"answer only when confidence >= t" of one panel, from the confidences the slider shows.

Re-scaling with a temperature can reorder items across examples (each row's confidence moves
by its own amount), so everything here is recomputed from the re-scaled confidences on every
move: one radix sort (`selective_metrics.risk_coverage`) gives the cards, the threshold and
the curve at once. The metrics use every row; the plotted curve is cut down to a few hundred
points (`PLOT_POINTS`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from ..metrics import selective as selective_metrics
from ..metrics.selective import Threshold
from .rescaling import BOOT_RESAMPLES

PLOT_POINTS = 300
BOOT_MAX_N = 5_000  # AUROC / AURC intervals on the slider path up to this many predictions


def interval_resamples(n: int) -> int:
    """Bootstrap resamples for the AUROC and AURC cards: the ECE card's `BOOT_RESAMPLES`
    up to `BOOT_MAX_N` predictions, else 0. Each resample keeps every tie group (about one
    per prediction), so these cost about n / 10 times the ECE's binned resamples."""
    return BOOT_RESAMPLES if n <= BOOT_MAX_N else 0


@dataclass(frozen=True)
class SelectiveView:
    """What a panel shows about acting on its confidences."""

    auroc: float              # NaN when every answer is right or every one is wrong
    aurc: float
    intervals: dict[str, tuple[float, float]]  # auroc / aurc -> (low, high); NaN if not computed
    curve: pd.DataFrame       # coverage, risk, threshold: at most ~PLOT_POINTS rows
    at: Threshold             # the deferral threshold's counts
    base_risk: float          # error rate of answering everything: a flat curve's height


def selective_view(confidence: np.ndarray, correct: np.ndarray, t: float,
                   n_boot: int | None = None, seed: int = 0,
                   max_points: int = PLOT_POINTS) -> SelectiveView:
    """Cards, curve and threshold for validated arrays (`rescaling.rescale`'s output).

    `n_boot = None` bootstraps the AUROC and AURC intervals as `interval_resamples` says
    (none above `BOOT_MAX_N` predictions, to keep the slider live); 0 skips them.
    """
    if not len(confidence):
        raise ValueError("confidence: no predictions")
    if n_boot is None:
        n_boot = interval_resamples(len(confidence))
    curve = selective_metrics.risk_coverage(confidence, correct, check=False)
    both = 0 < curve.wrong[-1] < curve.n
    nan = (float("nan"), float("nan"))
    intervals = {"auroc": nan, "aurc": nan}
    if n_boot:
        boot = selective_metrics.bootstrap_intervals(confidence, correct, n_boot, seed)
        intervals = {name: boot[name][1:] for name in intervals}
    return SelectiveView(
        auroc=curve.auroc() if both else float("nan"), aurc=curve.aurc(), intervals=intervals,
        curve=pd.DataFrame(curve.curve(max_points)), at=curve.at(t),
        base_risk=float(curve.wrong[-1] / curve.n))


def format_range(low: float, high: float) -> str | None:
    """'[0.652, 0.721]': an AUROC or AURC interval, shown under its card (None if NaN)."""
    if not (np.isfinite(low) and np.isfinite(high)):
        return None
    return f"[{low:.3f}, {high:.3f}]"


def format_score(value: float) -> str:
    """0.689 as '0.689'; 'n/a' for an AUROC without both right and wrong answers."""
    return f"{value:.3f}" if np.isfinite(value) else "n/a"
