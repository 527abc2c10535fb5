"""Temperature search: ECE versus c (and delta) on validation and test, the paper's figure 6."""

from __future__ import annotations

import numpy as np
import pandas as pd
import streamlit as st

from first_core.calibration import transforms as calibrate
from first_core.views import plots
from first_core.views.safe_text import for_markdown
from first_core.views import example_rows, tables, view_state
from first_core.calibration.transforms import temperature_scale
from pages._common import (csv_download, query, require_rows, require_runs, run_label,
                           store_errors, through_app)

through_app()
st.title("Temperature search")
runs = require_runs()
search = require_rows("search", "No temperature search in this store yet (the pipeline's "
                                "`calibrate` stage records it).")
search = tables.calibration_searches(search)  # not the post-hoc runs' own curves
if search.empty:
    st.info("No temperature search in this store yet (the pipeline's `calibrate` stage "
            "records it).")
    st.stop()
teachers = list(dict.fromkeys(search["run_id"]))
run_id = st.selectbox("Teacher run", teachers, format_func=run_label(runs), key="ts_run")
curves, chosen = tables.search_curves(search[search["run_id"] == run_id])
by = st.radio("Choose c by", calibrate.STRATEGIES, horizontal=True, key="ts_strategy",
              format_func={"grid": "lowest validation ECE (grid, the paper)",
                           "nll": "NLL fit (Guo et al.) on validation"}.get)
if by == "nll":  # fitted here on the teacher's stored validation top-k
    with store_errors():
        val = query("predictions", run_ids=run_id, split="val",
                    columns=["gold", "topk_tokens", "topk_probs"])
    try:
        gold_cols = calibrate.token_labels(val["topk_tokens"], val["gold"])
        fit = calibrate.choose_temperature(np.array(val["topk_probs"].tolist()), gold_cols,
                                           strategy="nll")
        chosen = pd.concat([chosen[chosen["kind"] != "TS"], pd.DataFrame([{
            "kind": "TS", "value": fit.best, "ece": fit.best_ece, "series": "validation"}])])
    except ValueError as exc:
        st.warning(f"No NLL fit on this run's validation predictions: {for_markdown(exc)}")

cols = st.columns(2)
for column, kind, x_title in ((cols[0], "TS", "temperature c (FIRST transform)"),
                              (cols[1], "LS", "label-smoothing delta")):
    with column:
        part = curves[curves["kind"] == kind]
        if part.empty:
            st.info(f"No {kind} search stored.")
            continue
        best = chosen[chosen["kind"] == kind]
        title = ("Temperature scaling" if kind == "TS" else "Label smoothing") + (
            f": chosen {best['value'].iloc[0]:.3g}" if len(best) else "")
        st.plotly_chart(plots.search_curve_figure(part, best, x_title, title), key=f"ts-{kind}")
st.caption("Chosen on validation (star); the test curve shows whether the choice carries over.")
csv_download(search[search["run_id"] == run_id], "temperature-search.csv")

st.subheader("The teacher's top-5 before and after")
preds = require_rows("predictions", "No test predictions for this run.", run_ids=run_id,
                     split="test", columns=["example_id", "gold", "topk_tokens", "topk_probs"])
ts_best = chosen.loc[chosen["kind"] == "TS", "value"]
start = view_state.snap_temperature(float(ts_best.iloc[0])) if len(ts_best) else 1.0
cols = st.columns([2, 3])
example = cols[0].selectbox("Example", preds["example_id"].tolist(), key="ts_example")
c = cols[1].select_slider("c", options=list(view_state.TEMPERATURE_GRID), value=start,
                          key="ts_c", format_func=lambda v: f"{v:g}")
row = preds[preds["example_id"] == example].iloc[0]
raw = np.asarray(row["topk_probs"], dtype=float)
after = temperature_scale(raw[None, :], c, mode="first")[0]
labels, gold = example_rows.token_labels(row["topk_tokens"], row["gold"])
st.plotly_chart(plots.probability_bars(labels, {"stored (raw top-5)": raw,
                                                f"FIRST transform, c = {c:g}": after},
                                       highlight=gold), key="ts-bars")
st.caption(f"Gold answer: {for_markdown(row['gold'])} (outlined). The raw top-5 sums to {raw.sum():.1%}; "
           "the transform renormalises over the kept tokens and, for c < 1, sharpens them.")
