"""The Learn page's simulated classifier: a model of chosen accuracy, over-confidence and
discrimination, its calibration through the slider's own path and its risk-coverage curve."""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..calibration.temperature_fit import fit_temperature
from .run_arrays import PredictionArrays
from .rescaling import CalibrationView, calibration_view
from .selective import SelectiveView, selective_view


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def simulate_classifier(accuracy: float, overconfidence: float, n: int = 4000,
                        n_classes: int = 4, seed: int = 0, discrimination: float = 1.0
                        ) -> tuple[np.ndarray, np.ndarray]:
    """A synthetic classifier for the teaching page: (probs N x n_classes, labels N).

    The "true" distribution p = softmax(beta * g) (g Gaussian, beta chosen so that a
    calibrated model has the requested expected `accuracy`) generates the labels; the model
    reports p ** s renormalised with s = `overconfidence` (1 = calibrated, > 1 over-confident,
    < 1 under-confident). Classic temperature scaling with c = s therefore undoes it exactly.

    `discrimination` d in [0, 1] mixes each row of p with its base-rate row (`accuracy` on
    the row's top class, the rest shared evenly): d p + (1 - d) b keeps the top class, the
    expected accuracy and calibration, and scales how much the confidence says about which
    answers are right. d = 0 always states the base rate (ECE near 0, AUROC 0.5, a flat
    risk-coverage curve); d = 1 is p itself.
    """
    if not 1.0 / n_classes < accuracy < 1.0:
        raise ValueError(f"accuracy: must be in (1/{n_classes}, 1), got {accuracy!r}")
    if not overconfidence > 0:
        raise ValueError(f"overconfidence: must be positive, got {overconfidence!r}")
    if not 0 <= discrimination <= 1:
        raise ValueError(f"discrimination: must be in [0, 1], got {discrimination!r}")
    if n < 1 or n_classes < 2:
        raise ValueError(f"n, n_classes: need n >= 1 and n_classes >= 2, got {n}, {n_classes}")
    rng = np.random.default_rng(seed)
    g = rng.standard_normal((n, n_classes))
    lo, hi = 0.0, 1.0
    while _softmax(hi * g).max(axis=1).mean() < accuracy:  # expected accuracy rises with beta
        lo, hi = hi, hi * 2
    for _ in range(40):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if _softmax(mid * g).max(axis=1).mean() < accuracy else (lo, mid)
    p = _softmax(hi * g)
    if discrimination < 1:
        base = np.full_like(p, (1 - accuracy) / (n_classes - 1))
        np.put_along_axis(base, p.argmax(axis=1)[:, None], accuracy, axis=1)
        p = discrimination * p + (1 - discrimination) * base
    labels = (p.cumsum(axis=1) < rng.random((n, 1))).sum(axis=1).clip(max=n_classes - 1)
    if discrimination == 1:
        return _softmax(overconfidence * hi * g), labels
    # p ** s renormalised, each row summed in descending order: rows that are permutations
    # of each other (all of them at d = 0) get bit-identical confidences, i.e. true ties
    order = np.argsort(-p, axis=1, kind="stable")
    reported = np.empty_like(p)
    np.put_along_axis(reported, order,
                      _softmax(overconfidence * np.log(np.take_along_axis(p, order, axis=1))),
                      axis=1)
    return reported, labels


def classifier_selective(probs: np.ndarray, labels: np.ndarray, t: float = 0.5
                         ) -> SelectiveView:
    """AUROC, AURC and the risk-coverage curve of a plain classifier (confidence = max prob)."""
    return selective_view(probs.max(axis=1), probs.argmax(axis=1) == labels, t, n_boot=0)


def classifier_view(probs: np.ndarray, labels: np.ndarray, c: float = 1.0, mode: str = "logit",
                    n_bins: int = 10, strategy: str = "uniform", n_boot: int = 0
                    ) -> CalibrationView:
    """Calibration of a plain classifier (confidence = max prob) after temperature `c`.

    The classes play the role of the answer options, so this is the slider path itself.
    """
    arrays = PredictionArrays(probs, probs.argmax(axis=1) == labels, probs, labels)
    return calibration_view(arrays, c, mode, "option", n_bins, strategy, n_boot)


def rescale_lesson(accuracy: float, overconfidence: float, ood_accuracy: float,
                   ood_overconfidence: float, n_bins: int = 10
                   ) -> tuple[float, pd.DataFrame]:
    """"Why not just rescale?": one simulated model fitted post hoc, then tested in domain and
    out of it. (T fitted by NLL on an in-domain validation sample, a table of accuracy, ECE,
    AUROC and AURC before and after dividing its log-probabilities by T, on an in-domain test
    sample and on an out-of-domain one where the model is less accurate and exaggerates more.)

    Each sample has its own seed; the in-domain ones share the model (accuracy and
    over-confidence s), the out-of-domain one has its own."""
    validation = simulate_classifier(accuracy, overconfidence, seed=10)
    samples = {"in-domain test": simulate_classifier(accuracy, overconfidence, seed=11),
               "out-of-domain test": simulate_classifier(ood_accuracy, ood_overconfidence,
                                                         seed=12)}
    probs, labels = validation
    t = fit_temperature(np.log(probs), labels).temperature
    rows = []
    for name, (probs, labels) in samples.items():
        for when, c in (("as reported", 1.0), (f"after T = {t:.2f}", t)):
            view = classifier_view(probs, labels, c, "logit", n_bins)
            acting = classifier_selective(_softmax(np.log(probs) / c), labels)
            rows.append({"sample": name, "confidence": when,
                         "accuracy": view.cards["accuracy"], "ECE": view.cards["ece"],
                         "AUROC": acting.auroc, "AURC": acting.aurc})
    return t, pd.DataFrame(rows)
