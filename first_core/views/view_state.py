"""What a view shows and how it round-trips through the URL: the slider grid, the choices
of mode, convention and binning, `ViewState` and its parser (a URL is user input), and the
paper's Figure 5 as the first view."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd


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
THRESHOLD_DEFAULT = 0.5  # the deferral threshold t: answer only when confidence >= t
THRESHOLD_STEP = 0.01    # the threshold slider's step; a URL's t snaps to it


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
    t: float = THRESHOLD_DEFAULT  # deferral threshold

    def to_params(self) -> dict[str, str]:
        """Query-string values (all strings, as `st.query_params` stores them)."""
        params = {"runs": ",".join(self.runs), "split": self.split, "c": f"{self.c:g}",
                  "mode": self.mode, "conv": self.convention, "bins": str(self.n_bins),
                  "strategy": self.strategy, "t": f"{self.t:g}"}
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


def snap_threshold(t: float) -> float:
    """A deferral threshold clamped to [0, 1] and snapped to the slider's step; ValueError
    for NaN (a URL's `t=nan` falls back to the default)."""
    if np.isnan(t):
        raise ValueError(f"t: must be a number, got {t!r}")
    # 2 decimals: THRESHOLD_STEP; + 0.0 turns -0.0 (a URL's `t=-0`) into 0.0, shown "0"
    return round(float(np.clip(t, 0.0, 1.0)), 2) + 0.0


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
    try:
        state = replace(state, t=snap_threshold(float(_first(params.get("t")) or "nan")))
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
