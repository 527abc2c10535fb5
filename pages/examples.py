"""Examples: find the predictions worth looking at and see what teacher and student said."""

from __future__ import annotations

import numpy as np
import streamlit as st

from first_core.views import plots
from first_core.store import prediction_reads
from first_core.views.safe_text import for_markdown
from first_core.views import example_rows, tables, view_state
from pages._common import csv_download, query, require_runs, run_label, store_errors, through_app

SHOWN = ["example_id", "gold", "pred_option", "confidence_option", "correct_option", "pred",
         "confidence", "correct"]

through_app()
st.title("Examples")
runs = require_runs()
with store_errors():
    splits = [s for s in view_state.SPLIT_NAMES if s in query("splits")]
if not splits:
    st.warning("This store holds runs but no predictions yet.")
    st.stop()
cols = st.columns([3, 1, 2])
students = runs[runs["method"] != "teacher_ft"]["run_id"].tolist() or runs["run_id"].tolist()
run_id = cols[0].selectbox("Run", students, format_func=run_label(runs), key="ex_run")
split = cols[1].selectbox("Split", splits, index=splits.index("test") if "test" in splits else 0,
                          format_func=view_state.SPLIT_NAMES.get, key="ex_split")
convention = cols[2].radio("Confidence", list(view_state.CONVENTIONS), key="ex_conv",
                           format_func=view_state.CONVENTIONS.get)
cols = st.columns([2, 1, 1])
kind = cols[0].selectbox("Show", list(example_rows.FILTERS), index=1, format_func=example_rows.FILTERS.get,
                         key="ex_filter")
confident = cols[1].slider("Confident means >=", 0.5, 1.0, 0.8, 0.05, key="ex_confident")
unsure = cols[2].slider("Unsure means <", 0.0, 1.0, 0.5, 0.05, key="ex_unsure")

with store_errors():  # the filter runs in the store: only the listed rows are read
    page = query("matches", run_id=run_id, split=split, kind=kind, convention=convention,
                 confident=confident, unsure=unsure)
found = page.rows
st.markdown(f"**{page.matched:,}** of {page.total:,} predictions match."
            + (f" Only the first {len(found):,} (by confidence, as ordered below) are read "
               f"and listed: above {prediction_reads.SHOWN_ROWS:,} matches the page shows "
               "that many, so that a large import stays fast."
               if page.matched > len(found) else ""))
st.dataframe(found[SHOWN], hide_index=True)
csv_download(found[SHOWN], f"examples-{kind}.csv")
if found.empty:
    st.stop()

example = st.selectbox("Look at", found["example_id"].tolist()[:500], key="ex_id")
row = found[found["example_id"] == example].iloc[0]
with store_errors():
    text = query("examples", example_ids=example, split=split,
                 dataset=runs.loc[runs["run_id"] == run_id, "dataset"].iloc[0])
# Data text is shown as plain text (st.text), never as Markdown: a question holding
# `![](http://host/x.png)` or a link stays visible text and makes the browser fetch nothing.
if len(text):
    item = text.iloc[0]
    st.caption("Question")
    st.text(item["question"])
    if isinstance(item["context"], str) and item["context"]:
        st.caption("Context")
        st.text(item["context"])
    st.caption("Options")
    st.text("\n".join(f"{label}. {choice}"
                       for label, choice in zip(item["labels"], item["choices"])))
st.caption("Gold answer")
st.text(str(row["gold"]))

cols = st.columns(2)
option_probs = np.asarray(row["option_probs"], dtype=float)
with cols[0]:
    st.plotly_chart(plots.probability_bars(
        list(row["option_labels"]), {"student, over the options": option_probs /
                                     option_probs.sum()},
        highlight=row["gold"], title="This run's option probabilities"), key="ex-options")
teacher = tables.teacher_for(runs, run_id)
with cols[1]:
    if teacher is None:
        st.info("No teacher run in this store.")
    else:
        with store_errors():
            t = query("rows", run_ids=teacher, split=split, example_ids=example,
                      columns=["example_id", "topk_tokens", "topk_probs"])
        if t.empty:
            st.info(f"The teacher ({for_markdown(teacher)}) has no prediction for this "
                    "example.")
        else:
            labels, gold = example_rows.token_labels(t.iloc[0]["topk_tokens"], row["gold"])
            st.plotly_chart(plots.probability_bars(
                labels, {"teacher top-k (raw)": np.asarray(t.iloc[0]["topk_probs"], float)},
                highlight=gold, title=f"Teacher's top-k ({teacher})"), key="ex-teacher")
