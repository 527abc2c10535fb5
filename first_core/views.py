"""Everything the dashboard pages compute, kept out of the pages so it can be tested.

Pages query the store (`first_core.store`), call a function here and render the result with
`first_core.plots`. The hot path is `calibration_view`: the temperature slider calls it on
every move, so it works on dense arrays prepared once per store version
(`prediction_arrays`) and does no Python loop over examples.

What the temperature slider re-scales (documented on the Reliability page too):
- `option` convention: the stored raw probabilities of the answer letters (`option_probs`).
  Classic scaling (`logit`) at c = 1 gives back the stored option-renormalised confidence.
- `paper` convention: the stored top-k probabilities (`topk_probs`). The FIRST transform
  works on the k entries as the paper defines it. Classic scaling adds the dropped tail mass
  as one extra entry, so c = 1 gives back the stored top-1 confidence exactly; for other c
  it is an approximation (the tail's individual tokens are not stored).
Correctness never changes with c (both transforms keep the arg-max). Brier and NLL are
always over the answer options, re-scaled with the same c and mode.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from functools import cached_property, lru_cache
from pathlib import Path

import numpy as np
import pandas as pd

from . import metrics
from . import calibrate
from .calibrate import centered_scores, check_temperature
from .config import METHODS
from .store import IMPORTED_METHOD

# 10^(-1.3) ~ 0.05 .. 10 in steps of 1/40 decade (~6 %), with c = 1 exactly on the grid.
TEMPERATURE_GRID: np.ndarray = np.array(
    [float(f"{10 ** (i / 40):.3g}") for i in range(-52, 41)])
MODES: dict[str, str] = {"logit": "Classic temperature scaling: softmax(log p / c)",
                         "first": "FIRST transform (paper): softmax(p / c)"}
CONVENTIONS: dict[str, str] = {
    "option": "Option-renormalised (probabilities over the answer letters)",
    "paper": "Paper (top-1 over the whole vocabulary)"}
STRATEGIES: dict[str, str] = {"uniform": "equal-width", "quantile": "equal-mass"}
SPLIT_NAMES: dict[str, str] = {"val": "validation", "test": "in-domain test",
                               "test_ood": "out-of-domain test"}
BIN_RANGE = (5, 30)
FILTERS: dict[str, str] = {"all": "All predictions", "wrong_confident": "Wrong but confident",
                           "right_unsure": "Right but unsure", "wrong": "All wrong"}
PREDICTION_COLUMNS = ("example_id", "correct", "topk_probs", "option_labels",
                      "option_probs", "gold")


# ---------------------------------------------------------------------------- view state

def snap_temperature(c: float) -> float:
    """The grid value nearest to `c` on a log scale (what a shared URL or a search snaps to)."""
    if not np.isfinite(c) or c <= 0:
        raise ValueError(f"c: must be a positive number, got {c!r}")
    return float(TEMPERATURE_GRID[np.abs(np.log(TEMPERATURE_GRID) - np.log(c)).argmin()])


@dataclass(frozen=True)
class ViewState:
    """What a Reliability view shows; round-trips through `st.query_params` for sharing."""

    runs: tuple[str, ...] = ()
    split: str = "test"
    c: float = 1.0
    mode: str = "logit"
    convention: str = "option"
    n_bins: int = 10
    strategy: str = "uniform"
    bin: int | None = None  # drill-down: the selected reliability bin (0 = lowest confidence)
    panel: int = 0          # ... in which of the side-by-side runs

    def to_params(self) -> dict[str, str]:
        """Query-string values (all strings, as `st.query_params` stores them)."""
        params = {"runs": ",".join(self.runs), "split": self.split, "c": f"{self.c:g}",
                  "mode": self.mode, "conv": self.convention, "bins": str(self.n_bins),
                  "strategy": self.strategy}
        if self.bin is not None:
            params.update(bin=str(self.bin), panel=str(self.panel))
        return params


def _first(value: str | Sequence[str] | None) -> str | None:
    if value is None or isinstance(value, str):
        return value
    return value[0] if len(value) else None


def _int(value: str | None) -> int | None:
    try:
        return int(value or "")
    except ValueError:
        return None


def parse_view_state(params: Mapping[str, str | Sequence[str]], run_ids: Sequence[str],
                     splits: Sequence[str], max_runs: int = 2,
                     default: tuple[Sequence[str], str] | None = None) -> ViewState:
    """Read a ViewState from query parameters, ignoring anything unknown or invalid.

    A URL is user input: unknown runs, splits or modes are dropped (never passed on to
    SQL or code), numbers are clamped to the allowed ranges and c snaps to the grid; a bin
    outside the diagram is no selection. `default` is the (runs, split) shown without
    parameters (`figure5_default`), else the first run on the in-domain test split.
    """
    state = ViewState(runs=tuple(run_ids[:1]), split=splits[0] if splits else "test")
    if "test" in splits:
        state = replace(state, split="test")
    if default is not None:
        state = replace(state, runs=tuple(default[0])[:max_runs] or state.runs,
                        split=default[1] if default[1] in splits else state.split)
    raw_runs = _first(params.get("runs"))
    if raw_runs:
        picked = tuple(dict.fromkeys(r for r in raw_runs.split(",") if r in run_ids))[:max_runs]
        state = replace(state, runs=picked or state.runs)
    choices = {"split": tuple(splits), "mode": tuple(MODES), "conv": tuple(CONVENTIONS),
               "strategy": tuple(STRATEGIES)}
    fields = {"split": "split", "mode": "mode", "conv": "convention", "strategy": "strategy"}
    for key, allowed in choices.items():
        value = _first(params.get(key))
        if value in allowed:
            state = replace(state, **{fields[key]: value})
    try:
        state = replace(state, c=snap_temperature(float(_first(params.get("c")) or "nan")))
    except ValueError:
        pass
    bins = _int(_first(params.get("bins")))
    if bins is not None:
        state = replace(state, n_bins=int(np.clip(bins, *BIN_RANGE)))
    picked_bin, panel = _int(_first(params.get("bin"))), _int(_first(params.get("panel")))
    if picked_bin is not None and 0 <= picked_bin < state.n_bins:
        state = replace(state, bin=picked_bin,
                        panel=panel if panel is not None and 0 <= panel < len(state.runs) else 0)
    return state


def figure5_default(runs: pd.DataFrame, splits: Sequence[str]
                    ) -> tuple[tuple[str, ...], str] | None:
    """The paper's Figure 5 as the first view: the fine-tuned student beside FIRST-TS on the
    OOD split, from the newest pipeline that has both (seed order: the first stored);
    None when the store has no such pair or no OOD predictions."""
    if "test_ood" not in splits or runs.empty:
        return None
    pipelines = runs["pipeline"].fillna("") if "pipeline" in runs else pd.Series("", runs.index)
    for name in reversed(list(dict.fromkeys(pipelines))):
        mine = runs[pipelines == name]
        pair = [mine.loc[mine["method"] == m, "run_id"] for m in ("student_ft", "first_ts")]
        if all(len(p) for p in pair):
            return (str(pair[0].iloc[0]), str(pair[1].iloc[0])), "test_ood"
    return None


# ---------------------------------------------------------------------------- arrays

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
        checked = {"topk_probs": metrics.check_probs(self.topk_probs, "topk_probs"),
                   "option_probs": metrics.check_probs(self.option_probs, "option_probs")}
        for name, rows in checked.items():
            if len(rows) != n:
                raise ValueError(f"{name}: {len(rows)} rows, expected {n} to match correct")
        checked["correct"] = metrics.check_correct(self.correct, n)
        checked["gold_option"] = metrics.check_labels(
            self.gold_option, n, checked["option_probs"].shape[1], "gold_option",
            allow_missing=False)
        for name, value in checked.items():
            object.__setattr__(self, name, value)

    def __len__(self) -> int:
        return len(self.correct)

    @cached_property
    def topk_with_tail(self) -> np.ndarray:
        """N x (k + 1): the top-k plus the dropped tail mass as one entry (classic mode)."""
        tail = np.clip(1.0 - metrics.row_reduce(np.add, self.topk_probs)[:, None], 0.0, None)
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


# ---------------------------------------------------------------------------- slider path

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
    return metrics.proper_score_sums(e, norm, np.exp(np.divide(gold[rows], c)))


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


def _bins_table(bins: metrics.ReliabilityBins) -> pd.DataFrame:
    return pd.DataFrame({"lo": bins.edges[:-1], "hi": bins.edges[1:], "count": bins.count,
                         "confidence": bins.confidence, "accuracy": bins.accuracy,
                         "gap": bins.gap})


def bins_frame(confidence: np.ndarray, correct: np.ndarray, n_bins: int = 10,
               strategy: str = "uniform") -> pd.DataFrame:
    """`metrics.reliability_bins` as a table (lo, hi, count, confidence, accuracy, gap)."""
    return _bins_table(metrics.reliability_bins(confidence, correct, n_bins=n_bins,
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
    bins = metrics.reliability_bins(conf, correct, n_bins, strategy, check=False)
    acc = metrics.accuracy(correct, check=False)
    low, high = (metrics.bootstrap_interval("ece", conf, correct, n_boot=n_boot, seed=seed,
                                            n_bins=n_bins, strategy=strategy)[1:]
                 if n_boot else (float("nan"), float("nan")))
    cards = {"accuracy": acc, "ece": bins.ece, "ece_low": low, "ece_high": high,
             "mce": bins.mce, "brier": scaled.brier, "nll": scaled.nll,
             "trust": metrics.trust_score(acc, bins.ece)}
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
        eces.append(metrics.expected_calibration_error(scaled.confidence, scaled.correct,
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


def format_interval(low: float, high: float) -> str | None:
    """'[5.9, 8.4]': a bootstrap interval in percent, shown under the ECE card (None if NaN)."""
    if not (np.isfinite(low) and np.isfinite(high)):
        return None
    return f"[{100 * low:.1f}, {100 * high:.1f}]"


# ---------------------------------------------------------------------------- drill-down

def bin_members(scaled: Rescaled, n_bins: int, strategy: str, bin_index: int) -> np.ndarray:
    """Row indices of the predictions in reliability bin `bin_index` at the current c: the
    same binning (`metrics.bin_ids`) as the diagram and the ECE card, most confident first."""
    if not 0 <= bin_index < n_bins:
        raise ValueError(f"bin: must be in [0, {n_bins}), got {bin_index!r}")
    ids = metrics.bin_ids(scaled.confidence, n_bins, strategy)
    rows = np.flatnonzero(ids == bin_index)
    return rows[np.argsort(-scaled.confidence[rows], kind="stable")]


def bin_at(bins: pd.DataFrame, x: float) -> int | None:
    """The bin whose (lo, hi] holds a clicked bar's x (its centre); None outside the diagram."""
    if not np.isfinite(x):
        return None
    inside = np.flatnonzero((bins["lo"].to_numpy() < x) & (x <= bins["hi"].to_numpy()))
    return int(inside[0]) if len(inside) else None


