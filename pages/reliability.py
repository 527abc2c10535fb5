"""Reliability: diagrams and metric cards for one or two runs, with a live temperature slider.

The controls, cards and diagrams are one `st.fragment` (`live`): a slider move reruns only
that, on dense arrays cached per store version, with no store query. Clicking a bar lists
that bin's examples under the chart; the selected bin lives in the URL like every control.
Under each diagram: AUROC, AURC, the deferral threshold t and the risk-coverage curve, from
the re-scaled confidences (`views.selective`).
"""

from __future__ import annotations

import streamlit as st

from first_core.views import plots
from first_core.views.safe_text import for_markdown
from first_core.views import example_rows, rescaling, run_arrays, selective, tables, view_state
from pages import _selective
from pages._common import (arrays, csv_download, live, query, require_runs, run_label,
                           store_errors, through_app)

DRILL_ROWS = 500  # a selected bin lists at most this many examples

through_app()
st.title("Reliability")
runs = require_runs()
run_ids = runs["run_id"].tolist()
with store_errors():
    splits = [s for s in view_state.SPLIT_NAMES if s in query("splits")]
if not splits:
    st.warning("This store holds runs but no predictions yet.")
    st.stop()

# Widgets start from the URL (a shared link reproduces the view), then write it back. With
# no URL the first view is the paper's Figure 5: student_ft beside first_ts, OOD.
state = view_state.parse_view_state(st.query_params.to_dict(), run_ids, splits,
                               default=view_state.figure5_default(runs, splits))
defaults = {"rel_runs": list(state.runs), "rel_split": state.split, "rel_conv": state.convention,
            "rel_mode": state.mode, "rel_c": state.c, "rel_bins": state.n_bins,
            "rel_strategy": state.strategy, "rel_bin": state.bin, "rel_panel": state.panel,
            "rel_t": state.t}
for key, value in defaults.items():
    st.session_state.setdefault(key, value)
st.session_state.rel_runs = [r for r in st.session_state.rel_runs if r in run_ids]
if st.session_state.rel_split not in splits:
    st.session_state.rel_split = state.split


def snap_to_best() -> None:
    """Button callback: set the slider to the grid's lowest validation ECE (first run)."""
    with store_errors():
        val = arrays(st.session_state.rel_runs[0], "val")
    st.session_state.rel_c = rescaling.best_temperature(
        val, st.session_state.rel_mode, st.session_state.rel_conv,
        st.session_state.rel_bins, st.session_state.rel_strategy)


def snap_to_fit() -> None:
    """Button callback: fit c on the first run's validation split by NLL (Guo et al.'s
    post-hoc temperature scaling in classic mode) and set the slider to the nearest value."""
    with store_errors():
        val = arrays(st.session_state.rel_runs[0], "val")
    try:
        fitted = rescaling.fit_temperature(val, st.session_state.rel_mode)
    except ValueError as exc:
        st.session_state.rel_fit = ("No NLL fit on this run's validation split: "
                                    + for_markdown(str(exc)))
        return
    st.session_state.rel_c = view_state.snap_temperature(fitted)
    st.session_state.rel_fit = (
        f"Fitted on validation by NLL: c = {fitted:.4g} (the slider's nearest value is "
        f"{st.session_state.rel_c:g}).")


def clear_selection() -> None:
    st.session_state.rel_bin = None


def select_bin(panel: int, key: str) -> None:
    """on_select callback of panel `panel`'s diagram: the clicked bar's bin, or none."""
    points = st.session_state[key].selection.get("points", [])
    bins = st.session_state.get(f"rel-bins-{panel}")
    picked = example_rows.bin_at(bins, float(points[0]["x"])) if points and bins is not None else None
    st.session_state.rel_bin, st.session_state.rel_panel = picked, panel


