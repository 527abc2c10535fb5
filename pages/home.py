"""Home: which store is open, the runs it holds, the Table-1 headline, or how to make a store."""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

import streamlit as st

from first_core.importer import table as importer, run as importing
from first_core import report
from first_core.config.diff import config_notes
from first_core.views.safe_text import for_markdown
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


UPLOAD_TYPES = ["csv", "parquet", "pq", "jsonl", "ndjson", "json", "zip"]


def import_box(path: Path) -> None:
    """Upload another model's predictions, or another tool's evaluation files, and store
    them as their own pipelines (`first_core.importer.run.import_file`)."""
    limit = importer.MAX_BYTES // 2**20
    with st.expander("Import another model's predictions", expanded=False):
        st.markdown(
            f"Up to **{limit} MB** in all. Either a CSV, Parquet or JSONL file, one prediction "
            "per row: one `p_<LABEL>` column per answer option plus `gold`, or `confidence` "
            "plus `correct`; optional `example_id`, `split` (val / test / test_ood) and "
            "`question`. Or the files another tool wrote: an **lm-evaluation-harness** "
            "output folder as a `.zip`, or its `results_*.json` and `samples_*.jsonl` "
            "(each task becomes a pipeline named after it, `TASK-acc_norm` beside it); "
            "**lighteval** `details_*.parquet`; an **OpenAI / vLLM Batch** output with "
            "`top_logprobs` plus its gold answers. Everything is checked before anything "
            "is written, so every page works on it. Larger files: "
            "`python -m first_core import PATH [--name NAME]`.")
        with st.form("import_form", clear_on_submit=False):
            uploads = st.file_uploader("Predictions or evaluation files", type=UPLOAD_TYPES,
                                       key="import_file", max_upload_size=limit,
                                       accept_multiple_files=True)
            gold = st.file_uploader("Gold answers (OpenAI Batch output only: custom_id, "
                                    "gold)", type=["csv", "jsonl", "parquet"],
                                    key="import_gold", max_upload_size=limit)
            name = st.text_input("Pipeline name (optional for lm-eval and lighteval)",
                                 key="import_name", placeholder="e.g. my-llm-csqa")
            submitted = st.form_submit_button("Import")
        if not submitted:
            return
        uploads = [u for u in (uploads or []) if u is not None]
        if not uploads:
            st.warning("Choose a file first.")
            return
        size = sum(u.size for u in uploads) + (gold.size if gold is not None else 0)
        if size > importer.MAX_BYTES:
            st.error(f"{size / 2**20:.1f} MB is over the {limit} MB upload limit; use the "
                     "command line.")
            return
        _import_uploads(path, uploads, gold, name or None)


def _import_uploads(path: Path, uploads: list, gold, name: str | None) -> None:
    """Write the uploads to a temporary folder (several files: the folder is the import)
    and import them; messages name the user's files, never the temporary folder."""
    shown = ", ".join(u.name for u in uploads)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "upload"
        folder.mkdir()
        # the user's file names (an lm-eval folder is recognised by them), except one longer
        # than a file system allows (255 bytes: 120 CJK characters, legal on macOS and
        # Windows), which gets a short name with its suffix; messages name the user's files
        local = [folder / _local_name(u.name, i) for i, u in enumerate(uploads)]
        gold_file = Path(tmp) / _local_name(gold.name, -1) if gold is not None else None
        named = {str(f): u.name for f, u in zip(local, uploads)}
        if gold_file is not None:
            named[str(gold_file)] = gold.name
        try:
            for u, file in zip(uploads, local):
                file.write_bytes(u.getbuffer())
            if gold_file is not None:
                gold_file.write_bytes(gold.getbuffer())
            result = importing.import_file(local[0] if len(local) == 1 else folder, name,
                                           path, gold=gold_file)
        except (FirstError, OSError) as exc:
            st.error("Nothing was imported:")
            text = str(exc) if isinstance(exc, FirstError) else exc.strerror or str(exc)
            for where, shown_name in named.items():
                text = text.replace(where, shown_name)
            st.code(text.replace(str(folder) + "/", "").replace(str(tmp) + "/", ""),
                    language=None)
            return
    # the file names, the names typed and the run ids are the user's text: shown as typed
    for pipeline, run_id, n in result.runs:
        st.success(f"Imported {n:,} predictions from {for_markdown(shown)} as pipeline "
                   f"{for_markdown(pipeline)} (run {for_markdown(run_id)}).")
    for note in result.notes:
        st.info(for_markdown(note.replace(str(folder) + "/", "")))


def _local_name(name: str, index: int) -> str:
    """An upload's file name on disk: its own, or a short one with its suffix when it is
    longer than file systems allow."""
    base = Path(name).name
    if len(base.encode()) <= 200:
        return base
    return f"upload-{index + 1}{Path(base).suffix.lower()[:16]}"


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