def _top5_text(tokens: object, probs: object) -> str | None:
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
        cells = pd.Series([_top5_text(t, p) for t, p in zip(top["topk_tokens"], top["topk_probs"])],
                          index=top.index, dtype=object)
        out["teacher_top5"] = out["example_id"].map(cells)
    else:
        out["teacher_top5"] = None
    return out[list(DRILL_COLUMNS)]


# ---------------------------------------------------------------------------- SmoothECE

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


# ---------------------------------------------------------------------------- tables

def _method_order(methods: pd.Series) -> pd.Series:
    rank = {m: i for i, m in enumerate(METHODS)}
    return methods.map(lambda m: rank.get(m, len(rank)))


NO_PIPELINE = "(no pipeline)"


def pipelines(runs: pd.DataFrame) -> list[str]:
    """The store's pipelines (runs' `pipeline`, oldest first; unnamed ones as NO_PIPELINE)."""
    if "pipeline" not in runs:
        return [NO_PIPELINE] if len(runs) else []
    return list(dict.fromkeys(runs["pipeline"].fillna(NO_PIPELINE).astype(str)))


def with_pipeline(metric_rows: pd.DataFrame, runs: pd.DataFrame) -> pd.DataFrame:
    """`store.load_metrics` rows plus their run's pipeline (NO_PIPELINE where unnamed)."""
    names = (runs.set_index("run_id")["pipeline"] if "pipeline" in runs
             else pd.Series(dtype=object))
    return metric_rows.assign(
        pipeline=metric_rows["run_id"].map(names).fillna(NO_PIPELINE).astype(str))


