"""Top-k coverage: how much of the teacher's probability the top-K keeps, and what it costs."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import streamlit as st

from first_core.views import plots
from first_core.errors import FirstError
from first_core.views import coverage_runs, storage_math, token_views, view_state
from pages._common import (csv_download, require_rows, require_runs, run_label,
                           store_path, store_version, through_app)


@st.cache_data(show_spinner=False, max_entries=8)
def token_positions(folder: str, version: tuple[int, int]):
    del version  # only part of the cache key
    return token_views.token_coverage_by_position(folder, max_position=30)


@st.cache_data(show_spinner=False, max_entries=8)
def token_examples(folder: str, version: tuple[int, int]) -> list[str]:
    del version
    return token_views.token_example_ids(folder)


@st.cache_resource(show_spinner=False, max_entries=4)
def teacher_tokenizer(folder: str):
    # without the teacher's folder (weights kept elsewhere) the view shows token ids instead
    return token_views.load_tokenizer(folder) if Path(folder).is_dir() else None


@contextmanager
def run_folder_errors() -> Iterator[None]:
    """A run folder's unreadable top-k as a message whose text (it holds paths the store's
    config names) is plain text, never Markdown; then stop."""
    try:
        yield
    except (FirstError, OSError, ValueError) as exc:
        st.error("This run's per-token top-k could not be read:")
        st.text(str(exc))
        st.stop()


through_app()
st.title("Top-k coverage")
runs = require_runs()
coverage = require_rows(
    "coverage", "No top-k coverage in this store yet (the pipeline's `topk` stage records it).")
teachers = list(dict.fromkeys(coverage["run_id"]))


def _new_run() -> None:
    """Another run: its own counts replace the previous run's as the assumptions' defaults."""
    for key in ("cov_positions", "cov_vocab", "cov_k"):
        st.session_state.pop(key, None)


run_id = st.selectbox("Teacher run", teachers, format_func=run_label(runs), key="cov_run",
                      index=teachers.index(coverage_runs.default_run(coverage)),
                      on_change=_new_run, help="Opens on the largest vocabulary in the store.")
rows = coverage[coverage["run_id"] == run_id].sort_values("k")
stored = rows.iloc[0]
info = runs.set_index("run_id")
known = run_id in info.index
# a fixed sentence with numbers; the store's own texts go through st.text (plain, never Markdown)
st.info(coverage_runs.describe_run(info.at[run_id, "method"] if known else None, stored))
if known:
    st.text(f"model: {info.at[run_id, 'model']}    pipeline: {info.at[run_id, 'pipeline']}")

st.markdown("Assumptions for the disk arithmetic (defaults are this store's own counts):")
cols = st.columns(4)
n_positions = cols[0].number_input("Token positions in the data set", min_value=1,
                                   value=int(stored["n_positions"] or 1), step=1000,
                                   key="cov_positions")
vocab = cols[1].number_input("Vocabulary size", min_value=2,
                             value=int(stored["vocab_size"] or 32000), step=1000,
                             key="cov_vocab")
dtype = cols[2].selectbox("Probability dtype", list(storage_math.DTYPE_BYTES), index=1,
                          key="cov_dtype")
mark_k = cols[3].number_input("Mark K", min_value=1, max_value=int(rows["k"].max()), value=5,
                              key="cov_k")
disk = storage_math.disk_usage(rows["k"].to_numpy(), n_positions, vocab, storage_math.DTYPE_BYTES[dtype])
st.plotly_chart(plots.coverage_figure(rows, disk, mark_k=int(mark_k)), key="cov-fig")

at_k = disk[disk["k"] == mark_k].iloc[0]
covered = rows.loc[rows["k"] == mark_k, "mean"]
cards = st.columns(3)
cards[0].metric(f"Mean coverage at K = {mark_k}",
                f"{float(covered.iloc[0]):.1%}" if len(covered) else "n/a")
cards[1].metric("Full distribution", storage_math.human_bytes(at_k["full_bytes"]))
cards[2].metric(f"Top-{mark_k} store", storage_math.human_bytes(at_k["topk_bytes"]),
                help="Uncompressed: int32 ids + probabilities.")
st.markdown(
    f"Full distribution: {n_positions:,} positions x {vocab:,} tokens x "
    f"{storage_math.DTYPE_BYTES[dtype]} bytes = **{storage_math.human_bytes(at_k['full_bytes'])}**. "
    f"Top-{mark_k}: {n_positions:,} x {mark_k} x (4 + {storage_math.DTYPE_BYTES[dtype]}) bytes = "
    f"**{storage_math.human_bytes(at_k['topk_bytes'])}**, "
    f"{at_k['full_bytes'] / at_k['topk_bytes']:,.0f} times smaller.")
table = rows[["k", "mean", "p10", "p50", "p90", "bytes_per_position"]].merge(disk, on="k")
st.dataframe(table, hide_index=True)
st.caption("`bytes_per_position` is what the pipeline measured on disk for its own top-k store.")
csv_download(table, "topk-coverage.csv")

config = info["config"].get(run_id) if known else None
if token_views.instruct_run_dir(config) is not None:  # top-k at every response token
    st.subheader("Along the response (instruction setting)")
    try:  # only a folder this store's own run wrote (token_views.own_run_folder says which)
        folder = token_views.own_run_folder(config, token_views.run_roots(store_path()))
    except FileNotFoundError as exc:
        st.info("This run's folder (its per-token top-k) is not on this machine:")
        st.text(str(exc.filename))
        st.stop()
    except (token_views.RunFolderError, FirstError) as exc:
        st.warning("Not read: the folder this run's stored config names is not one of this "
                   "store's own run folders.")
        st.text(str(exc))
        st.stop()
    with run_folder_errors():
        by_position = token_positions(str(folder.train),
                                      store_version(folder.train / "manifest.json"))
    st.plotly_chart(plots.position_coverage_figure(by_position), key="cov-positions")
    st.caption(f"Training split, {int(by_position['n_tokens'].sum()):,} response tokens: the "
               "teacher's mean top-1 and top-k mass at each position of the response.")
    cols = st.columns([2, 3])
    with run_folder_errors():
        example_ids = token_examples(str(folder.val), store_version(folder.val / "manifest.json"))
    example = cols[0].selectbox("Validation example", example_ids, key="cov_example")
    c = cols[1].select_slider("c (FIRST transform)", options=list(view_state.TEMPERATURE_GRID),
                              value=1.0, key="cov_c", format_func=lambda v: f"{v:g}")
    with run_folder_errors():
        tokenizer = teacher_tokenizer(str(folder.tokenizer)) if folder.tokenizer else None
        view = token_views.token_topk_view(folder.val, example, c, tokenizer)
    st.dataframe(token_views.token_view_table(view, c), hide_index=True, key="cov_tokens")
    st.caption("Each response token with the teacher's stored top-k at it (raw full-vocabulary "
               "probabilities) and after the FIRST transform softmax(p / c): the student's "
               "target there.")
