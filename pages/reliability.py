"""Reliability: diagrams and metric cards for one or two runs, with a live temperature slider."""

from __future__ import annotations

import streamlit as st

from first_core import plots, views
from pages._common import arrays, csv_download, query, require_runs, run_label, store_errors

st.title("Reliability")
runs = require_runs()
run_ids = runs["run_id"].tolist()
with store_errors():
    splits = [s for s in views.SPLIT_NAMES if s in query("splits")]
if not splits:
    st.warning("This store holds runs but no predictions yet.")
    st.stop()

# Widgets start from the URL (a shared link reproduces the view), then write it back.
state = views.parse_view_state(st.query_params.to_dict(), run_ids, splits)
defaults = {"rel_runs": list(state.runs), "rel_split": state.split, "rel_conv": state.convention,
            "rel_mode": state.mode, "rel_c": state.c, "rel_bins": state.n_bins,
            "rel_strategy": state.strategy}
for key, value in defaults.items():
    st.session_state.setdefault(key, value)
st.session_state.rel_runs = [r for r in st.session_state.rel_runs if r in run_ids]
if st.session_state.rel_split not in splits:
    st.session_state.rel_split = state.split


def snap_to_best() -> None:
    """Button callback: set the slider to the grid's lowest validation ECE (first run)."""
    with store_errors():
        val = arrays(st.session_state.rel_runs[0], "val")
    st.session_state.rel_c = views.best_temperature(
        val, st.session_state.rel_mode, st.session_state.rel_conv,
        st.session_state.rel_bins, st.session_state.rel_strategy)


top = st.columns([3, 1, 2])
picked = top[0].multiselect("Runs (up to two, side by side)", run_ids, key="rel_runs",
                            max_selections=2, format_func=run_label(runs))
split = top[1].selectbox("Split", splits, key="rel_split", format_func=views.SPLIT_NAMES.get)
convention = top[2].radio("Confidence", list(views.CONVENTIONS), key="rel_conv",
                          format_func=views.CONVENTIONS.get)
row = st.columns([2, 3, 1])
mode = row[0].radio("Re-scaling", list(views.MODES), key="rel_mode",
                    format_func=views.MODES.get)
c = row[1].select_slider("Temperature c (log scale)", options=list(views.TEMPERATURE_GRID),
                         key="rel_c", format_func=lambda v: f"{v:g}")
row[2].button("Best c on validation", on_click=snap_to_best, key="rel_best",
              disabled=not picked or "val" not in splits,
              help="Snap to the slider value with the lowest ECE on the validation split of "
                   "the first run, with the current re-scaling, convention and bins.")
row = st.columns([2, 1, 3])
n_bins = row[0].slider("Bins", *views.BIN_RANGE, key="rel_bins")
strategy = row[1].radio("Bins are", list(views.STRATEGIES), key="rel_strategy",
                        format_func=views.STRATEGIES.get)
row[2].caption(
    "The slider re-scales the stored probabilities: the answer letters' probabilities for the "
    "option convention, the teacher-style top-k (plus the dropped tail as one entry in classic "
    "mode) for the paper convention. Classic scaling at c = 1 shows the stored model as is; "
    "the FIRST transform is the paper's and is not the identity at c = 1. Brier and NLL are "
    "over the answer options.")

st.query_params.from_dict(views.ViewState(tuple(picked), split, c, mode, convention, n_bins,
                                          strategy).to_params())
if not picked:
    st.info("Pick a run to see its reliability diagram.")
    st.stop()

for column, run_id in zip(st.columns(len(picked)), picked):
    with column:
        with store_errors():
            data = arrays(run_id, split)
        if not len(data):
            st.warning(f"{run_id} has no predictions on the {views.SPLIT_NAMES[split]} split.")
            continue
        view = views.calibration_view(data, c, mode, convention, n_bins, strategy)
        cards = view.cards
        st.markdown(f"**{run_label(runs)(run_id)}**, {views.SPLIT_NAMES[split]}, n = {view.n:,}")
        grid = st.columns(3)
        grid[0].metric("Accuracy", f"{cards['accuracy']:.1%}")
        interval = views.format_interval(cards["ece_low"], cards["ece_high"])
        grid[1].metric("ECE", f"{cards['ece']:.1%}", delta=interval, delta_color="off",
                       delta_arrow="off",
                       help="Expected calibration error; below it the 95% bootstrap "
                            "interval in percent (omitted above "
                            f"{views.BOOT_MAX_N:,} predictions to keep the slider live).")
        grid[2].metric("MCE", f"{cards['mce']:.1%}")
        grid = st.columns(3)
        grid[0].metric("Brier", f"{cards['brier']:.3f}")
        grid[1].metric("NLL", f"{cards['nll']:.3f}")
        grid[2].metric("Trust", f"{cards['trust']:.1%}", help="Accuracy - ECE (our definition).")
        st.plotly_chart(plots.reliability_figure(view.bins), key=f"rel-fig-{run_id}")
        csv_download(view.bins, f"bins-{run_id.replace('/', '_')}-{split}.csv",
                     "Download bins (CSV)")
