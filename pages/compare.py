"""Compare runs: the Table-1 comparison across methods and seeds, in-domain versus OOD."""

from __future__ import annotations

import streamlit as st

from first_core.views import plots
from first_core.config.settings import POSTHOC_SUFFIX
from first_core.config.diff import config_notes
from first_core.views.safe_text import for_markdown
from first_core.views import tables, view_state
from pages._common import (csv_download, pick_pipeline, query, require_runs, store_errors,
                           through_app)

METRIC_NAMES = {"accuracy": "Accuracy", "ece": "ECE", "trust": "Trust", "mce": "MCE",
                "brier": "Brier", "nll": "NLL", "auroc": "AUROC", "aurc": "AURC"}
FRACTIONS = ("accuracy", "ece", "trust", "mce")

through_app()
st.title("Compare runs")
runs = require_runs()
pipeline = pick_pipeline(runs, "cmp_pipeline")
cols = st.columns([2, 2, 3])
convention = cols[0].radio("Confidence", list(view_state.CONVENTIONS), key="cmp_conv",
                           format_func=view_state.CONVENTIONS.get)
splits = cols[1].multiselect("Splits", list(view_state.SPLIT_NAMES), ["test", "test_ood"],
                             key="cmp_splits", format_func=view_state.SPLIT_NAMES.get)
metric = cols[2].selectbox("Metric for the bars", list(METRIC_NAMES), key="cmp_metric",
                           format_func=METRIC_NAMES.get)
with store_errors():
    rows = tables.with_pipeline(query("metrics"), runs)
table = tables.compare_table(rows, convention, splits, pipeline)
for note in config_notes(runs, pipeline):  # one name, several configs: split, and why
    st.warning(for_markdown(note))
if table.empty:
    st.info("No metrics for this convention and these splits.")
    st.stop()

part = table[table["metric"] == metric].assign(
    split=lambda t: t["split"].map(view_state.SPLIT_NAMES),
    # one bar group per (pipeline, method); the pipeline only when several are shown
    group=lambda t: t["method"] if t["pipeline"].nunique() == 1
    else t["pipeline"] + " / " + t["method"])
st.plotly_chart(plots.grouped_bars(part, "group", "mean", "split",
                                   title=f"{METRIC_NAMES[metric]} per method (mean +- std "
                                         "over seeds)",
                                   percent=metric in FRACTIONS, error="std"), key="cmp-bars")
wide = part.pivot_table(index=["pipeline", "method"], columns="split", values="mean",
                        sort=False)
st.dataframe(wide, column_config={c: st.column_config.NumberColumn(
    c, format="percent" if metric in FRACTIONS else "%.3f") for c in wide.columns})
if part["method"].str.endswith(POSTHOC_SUFFIX).any():
    st.caption(f"`METHOD{POSTHOC_SUFFIX}`: METHOD's own model after post-hoc temperature "
               "scaling, one T fitted on the validation split by NLL over the whole "
               "vocabulary (nothing retrained); its T is in the run's `temperature`.")
st.caption("Every metric, pipeline, method and split (mean, std and number of seeds of that "
           "pipeline):")
st.dataframe(table, hide_index=True)
csv_download(table, f"compare-{convention}.csv")
