"""One run and split of the store as dense, validated, read-only arrays: the input of every
live view (`PredictionArrays`, built once per store version by `prediction_arrays`)."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np
import pandas as pd

from ..metrics.checks import check_correct, check_labels, check_probs, row_reduce
from ..calibration.transforms import centered_scores


PREDICTION_COLUMNS = ("example_id", "correct", "topk_probs", "option_labels",
                      "option_probs", "gold")


@dataclass(frozen=True)
class PredictionArrays:
    """Dense, read-only arrays of one run and split: the input of the slider path.

    Validated once, here (probabilities finite, in [0, 1], rows summing to <= 1 and > 0;
    labels in range; lengths equal), so that the slider path, which re-scales the same rows
    on every move, never re-checks them. An empty split is allowed (the page says so).
    """

    topk_probs: np.ndarray    # N x k raw top-k probabilities, descending
    correct: np.ndarray       # N bool: paper convention (top-1 token is the gold letter)
    option_probs: np.ndarray  # N x m raw probabilities of the answer letters
    gold_option: np.ndarray   # N int: column of the gold letter in option_probs
    example_ids: np.ndarray | None = None  # N str, when built from the store (drill-down)

    def __post_init__(self) -> None:
        n = len(self.correct)
        if n == 0:
            return
        checked = {"topk_probs": check_probs(self.topk_probs, "topk_probs"),
                   "option_probs": check_probs(self.option_probs, "option_probs")}
        for name, rows in checked.items():
            if len(rows) != n:
                raise ValueError(f"{name}: {len(rows)} rows, expected {n} to match correct")
        checked["correct"] = check_correct(self.correct, n)
        checked["gold_option"] = check_labels(
            self.gold_option, n, checked["option_probs"].shape[1], "gold_option",
            allow_missing=False)
        for name, value in checked.items():
            object.__setattr__(self, name, value)

    def __len__(self) -> int:
        return len(self.correct)

    @cached_property
    def topk_with_tail(self) -> np.ndarray:
        """N x (k + 1): the top-k plus the dropped tail mass as one entry (classic mode)."""
        tail = np.clip(1.0 - row_reduce(np.add, self.topk_probs)[:, None], 0.0, None)
        out = np.hstack([self.topk_probs, tail])
        out.flags.writeable = False
        return out

    @cached_property
    def option_correct(self) -> np.ndarray:
        """Option convention's correctness; both transforms keep the arg-max, so it holds
        for every c."""
        out = self.option_probs.argmax(axis=1) == self.gold_option
        out.flags.writeable = False
        return out

    def centered(self, source: str, mode: str) -> np.ndarray:
        """The part of the slider's transform that does not depend on c, computed once per
        mode and kept: `calibrate.centered_scores` of the answer letters (`option`) or of the
        top-k (`topk`, plus the tail in `logit` mode), transposed to k x N so that the
        per-move sums over k are contiguous adds; `gold` is the gold letter's entry (N).
        """
        cache = self.__dict__.setdefault("_centered", {})
        if (source, mode) not in cache:
            if source == "gold":
                scores = np.take_along_axis(self.centered("option", mode),
                                            self.gold_option[None, :], axis=0)[0]
            else:
                rows = (self.option_probs if source == "option" else
                        self.topk_with_tail if mode == "logit" else self.topk_probs)
                scores = np.ascontiguousarray(  # rows were validated in __post_init__
                    centered_scores(rows, mode, check=False).T)
            scores.flags.writeable = False
            cache[source, mode] = scores
        return cache[source, mode]


def _stack(column: pd.Series, name: str) -> np.ndarray:
    """A list column as an N x k float array; ragged rows are an error naming the column."""
    lengths = np.fromiter((len(v) for v in column), dtype=np.int64, count=len(column))
    if len(lengths) and (lengths != lengths[0]).any():
        row = int(np.flatnonzero(lengths != lengths[0])[0])
        raise ValueError(f"predictions.{name}: rows have different lengths "
                         f"({lengths[0]} and {lengths[row]} at row {row})")
    width = int(lengths[0]) if len(lengths) else 0
    return np.concatenate([np.asarray(v) for v in column]).reshape(len(column), width) \
        if len(column) else np.zeros((0, width))


def prediction_arrays(frame: pd.DataFrame) -> PredictionArrays:
    """Turn `store.load_predictions` rows (one run, one split) into `PredictionArrays`."""
    missing = [c for c in PREDICTION_COLUMNS[1:] if c not in frame.columns]
    if missing:
        raise ValueError(f"predictions: missing column(s) {missing}")
    if frame[list(PREDICTION_COLUMNS[1:])].isna().any().any():
        bad = frame[list(PREDICTION_COLUMNS[1:])].isna().any()
        raise ValueError(f"predictions: missing values in {list(bad[bad].index)}")
    labels = _stack(frame["option_labels"], "option_labels").astype(str)
    is_gold = labels == frame["gold"].to_numpy(dtype=str)[:, None]
    if len(frame) and not is_gold.any(axis=1).all():
        row = int(np.flatnonzero(~is_gold.any(axis=1))[0])
        raise ValueError(f"predictions.gold: {frame['gold'].iloc[row]!r} (row {row}) is not "
                         "among option_labels")
    arrays = PredictionArrays(
        topk_probs=_stack(frame["topk_probs"], "topk_probs").astype(np.float64),
        correct=frame["correct"].to_numpy(dtype=bool),
        option_probs=_stack(frame["option_probs"], "option_probs").astype(np.float64),
        gold_option=is_gold.argmax(axis=1),
        example_ids=frame["example_id"].to_numpy(dtype=str) if "example_id" in frame
        else None)
    for array in (arrays.topk_probs, arrays.correct, arrays.option_probs, arrays.gold_option,
                  *(() if arrays.example_ids is None else (arrays.example_ids,))):
        array.flags.writeable = False  # shared through st.cache_resource: nobody may mutate
    return arrays