def _pipeline_rows(metric_rows: pd.DataFrame, pipeline: str | None) -> pd.DataFrame:
    rows = metric_rows if "pipeline" in metric_rows else metric_rows.assign(pipeline=NO_PIPELINE)
    return rows if pipeline is None else rows[rows["pipeline"] == pipeline]


def headline_table(metric_rows: pd.DataFrame, convention: str = "paper",
                   pipeline: str | None = None) -> pd.DataFrame:
    """Table-1 layout: one row per (pipeline, method), Acc / ECE / Trust in-domain and OOD.

    Values are means over the seeds of *one* pipeline (never across pipelines: two
    pipelines are two experiments). `metric_rows` is `store.load_metrics(...)` through
    `with_pipeline` (without a pipeline column every row counts as one unnamed pipeline);
    `pipeline` keeps only that one. Values stay fractions (format for display).
    """
    rows = _pipeline_rows(metric_rows, pipeline)
    wanted = rows[(rows["convention"] == convention)
                  & rows["split"].isin(["test", "test_ood"])
                  & rows["metric"].isin(["accuracy", "ece", "trust"])]
    if wanted.empty:
        return pd.DataFrame(columns=["pipeline", "method"])
    table = wanted.pivot_table(index=["pipeline", "method"], columns=["split", "metric"],
                               values="value", aggfunc="mean", sort=False)
    names = {"test": "ID", "test_ood": "OOD"}
    short = {"accuracy": "Acc", "ece": "ECE", "trust": "Trust"}
    order = [(s, m) for s in names for m in short if (s, m) in table.columns]
    table = table[order]
    table.columns = [f"{short[m]} {names[s]}" for s, m in order]
    table = table.reset_index()
    return table.sort_values(["pipeline", "method"], kind="stable",
                             key=lambda col: _method_order(col) if col.name == "method"
                             else col.map({p: i for i, p in enumerate(
                                 dict.fromkeys(wanted["pipeline"]))})
                             ).reset_index(drop=True)


