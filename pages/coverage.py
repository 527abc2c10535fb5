"""Top-k coverage: how much of the teacher's probability the top-K keeps, and what it costs."""

from __future__ import annotations

import streamlit as st

from first_core import plots, views
from pages._common import csv_download, query, require_runs, run_label, store_errors, through_app

through_app()
st.title("Top-k coverage")
runs = require_runs()
with store_errors():
    coverage = query("coverage")
if coverage.empty:
    st.info("No top-k coverage in this store yet (the pipeline's `topk` stage records it).")
    st.stop()
teachers = list(dict.fromkeys(coverage["run_id"]))
run_id = st.selectbox("Teacher run", teachers, format_func=run_label(runs), key="cov_run")
rows = coverage[coverage["run_id"] == run_id].sort_values("k")
stored = rows.iloc[0]

st.markdown("Assumptions for the disk arithmetic (defaults are this store's own counts):")
cols = st.columns(4)
n_positions = cols[0].number_input("Token positions in the data set", min_value=1,
                                   value=int(stored["n_positions"] or 1), step=1000,
                                   key="cov_positions")
vocab = cols[1].number_input("Vocabulary size", min_value=2,
                             value=int(stored["vocab_size"] or 32000), step=1000,
                             key="cov_vocab")
dtype = cols[2].selectbox("Probability dtype", list(views.DTYPE_BYTES), index=1,
                          key="cov_dtype")
mark_k = cols[3].number_input("Mark K", min_value=1, max_value=int(rows["k"].max()), value=5,
                              key="cov_k")
disk = views.disk_usage(rows["k"].to_numpy(), n_positions, vocab, views.DTYPE_BYTES[dtype])
st.plotly_chart(plots.coverage_figure(rows, disk, mark_k=int(mark_k)), key="cov-fig")

at_k = disk[disk["k"] == mark_k].iloc[0]
covered = rows.loc[rows["k"] == mark_k, "mean"]
cards = st.columns(3)
cards[0].metric(f"Mean coverage at K = {mark_k}",
                f"{float(covered.iloc[0]):.1%}" if len(covered) else "n/a")
cards[1].metric("Full distribution", views.human_bytes(at_k["full_bytes"]))
cards[2].metric(f"Top-{mark_k} store", views.human_bytes(at_k["topk_bytes"]),
                help="Uncompressed: int32 ids + probabilities.")
st.markdown(
    f"Full distribution: {n_positions:,} positions x {vocab:,} tokens x "
    f"{views.DTYPE_BYTES[dtype]} bytes = **{views.human_bytes(at_k['full_bytes'])}**. "
    f"Top-{mark_k}: {n_positions:,} x {mark_k} x (4 + {views.DTYPE_BYTES[dtype]}) bytes = "
    f"**{views.human_bytes(at_k['topk_bytes'])}**, "
    f"{at_k['full_bytes'] / at_k['topk_bytes']:,.0f} times smaller.")
table = rows[["k", "mean", "p10", "p50", "p90", "bytes_per_position"]].merge(disk, on="k")
st.dataframe(table, hide_index=True)
st.caption("`bytes_per_position` is what the pipeline measured on disk for its own top-k store.")
csv_download(table, "topk-coverage.csv")