def drilldown(run_id: str, data: run_arrays.PredictionArrays, scaled: rescaling.Rescaled,
              convention: str, n_bins: int, strategy: str, bins) -> None:
    """The selected bin's examples, at the current temperature, as plain text."""
    b = st.session_state.rel_bin
    lo, hi = bins["lo"].iloc[b], bins["hi"].iloc[b]
    rows = example_rows.bin_members(scaled, n_bins, strategy, b)
    head = st.columns([5, 1])
    head[0].markdown(f"**Bin {b + 1} of {n_bins}** (confidence {lo:.2f} to {hi:.2f}): "
                     f"{len(rows):,} predictions"
                     + (f", the {DRILL_ROWS} most confident shown" if len(rows) > DRILL_ROWS
                        else ""))
    head[1].button("Clear selection", on_click=clear_selection, key="rel_clear")
    if not len(rows):
        return
    split = st.session_state.rel_split
    dataset = runs.loc[runs["run_id"] == run_id, "dataset"].iloc[0]
    teacher = tables.teacher_for(runs, run_id)
    ids = data.example_ids[rows[:DRILL_ROWS]].tolist()  # read these rows only, not the split
    with store_errors():
        preds = query("rows", run_ids=run_id, split=split, example_ids=ids,
                      columns=["example_id", "gold", "pred", "pred_option"])
        text = query("examples", example_ids=ids, dataset=dataset, split=split)
        top = query("rows", run_ids=teacher, split=split, example_ids=ids,
                    columns=["example_id", "topk_tokens", "topk_probs"]) if teacher else None
    table = example_rows.drilldown_table(data, scaled, rows, convention, preds, text, top,
                                         limit=DRILL_ROWS)
    # st.dataframe shows every cell as plain text: a question holding Markdown or an image
    # link stays text and makes the browser fetch nothing
    st.dataframe(table, hide_index=True, key="rel-drill", column_config={
        "confidence": st.column_config.NumberColumn("confidence", format="percent"),
        "teacher_top5": st.column_config.TextColumn(f"teacher top-5 ({teacher or 'none'})")})
    csv_download(table, f"bin-{b + 1}-{run_id.replace('/', '_')}-{split}.csv",
                 "Download this bin (CSV)")


top = st.columns([4, 1])
picked = top[0].multiselect("Runs (up to two, side by side)", run_ids, key="rel_runs",
                            max_selections=2, format_func=run_label(runs))
split = top[1].selectbox("Split", splits, key="rel_split", format_func=view_state.SPLIT_NAMES.get)