def compare_table(metric_rows: pd.DataFrame, convention: str = "paper",
                  splits: Sequence[str] = ("test", "test_ood"),
                  pipeline: str | None = None) -> pd.DataFrame:
    """Per (pipeline, method) and split: mean, std and number of seeds of each metric (tidy,
    for bars). Seeds are only ever averaged within one pipeline; see `headline_table`."""
    rows = _pipeline_rows(metric_rows, pipeline)
    wanted = rows[(rows["convention"] == convention) & rows["split"].isin(list(splits))]
    out = (wanted.groupby(["pipeline", "method", "split", "metric"], sort=False)["value"]
           .agg(mean="mean", std="std", seeds="count").reset_index())
    out["std"] = out["std"].fillna(0.0)
    split_rank = {s: i for i, s in enumerate(splits)}
    pipe_rank = {p: i for i, p in enumerate(dict.fromkeys(wanted["pipeline"]))}
    return out.sort_values(["pipeline", "method", "split", "metric"],
                           key=lambda col: _method_order(col) if col.name == "method"
                           else col.map(split_rank) if col.name == "split"
                           else col.map(pipe_rank) if col.name == "pipeline" else col
                           ).reset_index(drop=True)


def teacher_for(runs: pd.DataFrame, run_id: str) -> str | None:
    """The teacher run that goes with `run_id`: same pipeline if there is one, else any;
    None for imported predictions (another model: no teacher of this project's goes with it)."""
    teachers = runs[runs["method"] == "teacher_ft"]
    mine = runs[runs["run_id"] == run_id]
    if teachers.empty or (len(mine) and mine["method"].iloc[0] == IMPORTED_METHOD):
        return None
    same = teachers[teachers["pipeline"] == mine["pipeline"].iloc[0]] if len(mine) \
        else teachers.iloc[:0]
    return str((same if len(same) else teachers)["run_id"].iloc[0])


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


