"""Discrimination and selective prediction: can the confidence tell right answers from wrong?

Calibration asks whether a confidence means what it says; a model that always states its
base rate is calibrated and still useless for deciding which answers to act on. These
metrics answer "if I act only when the confidence is at least t, how much do I cover and how
often am I then wrong?" (see docs/METRICS.md):

- `auroc`: area under the ROC curve of the confidence as a detector of correct answers; ties
  count one half (scikit-learn's `roc_auc_score`). Undefined (`ValueError`) when every answer
  is right or every answer is wrong.
- `risk_coverage`: the selective risk (error rate among the answered) against the coverage
  (fraction answered) when answering only the most confident items. Items of equal
  confidence enter together, so nothing depends on the input order.
- `aurc`: area under that curve (Geifman & El-Yaniv 2018): the mean over i = 1..n of the
  error rate among the i most confident items, where every member of a tie group takes the
  group's risk.
- `selective_accuracy`, `coverage_at_accuracy`, and `RiskCoverage.at(t)` (the deferral
  threshold "answer only when confidence >= t").

Everything comes from one sort of the confidences (`RiskCoverage`), so the dashboard can
recompute it on every slider move. Arguments are validated as in `first_core.metrics.checks`
(`check=False` trusts arrays the caller validated).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import ConfigError
from .checks import conf_correct
from .resampling import Decomposed, check_bootstrap, resample_stats

NAMES = ("auroc", "aurc")  # the store's metric names


@dataclass(frozen=True)
class Threshold:
    """What "answer only when confidence >= t" does to n items."""

    t: float
    answered: int  # items answered (confidence >= t)
    wrong: int     # wrong answers among them: let through
    n: int

    @property
    def deferred(self) -> int:
        return self.n - self.answered

    @property
    def coverage(self) -> float:
        return self.answered / self.n

    @property
    def accuracy(self) -> float:
        """Accuracy on the answered items (NaN when none is answered)."""
        return (self.answered - self.wrong) / self.answered if self.answered else float("nan")


@dataclass(frozen=True)
class RiskCoverage:
    """The risk-coverage curve, one point per tie group of confidences, most confident first.

    Point g answers every item whose confidence is at least `threshold[g]`: `answered[g]` of
    the n items, `wrong[g]` of them wrong. Both are cumulative counts (int64).
    """

    threshold: np.ndarray  # distinct confidences, descending
    answered: np.ndarray
    wrong: np.ndarray
    n: int
    area: float  # sum over tie groups of size x risk: n x AURC
    pairs: int   # right-above-wrong pairs, ties counting half, times two: the AUROC's numerator

    @property
    def coverage(self) -> np.ndarray:
        return self.answered / self.n

    @property
    def risk(self) -> np.ndarray:
        """Selective risk: the error rate among the answered items."""
        return self.wrong / self.answered

    def aurc(self) -> float:
        """sum over tie groups of (group size) x (its risk), over n."""
        return self.area / self.n

    def auroc(self) -> float:
        """P(conf of a right answer > conf of a wrong one) + P(equal) / 2, from integers."""
        n_wrong = int(self.wrong[-1])
        n_right = self.n - n_wrong
        if n_wrong == 0 or n_right == 0:
            raise ValueError("correct: AUROC needs both right and wrong answers, got "
                             + ("every answer right" if n_wrong == 0 else "every answer wrong"))
        return self.pairs / (2 * n_right * n_wrong)

    def at(self, t: float) -> Threshold:
        """The deferral threshold: answer only when the confidence is at least `t`."""
        t = float(t)
        if not np.isfinite(t):
            raise ConfigError(f"t: expected a finite threshold, got {t!r}")
        groups = int(np.searchsorted(-self.threshold, -t, side="right"))  # threshold >= t
        if groups == 0:
            return Threshold(t, 0, 0, self.n)
        return Threshold(t, int(self.answered[groups - 1]), int(self.wrong[groups - 1]), self.n)

    def selective_accuracy(self, coverage: float) -> float:
        """Accuracy on the smallest tie-closed set of most confident items that covers at
        least `coverage` (in (0, 1]) of them."""
        coverage = float(coverage)
        if not 0 < coverage <= 1:
            raise ConfigError(f"coverage: expected a value in (0, 1], got {coverage!r}")
        g = min(int(np.searchsorted(self.answered, coverage * self.n - 1e-9 * self.n)),
                len(self.answered) - 1)
        return float(1 - self.wrong[g] / self.answered[g])

    def coverage_at_accuracy(self, target: float) -> float:
        """The largest coverage whose selective accuracy is at least `target` (0 if none)."""
        target = float(target)
        if not 0 <= target <= 1:
            raise ConfigError(f"target: expected an accuracy in [0, 1], got {target!r}")
        ok = (self.answered - self.wrong) >= target * self.answered - 1e-9 * self.answered
        return float(self.answered[ok].max() / self.n) if ok.any() else 0.0

    def curve(self, max_points: int | None = None) -> dict[str, np.ndarray]:
        """Plot columns (coverage, risk, threshold), at most about `max_points` points.

        Starts at coverage 0 with the first tie group's risk (what answering a random part
        of that group gives on average); the downsampled points are the groups nearest to
        evenly spaced coverages, and always include the last one (coverage 1).
        """
        rows = np.arange(len(self.answered))
        if max_points is not None and len(rows) > max_points:
            want = np.linspace(0, self.n, max_points)
            rows = np.unique(np.minimum(np.searchsorted(self.answered, want),
                                        len(rows) - 1))
        risk = self.wrong[rows] / self.answered[rows]
        return {"coverage": np.r_[0.0, self.answered[rows] / self.n],
                "risk": np.r_[self.wrong[0] / self.answered[0], risk],
                "threshold": np.r_[self.threshold[0], self.threshold[rows]]}


def risk_coverage(confidence, correct, *, check: bool = True) -> RiskCoverage:
    """The risk-coverage curve (see `RiskCoverage`): one sort, no Python loop over items.

    A float64 in [0, 1] has a bit pattern below 2^62 whose integer order is its value's
    order, so (bits << 1) | correct fits in a non-negative int64: one integer sort (a
    compiled radix sort, `sort_kernel`) orders the items and carries their correctness
    along, with no argsort and no gather, and one pass reads the tie groups off the sorted
    keys. -0.0 shifts to the key of 0.0.
    """
    from ..kernels.sort import sort_nonnegative, tie_groups  # lazily: it imports numba

    conf, ok = conf_correct(confidence, correct, check)
    keys = np.ascontiguousarray(conf).view(np.int64) << 1
    keys |= ok
    value, answered, wrong, area, pairs = tie_groups(sort_nonnegative(keys))
    return RiskCoverage(value.view(np.float64), answered, wrong, len(keys), area, pairs)


def auroc(confidence, correct, *, check: bool = True) -> float:
    """AUROC of the confidence as a detector of right answers; ties count half.

    Equals `sklearn.metrics.roc_auc_score(correct, confidence)`. 0.5: the confidence says
    nothing about which answers are right; 1: every right answer is more confident than
    every wrong one. Raises `ValueError` when every answer is right or every one is wrong.
    """
    return risk_coverage(confidence, correct, check=check).auroc()


def aurc(confidence, correct, *, check: bool = True) -> float:
    """Area under the risk-coverage curve (lower is better); order-independent under ties."""
    return risk_coverage(confidence, correct, check=check).aurc()


def selective_accuracy(confidence, correct, coverage: float, *, check: bool = True) -> float:
    """Accuracy on the most confident `coverage` of the items (see `RiskCoverage`)."""
    return risk_coverage(confidence, correct, check=check).selective_accuracy(coverage)


def coverage_at_accuracy(confidence, correct, target: float, *, check: bool = True) -> float:
    """The largest fraction of items one can answer, most confident first, at accuracy
    >= `target` (0.0 when no threshold reaches it)."""
    return risk_coverage(confidence, correct, check=check).coverage_at_accuracy(target)


# ---------------------------------------------------------------- bootstrap


def _finish(sums: np.ndarray, n: int) -> np.ndarray:
    """(B, 2): AUROC and AURC of resamples from their counts per (tie group, right/wrong).

    `sums` is (B, 2G, 1): right answers of the G tie groups, most confident first, then the
    wrong ones; a group a resample missed has zero counts and changes nothing. AUROC is NaN
    for a resample without both right and wrong answers.
    """
    groups = sums.shape[1] // 2
    right, wrong = sums[:, :groups, 0], sums[:, groups:, 0]
    size = right + wrong
    answered, wrong_cum = np.cumsum(size, axis=1), np.cumsum(wrong, axis=1)
    aurc_ = np.einsum("bg,bg->b", size, wrong_cum / np.maximum(answered, 1)) / n
    n_wrong = wrong_cum[:, -1]
    n_right = n - n_wrong
    # twice the AUC numerator: sum_g right_g (2 (wrong below g) + wrong_g)
    twice = 2 * (n_right * n_wrong - np.einsum("bg,bg->b", right, wrong_cum)) \
        + np.einsum("bg,bg->b", right, wrong)
    with np.errstate(invalid="ignore", divide="ignore"):
        auc = twice / (2 * n_right * n_wrong)
    return np.stack([auc, aurc_], axis=1)


def bootstrap_intervals(confidence, correct, n_boot: int = 1000, seed: int = 0,
                        level: float = 0.95) -> dict[str, tuple[float, float, float]]:
    """{"auroc": (point, low, high), "aurc": (...)}: percentile bootstrap intervals.

    The resamples are `metrics.bootstrap_interval`'s (same seed and n: the same indices as
    the stored ECE interval). A resample keeps the full sample's tie groups, so each costs one
    gather, one `bincount` and two running sums over the groups. Resamples with only right or
    only wrong answers have no AUROC and are left out of its interval; a sample like that
    has none at all: (NaN, NaN, NaN), where `auroc` raises, so a pipeline can store it as
    missing.
    """
    conf, ok = conf_correct(confidence, correct)
    quantiles = check_bootstrap(n_boot, level)
    curve = risk_coverage(conf, ok, check=False)
    values, groups = np.unique(conf, return_inverse=True)
    # one count per (tie group, most confident first; right answers, then wrong ones)
    keys = (len(values) - 1 - groups.ravel()) + len(values) * ~ok
    d = Decomposed(keys, 2 * len(values), np.ones((1, len(conf))), _finish)
    stats = resample_stats(d, n_boot, seed)
    out = {}
    for j, name in enumerate(NAMES):
        if name == "auroc" and (ok.all() or not ok.any()):
            out[name] = (float("nan"),) * 3
            continue
        column = stats[:, j][np.isfinite(stats[:, j])]
        low, high = np.quantile(column, quantiles) if len(column) else (np.nan, np.nan)
        out[name] = (getattr(curve, name)(), float(low), float(high))
    return out
