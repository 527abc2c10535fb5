"""Home: which store is open, the runs it holds, the Table-1 headline, or how to make a store."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import streamlit as st

from first_core import views
from pages._common import (DEMO_COMMAND, csv_download, first_visit, query, store_errors,
                           store_path)

ROOT = Path(__file__).resolve().parents[1]
DEMO_CONFIG = Path("configs") / "demo.toml"


def run_demo(path: Path) -> None:
    """Run the embedded demo pipeline into `path`, with a progress bar from its stage lines."""
    cmd = [sys.executable, "-m", "first_core", "run", "--config", str(DEMO_CONFIG),
           "--store", str(path.resolve())]
    bar = st.progress(0.0, text="Starting the demo pipeline ...")
    log: list[str] = []
    with st.status("Running the embedded demo", expanded=True) as status:
        tail = st.empty()
        with subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True, bufsize=1) as proc:
            assert proc.stdout is not None
            for line in proc.stdout:
                log.append(line.rstrip())
                tail.code("\n".join(log[-12:]))
                step = views.parse_progress(line)
                if step:
                    bar.progress(step[0] / step[1], text=f"Stage {step[0]}/{step[1]}: {step[2]}")
        if proc.returncode:
            status.update(label=f"The demo stopped with exit code {proc.returncode}",
                          state="error")
            return
        status.update(label="Demo finished", state="complete")
    st.rerun()


st.title("first-lab: trustworthy distillation")
st.markdown("Calibration of distilled language models with **FIRST** (Shum et al., EMNLP "
            "2024): keep the teacher's top-k, re-scale it to be trustworthy, distil.")
path = store_path()
st.caption(f"Store: `{path}`")

runs = None
if path.exists():
    with store_errors():
        runs = query("runs")
if runs is None or runs.empty:
    first_visit(path)
    if st.button(f"Run the embedded demo now (`python -m first_core run --config "
                 f"{DEMO_CONFIG.as_posix()}`)", key="run_demo"):
        run_demo(path)
    st.stop()

st.subheader("Headline (Table 1)")
convention = st.radio("Confidence convention", list(views.CONVENTIONS),
                      index=list(views.CONVENTIONS).index("paper"),  # the paper's Table 1
                      format_func=views.CONVENTIONS.get, horizontal=True, key="home_conv")
with store_errors():
    headline = views.headline_table(query("metrics"), convention)
percent = {c: st.column_config.NumberColumn(c, format="percent")
           for c in headline.columns if c != "method"}
st.dataframe(headline, hide_index=True, column_config=percent)
st.caption("ID = in-domain test, OOD = out-of-domain test; mean over seeds. "
           "Trust = Acc - ECE (our definition).")
csv_download(headline, "headline.csv")

st.subheader(f"Runs in this store ({len(runs)})")
shown = runs.drop(columns=["config"], errors="ignore")
st.dataframe(shown, hide_index=True)
csv_download(shown, "runs.csv")
st.caption(f"Re-run or extend the pipeline with `{DEMO_COMMAND}` or "
           "`python -m first_core run --config CONFIG`; this page updates when the store changes.")