def search_curves(search: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """`store.load_temperature_search` rows -> (curves, chosen) for `plots.search_curve_figure`.

    curves: kind, value, ece, series ("val" / "test"), one row per point and split;
    chosen: the rows marked chosen, at their validation ECE.
    """
    long = search.melt(id_vars=["kind", "value", "chosen"], value_vars=["ece_val", "ece_test"],
                       var_name="series", value_name="ece").dropna(subset=["ece"])
    long["series"] = long["series"].map({"ece_val": "validation", "ece_test": "test"})
    picked = long[long["chosen"].astype(bool) & (long["series"] == "validation")]
    columns = ["kind", "value", "ece", "series"]
    return long[columns].reset_index(drop=True), picked[columns].reset_index(drop=True)


_PROGRESS = re.compile(r"^\[(\d+)/(\d+)\]\s*(.*)$")


def parse_progress(line: str) -> tuple[int, int, str] | None:
    """'[3/12] topk ...' (the pipeline's stage lines) -> (3, 12, 'topk ...'); else None."""
    match = _PROGRESS.match(line.strip())
    if not match or int(match[2]) < 1:
        return None
    return int(match[1]), int(match[2]), match[3]


# ---------------------------------------------------------------------------- coverage

DTYPE_BYTES: dict[str, int] = {"float32": 4, "float16 / bfloat16": 2, "int8": 1}


def disk_usage(ks: Sequence[int] | np.ndarray, n_positions: float, vocab_size: int,
               prob_bytes: int, id_bytes: int = 4) -> pd.DataFrame:
    """Bytes to store top-K (ids + probabilities) versus the full distribution, per K.

    Uncompressed arithmetic, so a user can redo the paper's "terabytes vs gigabytes"
    comparison: full = positions x vocabulary x bytes; top-K = positions x K x (id + prob).
    """
    for name, value in (("n_positions", n_positions), ("vocab_size", vocab_size),
                        ("prob_bytes", prob_bytes), ("id_bytes", id_bytes)):
        if not value > 0:
            raise ValueError(f"{name}: must be positive, got {value!r}")
    ks = np.asarray(ks, dtype=np.float64)
    return pd.DataFrame({"k": ks.astype(int),
                         "topk_bytes": n_positions * ks * (id_bytes + prob_bytes),
                         "full_bytes": np.full(len(ks), float(n_positions) * vocab_size
                                               * prob_bytes)})


def human_bytes(n: float) -> str:
    """1.2e12 -> '1.2 TB' (decimal units, as the paper uses)."""
    units = ("B", "kB", "MB", "GB", "TB", "PB", "EB")
    power = int(np.clip(np.floor(np.log10(max(abs(n), 1)) / 3), 0, len(units) - 1))
    return f"{n / 1000 ** power:.3g} {units[power]}"


# ---------------------------------------------------------------------------- teaching

def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def simulate_classifier(accuracy: float, overconfidence: float, n: int = 4000,
                        n_classes: int = 4, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A synthetic classifier for the teaching page: (probs N x n_classes, labels N).

    The "true" distribution p = softmax(beta * g) (g Gaussian, beta chosen so that a
    calibrated model has the requested expected `accuracy`) generates the labels; the model
    reports p ** s renormalised with s = `overconfidence` (1 = calibrated, > 1 over-confident,
    < 1 under-confident). Classic temperature scaling with c = s therefore undoes it exactly.
    """
    if not 1.0 / n_classes < accuracy < 1.0:
        raise ValueError(f"accuracy: must be in (1/{n_classes}, 1), got {accuracy!r}")
    if not overconfidence > 0:
        raise ValueError(f"overconfidence: must be positive, got {overconfidence!r}")
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
    labels = (p.cumsum(axis=1) < rng.random((n, 1))).sum(axis=1).clip(max=n_classes - 1)
    return _softmax(overconfidence * hi * g), labels


def classifier_view(probs: np.ndarray, labels: np.ndarray, c: float = 1.0, mode: str = "logit",
                    n_bins: int = 10, strategy: str = "uniform", n_boot: int = 0
                    ) -> CalibrationView:
    """Calibration of a plain classifier (confidence = max prob) after temperature `c`.

    The classes play the role of the answer options, so this is the slider path itself.
    """
    arrays = PredictionArrays(probs, probs.argmax(axis=1) == labels, probs, labels)
    return calibration_view(arrays, c, mode, "option", n_bins, strategy, n_boot)


# ---------------------------------------------------------------------------- per-token stores

def token_coverage_by_position(store_dir: str | os.PathLike[str],
                               max_position: int | None = None) -> pd.DataFrame:
    """Per response position of a per-token top-k store (instruction setting): how many tokens
    sit there, and the teacher's mean top-1 and top-k mass at them (streamed shard by shard).

    The coverage curve over K for all response tokens is the store's `topk_coverage` rows
    (the paper's figure 2); this is the same mass seen along the response.
    """
    import pyarrow.compute as pc

    from .topk_tokens import iter_token_shards

    counts = top1 = topk = np.zeros(0)
    for table in iter_token_shards(store_dir, columns=["position", "topk_probs"]):
        pos = table.column("position").to_numpy().astype(np.int64)
        if max_position is not None:
            pos = np.minimum(pos, max_position)  # the last bin gathers the long tail
        k = table.column("topk_probs").type.list_size
        probs = pc.list_flatten(table.column("topk_probs")).to_numpy().astype(
            np.float64).reshape(-1, k)
        width = max(len(counts), int(pos.max()) + 1 if len(pos) else 0)
        grow = lambda a: np.pad(a, (0, width - len(a)))  # noqa: E731
        counts = grow(counts) + np.bincount(pos, minlength=width)
        top1 = grow(top1) + np.bincount(pos, weights=probs[:, 0], minlength=width)
        topk = grow(topk) + np.bincount(pos, weights=probs.sum(1), minlength=width)
    seen = counts > 0
    return pd.DataFrame({"position": np.flatnonzero(seen), "n_tokens": counts[seen].astype(int),
                         "mean_top1": top1[seen] / counts[seen],
                         "mean_topk": topk[seen] / counts[seen]})


def token_topk_view(store_dir: str | os.PathLike[str], example_id: str, c: float,
                    tokenizer=None) -> pd.DataFrame:
    """One example of a per-token store: a row per response token with the token, the
    teacher's top-k ids (and their text when a tokenizer is given), the raw probabilities,
    and the same after the FIRST transform softmax(p / c) (what the student is trained on)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from .calibrate import temperature_scale
    from .topk_tokens import read_token_manifest

    check_temperature(c)
    m = read_token_manifest(store_dir)
    parts = [pq.read_table(os.path.join(store_dir, s["file"]),
                           filters=[("example_id", "==", example_id)]) for s in m.shards]
    table = pa.concat_tables(parts)
    if table.num_rows == 0:
        raise ValueError(f"example_id: {example_id!r} is not in {store_dir}")
    frame = table.to_pandas().sort_values("position", ignore_index=True)
    raw = np.stack(frame["topk_probs"].to_numpy()).astype(np.float64)
    ids = np.stack(frame["topk_ids"].to_numpy()).astype(np.int64)
    out = pd.DataFrame({"position": frame["position"], "token_id": frame["token_id"],
                        "gold_rank": frame["gold_rank_in_topk"], "topk_ids": ids.tolist(),
                        "raw_probs": raw.tolist(),
                        "first_probs": temperature_scale(raw, c, mode="first").tolist()})
    if tokenizer is not None:
        uniq = np.unique(np.r_[ids.ravel(), out["token_id"].to_numpy()]).tolist()
        text = dict(zip(uniq, tokenizer.batch_decode([[i] for i in uniq])))
        out.insert(2, "token", [text[i] for i in out["token_id"].tolist()])
        out["topk_tokens"] = [[text[i] for i in row] for row in ids.tolist()]
    return out


def instruct_run_dir(config_json: str | Mapping[str, object] | None) -> Path | None:
    """The run folder of a run whose stored config (the runs table's `config`) is of the
    instruction setting (`data.kind = "instruct"`), else None. Resolved as the pipeline does
    (`RunConfig.run_dir`: `runs_dir/name`, `/seed<N>` with `seeds`); a relative `runs_dir` is
    relative to the dashboard's working directory, as it was to the pipeline's."""
    from .config import RunConfig

    raw = json.loads(config_json) if isinstance(config_json, str) else (config_json or {})
    if not isinstance(raw, Mapping) or (raw.get("data") or {}).get("kind") != "instruct":
        return None
    try:
        return RunConfig(name=str(raw["name"]), runs_dir=str(raw["runs_dir"]),
                         seed=int(raw.get("seed", 0)), seeds=raw.get("seeds")).run_dir
    except (KeyError, TypeError, ValueError):
        return None


def token_example_ids(store_dir: str | os.PathLike[str]) -> list[str]:
    """The examples of a per-token store, in store order (the per-token view's picker)."""
    from .topk_tokens import iter_token_shards

    seen: dict[str, None] = {}
    for table in iter_token_shards(store_dir, columns=["example_id"]):
        seen.update(dict.fromkeys(table.column("example_id").unique().to_pylist()))
    return list(seen)


def load_tokenizer(folder: str | os.PathLike[str]):
    """The tokenizer saved with a model folder (the fine-tuned teacher's), read locally only."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(folder), local_files_only=True)


def token_view_table(view: pd.DataFrame, c: float) -> pd.DataFrame:
    """`token_topk_view`'s rows as plain-text cells: each response token, the teacher's top-k
    at it before ("raw") and after the FIRST transform at `c`, and whether the token itself
    is among them (its rank, or "-")."""
    tokens = view["topk_tokens"] if "topk_tokens" in view else view["topk_ids"]
    return pd.DataFrame({
        "position": view["position"],
        "token": view["token"] if "token" in view else view["token_id"].astype(str),
        "rank in top-k": [str(r + 1) if r >= 0 else "-" for r in view["gold_rank"]],
        "teacher top-k (raw)": [_top5_text(t, p) for t, p in zip(tokens, view["raw_probs"])],
        f"after FIRST, c = {c:g}": [_top5_text(t, p)
                                    for t, p in zip(tokens, view["first_probs"])]})