@live
def panels() -> None:
    """Controls, metric cards, diagrams and the drill-down: what a slider move reruns."""
    row = st.columns([3, 2, 3, 2])
    convention = row[0].radio("Confidence", list(view_state.CONVENTIONS), key="rel_conv",
                              format_func=view_state.CONVENTIONS.get)
    mode = row[1].radio("Re-scaling", list(view_state.MODES), key="rel_mode",
                        format_func=view_state.MODES.get)
    c = row[2].select_slider("Temperature c (log scale)", options=list(view_state.TEMPERATURE_GRID),
                             key="rel_c", format_func=lambda v: f"{v:g}")
    no_val = not picked or "val" not in splits
    row[3].button("Best c on validation (ECE)", on_click=snap_to_best, key="rel_best",
                  disabled=no_val,
                  help="Snap to the slider value with the lowest ECE on the validation split "
                       "of the first run, with the current re-scaling, convention and bins.")
    row[3].button("Fit c on validation (NLL)", on_click=snap_to_fit, key="rel_fit_nll",
                  disabled=no_val,
                  help="Post-hoc temperature scaling (Guo et al. 2017): the c minimising the "
                       "NLL of the gold option on the first run's validation split, with the "
                       "current re-scaling; the slider moves to the nearest value.")
    if st.session_state.get("rel_fit"):
        row[3].caption(st.session_state.rel_fit)  # numbers, or escaped below
    row = st.columns([2, 1, 3])
    n_bins = row[0].slider("Bins", *view_state.BIN_RANGE, key="rel_bins")
    strategy = row[1].radio("Bins are", list(view_state.STRATEGIES), key="rel_strategy",
                            format_func=view_state.STRATEGIES.get)
    row[2].caption(
        "The slider re-scales the stored probabilities: the answer letters' probabilities for "
        "the option convention, the teacher-style top-k (plus the dropped tail as one entry in "
        "classic mode) for the paper convention. Classic scaling at c = 1 shows the stored "
        "model as is; the FIRST transform is the paper's and is not the identity at c = 1. "
        "Brier and NLL are over the answer options. Click a bar to list its examples.")
    t = st.slider(_selective.THRESHOLD_LABEL, 0.0, 1.0, step=view_state.THRESHOLD_STEP,
                  key="rel_t", help=_selective.THRESHOLD_HELP)
    if st.session_state.rel_bin is not None and not (
            0 <= st.session_state.rel_bin < n_bins and st.session_state.rel_panel < len(picked)):
        st.session_state.rel_bin = None  # fewer bins or runs than the selection needs
    st.query_params.from_dict(view_state.ViewState(
        tuple(picked), split, c, mode, convention, n_bins, strategy,
        st.session_state.rel_bin, st.session_state.rel_panel, t=t).to_params())
    if not picked:
        st.info("Pick a run to see its reliability diagram.")
        return

    selected = None
    for i, (column, run_id) in enumerate(zip(st.columns(len(picked)), picked)):
        with column:
            with store_errors():
                data = arrays(run_id, split)
            if not len(data):
                st.warning(f"{for_markdown(run_id)} has no predictions on the "
                           f"{view_state.SPLIT_NAMES[split]} split.")
                continue
            scaled = rescaling.rescale(data, c, mode, convention)
            view = rescaling.summarize(scaled, n_bins, strategy)
            cards = view.cards
            st.markdown(f"**{for_markdown(run_label(runs)(run_id))}**, "
                        f"{view_state.SPLIT_NAMES[split]}, n = {view.n:,}")
            # the binned cards go out first; SmoothECE (relplot, the slowest number) and the
            # figure follow, so the numbers update as soon as they are known
            grid = st.columns(4)
            grid[0].metric("Accuracy", f"{cards['accuracy']:.1%}")
            interval = rescaling.format_interval(cards["ece_low"], cards["ece_high"])
            grid[1].metric("ECE", f"{cards['ece']:.1%}", delta=interval, delta_color="off",
                           delta_arrow="off",
                           help="Expected calibration error; below it the 95% bootstrap "
                                "interval in percent (omitted above "
                                f"{rescaling.BOOT_MAX_N:,} predictions to keep the slider live).")
            smooth_card = grid[2].empty()
            grid[3].metric("MCE", f"{cards['mce']:.1%}")
            grid = st.columns(4)
            grid[0].metric("Brier", f"{cards['brier']:.3f}")
            grid[1].metric("NLL", f"{cards['nll']:.3f}")
            grid[2].metric("Trust", f"{cards['trust']:.1%}",
                           help="Accuracy - ECE (our definition).")
            smooth = rescaling.smooth_calibration(scaled.confidence, scaled.correct)
            smooth_card.metric(
                "SmoothECE", f"{smooth.ece:.1%}",
                help="Kernel-smoothed ECE (Blasiok & Nakkiran 2023, the `relplot` package, "
                     f"bandwidth {smooth.sigma:.3f}); no bins to choose. Its smoothed curve "
                     f"is the orange line. Above {rescaling.SMOOTH_MAX_N:,} predictions it uses a "
                     f"fixed random sample of that size (here {smooth.n_used:,}).")
            st.session_state[f"rel-bins-{i}"] = view.bins
            key = f"rel-fig-{i}"
            st.plotly_chart(plots.reliability_figure(view.bins, smooth=smooth.curve,
                                                     threshold=t), key=key,
                            on_select=lambda i=i, key=key: select_bin(i, key),
                            selection_mode="points")
            csv_download(view.bins, f"bins-{run_id.replace('/', '_')}-{split}.csv",
                         "Download bins (CSV)")
            # acting on the confidence: recomputed from the re-scaled confidences, which the
            # temperature can reorder across examples
            acting = selective.selective_view(scaled.confidence, scaled.correct, t)
            st.markdown(f"**Acting on the confidence**: answer when it is ≥ {t:g}, defer the "
                        "rest")
            _selective.discrimination_cards(acting)
            _selective.threshold_cards(acting)
            _selective.risk_coverage_chart(acting, run_label(runs)(run_id).split(":")[0],
                                           key=f"rel-risk-{i}")
            if st.session_state.rel_bin is not None and st.session_state.rel_panel == i:
                selected = (run_id, data, scaled, view.bins)
    if selected is not None:
        run_id, data, scaled, bins = selected
        st.subheader(f"Examples in the selected bin: {for_markdown(run_label(runs)(run_id))}")
        drilldown(run_id, data, scaled, convention, n_bins, strategy, bins)


panels()
