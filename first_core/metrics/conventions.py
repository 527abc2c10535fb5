"""The two confidence conventions: what a prediction, its confidence and its correctness are.

The paper's convention reads the top-1 token of the whole vocabulary; the option convention
renormalises over the answer letters. `topk_labels` is DESIGN's label convention for a stored
top-k row (the gold token's column, or -1).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .checks import check_labels, check_probs


@dataclass(frozen=True)
class Predictions:
    """Prediction, confidence and correctness of each example under one convention."""

    pred: np.ndarray        # paper: token id; option: option index
    confidence: np.ndarray
    correct: np.ndarray


def paper_convention(topk_probs, topk_ids, gold_ids) -> Predictions:
    """The paper's convention: confidence = the largest probability over the whole vocabulary.

    `topk_probs`/`topk_ids` are a full-vocabulary top-k (k >= 1), so its best entry is the
    vocabulary's top-1; correct only if that token is the gold answer token.
    """
    p = check_probs(topk_probs, "topk_probs")
    ids = np.asarray(topk_ids)
    if ids.shape != p.shape:
        raise ValueError(f"topk_ids: shape {ids.shape} does not match topk_probs {p.shape}")
    gold = np.asarray(gold_ids)
    if gold.shape != (len(p),):
        raise ValueError(f"gold_ids: expected length {len(p)} to match, got shape {gold.shape}")
    best = p.argmax(axis=1)
    pred = ids[np.arange(len(p)), best]
    return Predictions(pred, p[np.arange(len(p)), best], pred == gold)


def option_convention(option_probs, gold_option) -> Predictions:
    """Option-renormalised convention: p over the answer letters / its sum; pred = best option."""
    p = check_probs(option_probs, "option_probs")
    gold = check_labels(gold_option, len(p), p.shape[1], "gold_option", allow_missing=False)
    q = p / p.sum(axis=1, keepdims=True)
    pred = q.argmax(axis=1)
    return Predictions(pred, q[np.arange(len(q)), pred], pred == gold)


def topk_labels(topk_ids, gold_ids) -> np.ndarray:
    """DESIGN's label convention: the column of the gold token in each top-k row, or -1."""
    ids, gold = np.asarray(topk_ids), np.asarray(gold_ids)
    if ids.ndim != 2 or gold.shape != (len(ids),):
        raise ValueError(f"gold_ids: expected length {len(ids)} to match topk_ids {ids.shape}")
    hit = ids == gold[:, None]
    return np.where(hit.any(axis=1), hit.argmax(axis=1), -1)
