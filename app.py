"""first-lab dashboard: `streamlit run app.py -- --store PATH`.

The store is `--store PATH`, else `$FIRST_STORE`, else `data/first.duckdb`; the sidebar
picker can switch to another `*.duckdb` file under `data/` only (checked by
`safe_store_path`, so `..` or symlinks cannot leave the folder). The server binds to
localhost by default (`.streamlit/config.toml`).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import streamlit as st

from first_core.store.paths import default_store_path, list_store_files, safe_store_path
from first_core.errors import StoreError
from first_core.views.safe_text import for_markdown
from pages._common import DATA_DIR, STORE_KEY, navigation_pages, through_app

PAGES = navigation_pages()  # the seven pages, listed explicitly


def cli_store() -> str | None:
    """`--store PATH` from `streamlit run app.py -- --store PATH` (other arguments ignored)."""
    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    parser.add_argument("--store")
    return parser.parse_known_args(sys.argv[1:])[0].store


def pick_store() -> Path:
    """Sidebar picker: the configured store, or a `*.duckdb` file under the data folder."""
    configured = default_store_path(cli_store())
    others = [p.relative_to(DATA_DIR.resolve()).as_posix()
              for p in list_store_files(DATA_DIR)
              if p != configured.resolve()]
    choice = st.sidebar.selectbox(
        "Store", [str(configured), *others], key="store_choice",
        help="The store given with --store or $FIRST_STORE (default data/first.duckdb), "
             f"or another *.duckdb file under {DATA_DIR}/.")
    if choice == str(configured):
        return configured
    try:
        return safe_store_path(choice, DATA_DIR)
    except StoreError as exc:
        st.sidebar.error(for_markdown(exc))
        return configured


through_app()  # a fresh server's first run is in Streamlit's legacy pages/ mode: leave it
st.set_page_config(page_title="first-lab", page_icon="🌡️", layout="wide")
st.session_state[STORE_KEY] = str(pick_store())
st.navigation(PAGES).run()
