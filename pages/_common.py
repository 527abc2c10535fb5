"""Streamlit glue shared by the pages: which store is open, cached reads, error display.

Reads go through `first_core.store.reads` (read-only, bound parameters, retry on a writer's
lock) and are cached per store *version* (modification times of the file and its WAL), so a
pipeline finishing a run invalidates the cache and nothing else does. User-facing store
problems (missing, corrupt, run in progress) become an `st.error` plus `st.stop()`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import duckdb
import pandas as pd
import streamlit as st

from first_core.store import prediction_reads
from first_core.store.paths import DEFAULT_STORE, default_store_path
from first_core.store.reads import (available_splits, list_runs, load_examples, load_metrics,
                                    load_predictions, load_temperature_search, load_topk_coverage)
from first_core.views.safe_text import for_markdown
from first_core.views import run_arrays, tables
from first_core.errors import FirstError, StoreError

STORE_KEY = "store_path"


def navigation_pages() -> list[st.Page]:
    """The dashboard's seven pages, listed explicitly (app.py's `st.navigation`).

    Icons are emoji, not `:material/...:` names: Streamlit 1.67 turns the open page's icon
    into the tab's favicon, and for a Material icon it fetches that from fonts.gstatic.com
    (missing offline, and a request leaving the machine); an emoji favicon is a data: URL.
    """
    return [
        st.Page("pages/home.py", title="Home", icon="🏠", default=True),
        st.Page("pages/reliability.py", title="Reliability", icon="📈"),
        st.Page("pages/coverage.py", title="Top-k coverage",
                icon="📚"),
        st.Page("pages/temperature.py", title="Temperature search",
                icon="🌡️"),
        st.Page("pages/compare.py", title="Compare runs", icon="📊"),
        st.Page("pages/examples.py", title="Examples", icon="🔎"),
        st.Page("pages/learn.py", title="Learn calibration", icon="🎓"),
    ]


def through_app() -> None:
    """Make sure this page runs inside app.py's navigation; called first by app.py and by
    every page.

    Streamlit decides once per server process, when the first session starts, whether the
    app "uses the pages/ directory" (Streamlit 1.67, `PagesManager.uses_pages_directory`);
    until some script calls `st.navigation`, it runs scripts in that legacy mode, where a
    first request for, say, /reliability runs pages/reliability.py directly, without
    app.py (no store picker, every file of pages/ in the sidebar). Calling `st.navigation`
    switches the legacy mode off for good, so a script started that way does so and reruns:
    the rerun goes through app.py, and the sidebar lists exactly app.py's seven pages (in
    legacy mode it would list every file of pages/, app.py included). The flag is only
    read; the switch is the public call.
    """
    from streamlit.runtime.pages_manager import PagesManager

    if PagesManager.uses_pages_directory:
        st.navigation(navigation_pages(), position="hidden")
        st.rerun()


DATA_DIR = DEFAULT_STORE.parent
DEMO_COMMAND = "python -m first_core demo"
LOADERS: dict[str, Callable[..., Any]] = {
    "runs": list_runs, "splits": available_splits, "predictions": load_predictions,
    "metrics": load_metrics, "search": load_temperature_search,
    "coverage": load_topk_coverage, "examples": load_examples,
    "matches": prediction_reads.read_matches, "rows": prediction_reads.read_rows}


def store_path() -> Path:
    """The store chosen in app.py (CLI `--store`, `$FIRST_STORE`, default, or the picker)."""
    return Path(st.session_state.get(STORE_KEY) or default_store_path())


def store_version(path: Path) -> tuple[int, int]:
    """Modification times (ns) of the store and its write-ahead log: the cache key."""
    wal = path.with_name(path.name + ".wal")
    return (path.stat().st_mtime_ns if path.exists() else 0,
            wal.stat().st_mtime_ns if wal.exists() else 0)


def _hashable(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


@st.cache_data(show_spinner=False, max_entries=128)
def _query(name: str, path: str, version: tuple[int, int],
           kwargs: tuple[tuple[str, Any], ...]) -> Any:
    del version  # only part of the cache key
    return LOADERS[name](path, **{k: list(v) if isinstance(v, tuple) else v for k, v in kwargs})


def query(name: str, **kwargs: Any) -> Any:
    """`store.<loader>(current store, **kwargs)`, cached until the store file changes."""
    path = store_path()
    return _query(name, str(path), store_version(path),
                  tuple(sorted((k, _hashable(v)) for k, v in kwargs.items())))


@st.cache_resource(show_spinner=False, max_entries=8)
def _arrays(path: str, version: tuple[int, int], run_id: str, split: str
            ) -> run_arrays.PredictionArrays:
    del version
    try:  # every row, from Arrow buffers: 2M imported predictions in a few seconds
        return prediction_reads.read_arrays(path, run_id, split)
    except ValueError as exc:
        raise StoreError(f"store {path}: run {run_id}, split {split}: {exc}") from exc


def live(fn: Callable[[], None]) -> Callable[[], None]:
    """`st.fragment`: a widget inside reruns only this function, not the whole page.

    `FIRST_FULL_RERUNS=1` turns it off (every move reruns the page, as before), which is the
    baseline `benchmarks/bench_browser.py` measures against in the same run.
    """
    return fn if os.environ.get("FIRST_FULL_RERUNS") == "1" else st.fragment(fn)


def arrays(run_id: str, split: str) -> run_arrays.PredictionArrays:
    """Dense, read-only slider inputs for one run and split (shared, not copied, per rerun)."""
    path = store_path()
    return _arrays(str(path), store_version(path), run_id, split)


@contextmanager
def store_errors() -> Iterator[None]:
    """Show a store problem as a message on the page (never a traceback) and stop."""
    try:
        yield
    except (FirstError, duckdb.Error) as exc:
        st.error(for_markdown(exc))  # names paths, runs, columns: shown as typed
        if "run in progress" in str(exc):
            st.info("The pipeline is writing to this store. The page will work again as soon "
                    "as it finishes this step; reload in a moment.")
        st.stop()


def first_visit(path: Path) -> None:
    """The empty/missing-store state: say what to run."""
    reason = "does not exist yet" if not path.exists() else "holds no runs yet"
    st.info(f"The store {for_markdown(path)} {reason}. Create it by running the embedded "
            "demo (a few minutes on a laptop CPU):")
    st.code(DEMO_COMMAND, language="bash")


def require_runs() -> pd.DataFrame:
    """The store's runs, or the first-visit message and a stop when there are none."""
    path = store_path()
    if not path.exists():
        first_visit(path)
        st.stop()
    with store_errors():
        runs = query("runs")
    if runs.empty:
        first_visit(path)
        st.stop()
    return runs


