"""Home: which store is open, the runs it holds, the Table-1 headline, or how to make a store."""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

import streamlit as st

from first_core import importer, report
from first_core.config_diff import config_notes
from first_core.safe_text import for_markdown
from first_core.views import tables, view_state
from first_core.errors import FirstError
from pages._common import (csv_download, DEMO_COMMAND, first_visit, pick_pipeline, query,
                           store_errors, store_path, through_app)

ROOT = Path(__file__).resolve().parents[1]
DEMO_CONFIG = Path("configs") / "demo.toml"


def run_demo(path: Path) -> None:
    """Run the embedded demo pipeline into `path`, with a progress bar from its progress
    lines (one per seed: the demo has three)."""
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
                step = tables.parse_progress(line)
                if step:
                    bar.progress(min(step[0] / step[1], 1.0),
                                 text=f"{step[0]}/{step[1]}: {step[2]}")
        if proc.returncode:
            status.update(label=f"The demo stopped with exit code {proc.returncode}",
                          state="error")
            return
        status.update(label="Demo finished", state="complete")
    st.rerun()


def import_box(path: Path) -> None:
    """Upload another model's predictions and store them as their own pipeline."""
    limit = importer.MAX_BYTES // 2**20
    with st.expander("Import another model's predictions", expanded=False):
        st.markdown(
            f"A CSV, Parquet or JSONL file of up to **{limit} MB**, one prediction per row: "
            "either one `p_<LABEL>` column per answer option plus `gold`, or `confidence` "
            "plus `correct`; optional `example_id`, `split` (val / test / test_ood) and "
            "`question`. It is checked completely before anything is written, then stored "
            "as its own pipeline, so every page works on it. Larger files: "
            "`python -m first_core import FILE --name NAME`.")
        with st.form("import_form", clear_on_submit=False):
            upload = st.file_uploader("Predictions file", type=["csv", "parquet", "pq", "jsonl",
                                                                "ndjson"],
                                      key="import_file", max_upload_size=limit)
            name = st.text_input("Pipeline name", key="import_name",
                                 placeholder="e.g. my-llm-csqa")
            submitted = st.form_submit_button("Import")
        if not submitted:
            return
        if upload is None or not name:
            st.warning("Choose a file and a pipeline name first.")
            return
        if upload.size > importer.MAX_BYTES:
            st.error(f"{for_markdown(upload.name)}: {upload.size / 2**20:.1f} MB is over the "
                     f"{limit} MB upload limit; use the command line.")
            return
        with tempfile.TemporaryDirectory() as tmp:
            # a short local name with the upload's suffix (which picks the reader): the
            # user's name may be longer than this file system allows (255 bytes: 120 CJK
            # characters, legal on macOS and Windows); messages name the user's file
            local = Path(tmp) / ("upload" + Path(upload.name).suffix.lower()[:16])
            try:
                local.write_bytes(upload.getbuffer())
                _, run_id, n = importer.import_predictions(local, name, path)
            except (FirstError, OSError) as exc:
                st.error("Nothing was imported:")
                text = str(exc) if isinstance(exc, FirstError) else exc.strerror or str(exc)
                st.code(text.replace(str(local), upload.name), language=None)
                return
        # the file name, the name typed and the run id are the user's text: shown as typed
        st.success(f"Imported {n:,} predictions from {for_markdown(upload.name)} as pipeline "
                   f"{for_markdown(name)} (run {for_markdown(run_id)}).")


through_app()
st.title("first-lab: trustworthy distillation")
st.markdown("Calibration of distilled language models with **FIRST** (Shum et al., EMNLP "
            "2024): keep the teacher's top-k, re-scale it to be trustworthy, distil.")
path = store_path()
st.caption(f"Store: {for_markdown(path)}")

import_box(path)
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
convention = st.radio("Confidence convention", list(view_state.CONVENTIONS),
                      index=list(view_state.CONVENTIONS).index("paper"),  # the paper's Table 1
                      format_func=view_state.CONVENTIONS.get, horizontal=True, key="home_conv")
pipeline = pick_pipeline(runs, "home_pipeline")
with store_errors():
    headline, numbers = report.headline(tables.with_pipeline(query("metrics"), runs),
                                        convention, pipeline)
st.dataframe(headline, hide_index=True)
st.caption("%, as `python -m first_core report` prints them: mean ± std over the seeds of "
           "each pipeline (never across pipelines, nor across configs of one pipeline), n/a "
           "where a metric is undefined (AUROC when every answer is right). ID = in-domain "
           "test, OOD = out-of-domain test. Trust = Acc - ECE (our definition). AUROC: how "
           "well the confidence ranks right answers above wrong ones, 50 = chance; AURC: "
           "area under the risk-coverage curve, lower is better.")
for note in config_notes(runs, pipeline):  # one name, several configs: split, and why
    st.warning(for_markdown(note))
csv_download(numbers, "headline.csv")  # the numbers behind the cells: mean, std, seeds

shown = tables.labelled(runs).drop(columns=["config"], errors="ignore")
if pipeline is not None:
    shown = shown[shown["pipeline"] == pipeline]
st.subheader(f"Runs ({len(shown)} of {len(runs)} in this store)")
st.dataframe(shown, hide_index=True)
csv_download(shown, "runs.csv")
st.caption(f"Re-run or extend the pipeline with `{DEMO_COMMAND}` or "
           "`python -m first_core run --config CONFIG`; this page updates when the store changes.")
