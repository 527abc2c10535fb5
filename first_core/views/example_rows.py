"""From a chart back to the examples: the rows of one reliability bin at the current c, as a
table of plain text, and the Examples page's filters."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from ..metrics.binning import bin_ids
from .run_arrays import PredictionArrays
from .rescaling import Rescaled


FILTERS: dict[str, str] = {"all": "All predictions", "wrong_confident": "Wrong but confident",
                           "right_unsure": "Right but unsure", "wrong": "All wrong"}


def bin_members(scaled: Rescaled, n_bins: int, strategy: str, bin_index: int) -> np.ndarray:
    """Row indices of the predictions in reliability bin `bin_index` at the current c: the
    same binning (`bin_ids`) as the diagram and the ECE card, most confident first."""
    if not 0 <= bin_index < n_bins:
        raise ValueError(f"bin: must be in [0, {n_bins}), got {bin_index!r}")
    ids = bin_ids(scaled.confidence, n_bins, strategy)
    rows = np.flatnonzero(ids == bin_index)
    return rows[np.argsort(-scaled.confidence[rows], kind="stable")]


def bin_at(bins: pd.DataFrame, x: float) -> int | None:
    """The bin whose (lo, hi] holds a clicked bar's x (its centre); None outside the diagram."""
    if not np.isfinite(x):
        return None
    inside = np.flatnonzero((bins["lo"].to_numpy() < x) & (x <= bins["hi"].to_numpy()))
    return int(inside[0]) if len(inside) else None


def top5_text(tokens: object, probs: object) -> str | None:
    """"' A' 71.2%, ' B' 9.8%, ...": a teacher's stored top-k as one plain-text cell."""
    if tokens is None or probs is None or not len(probs):
        return None
    return ", ".join(f"{str(t)!r} {float(p):.1%}" for t, p in zip(tokens, probs))


DRILL_COLUMNS = ("example_id", "question", "options", "gold", "prediction", "confidence",
                 "correct", "teacher_top5")


def drilldown_table(arrays: PredictionArrays, scaled: Rescaled, rows: np.ndarray,
                    convention: str, predictions: pd.DataFrame, examples: pd.DataFrame,
                    teacher: pd.DataFrame | None = None, limit: int = 500) -> pd.DataFrame:
    """The examples of one bin (`bin_members` rows) as a table of plain text.

    `predictions` is this run and split (example_id, pred, pred_option), `examples` the
    question text (example_id, question, labels, choices; may be empty, e.g. for imported
    runs), `teacher` the teacher's predictions (example_id, topk_tokens, topk_probs) or
    None. Confidence is the re-scaled one at the current c, under `convention`.
    """
    if arrays.example_ids is None:
        raise ValueError("arrays: built without example ids; cannot list a bin's examples")
    rows = rows[:limit]
    out = pd.DataFrame({"example_id": arrays.example_ids[rows],
                        "confidence": scaled.confidence[rows],
                        "correct": scaled.correct[rows]})
    pred_col = "pred_option" if convention == "option" else "pred"
    preds = predictions.drop_duplicates("example_id").set_index("example_id")
    out["gold"] = out["example_id"].map(preds["gold"]) if "gold" in preds else None
    out["prediction"] = out["example_id"].map(preds[pred_col]) if pred_col in preds else None
    text = examples.drop_duplicates("example_id").set_index("example_id")
    out["question"] = out["example_id"].map(text["question"]) if len(text) else None
    out["options"] = out["example_id"].map(pd.Series(
        [" | ".join(f"{lab}: {ch}" for lab, ch in zip(labs, chs))
         for labs, chs in zip(text["labels"], text["choices"])], index=text.index,
        dtype=object)) if len(text) else None
    if teacher is not None and len(teacher):
        top = teacher.drop_duplicates("example_id").set_index("example_id")
        cells = pd.Series([top5_text(t, p) for t, p in zip(top["topk_tokens"], top["topk_probs"])],
                          index=top.index, dtype=object)
        out["teacher_top5"] = out["example_id"].map(cells)
    else:
        out["teacher_top5"] = None
    return out[list(DRILL_COLUMNS)]


def token_labels(tokens: Sequence[object], gold: str) -> tuple[list[str], str | None]:
    """Bar labels for stored tokens (repr, so " A" shows its space) and the gold one's label."""
    texts = [str(t) for t in tokens]
    labels = [repr(t) for t in texts]
    return labels, next((lab for lab, t in zip(labels, texts) if t.strip() == gold), None)


def filter_predictions(frame: pd.DataFrame, kind: str, convention: str = "option",
                       confident: float = 0.8, unsure: float = 0.5) -> pd.DataFrame:
    """Rows of `store.load_predictions` matching a filter, most striking first.

    "wrong_confident": wrong with confidence >= `confident`; "right_unsure": right with
    confidence < `unsure`; "wrong": every wrong one; "all": everything.
    """
    if kind not in FILTERS:
        raise ValueError(f"kind: {kind!r} is not one of {list(FILTERS)}")
    conf_col, ok_col = (("confidence_option", "correct_option") if convention == "option"
                        else ("confidence", "correct"))
    conf, ok = frame[conf_col].to_numpy(dtype=float), frame[ok_col].to_numpy(dtype=bool)
    mask = {"all": np.ones(len(frame), dtype=bool), "wrong": ~ok,
            "wrong_confident": ~ok & (conf >= confident),
            "right_unsure": ok & (conf < unsure)}[kind]
    ascending = kind == "right_unsure"
    return frame[mask].sort_values(conf_col, ascending=ascending, kind="stable")
