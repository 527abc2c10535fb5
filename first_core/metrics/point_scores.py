"""Point scores of a set of predictions: accuracy, the proper scores (Brier, NLL) and trust.

Each validates its arguments with `checks` (`check=False` skips that for arrays the caller
validated, e.g. on every move of the dashboard's slider). The per-example Brier and NLL rows
are public because the bootstrap (`intervals`) resamples them.
"""

from __future__ import annotations

import numpy as np

from .checks import check_correct, probs_labels

_NLL_FLOOR = np.finfo(np.float64).eps  # as scikit-learn's log_loss: log(0) would be -inf


def accuracy(correct, *, check: bool = True) -> float:
    """Fraction of correct predictions (`check=False`: `correct` is a validated bool array)."""
    ok = np.asarray(correct)
    if not check:
        return float(ok.mean())
    if ok.ndim != 1 or ok.size == 0:
        raise ValueError(f"correct: expected a non-empty 1-D array, got shape {ok.shape}")
    return float(check_correct(ok, len(ok)).mean())


def brier_score(probs, labels, *, check: bool = True) -> float:
    """Multi-class Brier score: mean over rows of sum_j (p_j - [j == label])^2.

    Over the option distribution: pass rows that sum to 1 (a dropped tail is not counted).
    Ranges over [0, 2]; it equals scikit-learn's multi-class `brier_score_loss` with
    `scale_by_half=False`. `check=False` skips validating arrays validated by the caller.
    """
    p, y = probs_labels(probs, labels, check)
    return float(brier_rows(p, y).mean())


def negative_log_likelihood(probs, labels, *, check: bool = True) -> float:
    """Mean of -log p[label]; p is floored at float64 eps like scikit-learn's `log_loss`.

    `check=False` skips validating arrays validated by the caller.
    """
    p, y = probs_labels(probs, labels, check)
    return float(nll_rows(p, y).mean())


def _hits(p: np.ndarray, y: np.ndarray) -> np.ndarray:
    return np.take_along_axis(p, y[:, None], axis=1)[:, 0]


def _brier_from(squares: np.ndarray, hit: np.ndarray) -> np.ndarray:
    """Per-example Brier score from sum_j p_j^2 and p[label]."""
    return squares - 2 * hit + 1


def _nll_from(hit: np.ndarray) -> np.ndarray:
    return -np.log(np.maximum(hit, _NLL_FLOOR))


def brier_rows(p: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Per-example Brier score of validated rows `p` and labels `y`."""
    return _brier_from(np.einsum("ij,ij->i", p, p), _hits(p, y))


def nll_rows(p: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Per-example -log p[label] (floored) of validated rows `p` and labels `y`."""
    return _nll_from(_hits(p, y))


def proper_score_sums(weights: np.ndarray, norm: np.ndarray,
                      hit_weights: np.ndarray) -> tuple[float, float]:
    """Sums over examples of the Brier score and the NLL of q = weights / norm.

    `weights` are unnormalised, laid out k x N (one column per example), `norm` their column
    sums and `hit_weights` the label's weight per example. This is `brier_score` and
    `negative_log_likelihood` (times N) without forming q or gathering labels: the
    dashboard's slider calls it on every move with arrays validated when they were loaded.
    """
    hit = hit_weights / norm
    squares = np.einsum("ij,ij->j", weights, weights)
    squares /= norm * norm
    return float(_brier_from(squares, hit).sum()), float(_nll_from(hit).sum())


def trust_score(accuracy: float, ece: float) -> float:
    """Trust = accuracy - ECE, both as fractions. OUR definition, not verified from the paper.

    The FIRST paper reports a "Trust Score" combining accuracy and calibration; its exact
    formula could not be checked from the sources available to us, so this project uses
    Acc - ECE. This is the only place that knows the formula.
    """
    return float(accuracy) - float(ece)