def require_rows(name: str, empty: str, **kwargs: Any) -> pd.DataFrame:
    """`query(name, **kwargs)`, or the message `empty` and a stop when it has no rows."""
    with store_errors():
        frame = query(name, **kwargs)
    if frame.empty:
        st.info(empty)
        st.stop()
    return frame


def run_label(runs: pd.DataFrame) -> Callable[[str], str]:
    """format_func for run pickers: 'method (seed N): run_id'."""
    info = runs.set_index("run_id")
    return lambda r: f"{info.at[r, 'method']} (seed {info.at[r, 'seed']}): {r}" \
        if r in info.index else r


def csv_download(frame: pd.DataFrame, name: str, label: str = "Download CSV") -> None:
    """A CSV download button for a table."""
    st.download_button(label, frame.to_csv(index=False).encode(), file_name=name,
                       mime="text/csv", key=f"download-{name}")


ALL_PIPELINES = "All pipelines"


def pick_pipeline(runs: pd.DataFrame, key: str) -> str | None:
    """A pipeline picker that starts from and writes back the `pipeline` query parameter;
    None means every pipeline (each still its own rows: seeds never mix across pipelines)."""
    names = tables.pipelines(runs)
    wanted = st.query_params.get("pipeline")
    if key not in st.session_state:
        st.session_state[key] = wanted if wanted in names else ALL_PIPELINES
    choice = st.selectbox("Pipeline", [ALL_PIPELINES, *names], key=key,
                          help="Each pipeline is one experiment (one config); means are over "
                               "the seeds of one pipeline, never across pipelines. Runs of "
                               "one name made with different configs are listed as "
                               "NAME [config A], NAME [config B], ...")
    if choice == ALL_PIPELINES:
        st.query_params.pop("pipeline", None)
        return None
    st.query_params["pipeline"] = choice
    return choice
