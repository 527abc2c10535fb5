"""The pipeline end to end on a CUDA GPU (`python -m pytest -m gpu`; scripts/gpu_check.sh).

Skipped, with the reason, where `torch.cuda.is_available()` is false. configs/tiny.toml runs
in this process, with every model load and every Trainer checked to sit on the GPU;
configs/smollm2.toml (the real pretrained teacher) runs through the command line, shortened
with `--set` so the check stays cheap (the full 4 + 4 epoch, three-seed run is the device
script's job).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from first_core.store.connection import open_readonly
from first_core.store.reads import list_runs, load_metrics, load_predictions
from helpers.smollm2 import smollm2_missing

ROOT = Path(__file__).resolve().parents[1]

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(),
                       reason="needs a CUDA GPU (torch.cuda.is_available() is false)"),
]


def check_store(path: Path, n_runs: int) -> None:
    with open_readonly(path) as con:
        runs = list_runs(con)
        metrics = load_metrics(con)
        preds = load_predictions(con, columns=["run_id", "confidence"])
    assert len(runs) == n_runs
    assert preds.confidence.between(0, 1).all()
    values = metrics[metrics.metric.isin(["accuracy", "ece"])].value
    assert len(values) and all(math.isfinite(v) and 0 <= v <= 1 for v in values)


def test_tiny_pipeline_runs_on_cuda(tmp_path: Path, monkeypatch) -> None:
    from first_core.training import distill, sft as finetune
    from first_core.models import loading as models
    from first_core.pipeline import runner as pipeline
    from first_core.config.loading import load_config

    loaded: list[str] = []
    trained: list[tuple[str, str]] = []
    real_load = models.load_model

    def load(*args, **kwargs):
        model, tok = real_load(*args, **kwargs)
        loaded.append(next(model.parameters()).device.type)
        return model, tok

    monkeypatch.setattr(models, "load_model", load)
    for module in (finetune, distill):
        def spy(trainer, out_dir, *args, real=module.train_and_save):
            out = real(trainer, out_dir, *args)
            trained.append((trainer.args.device.type,
                            next(trainer.model.parameters()).device.type))
            return out
        monkeypatch.setattr(module, "train_and_save", spy)

    cfg = load_config(ROOT / "configs" / "tiny.toml", [
        f"runs_dir='{tmp_path / 'runs'}'", f"data.dir='{tmp_path / 'data'}'",
        f"store='{tmp_path / 'first.duckdb'}'"])
    table = pipeline.run(cfg, echo=print)
    # teacher, student_ft and the three distilled students trained on the GPU; every model
    # the stages loaded (top-k, evaluation) sat there too
    assert trained == [("cuda", "cuda")] * 5
    assert loaded and set(loaded) == {"cuda"}
    assert len(table) == 5
    check_store(tmp_path / "first.duckdb", 5)


@pytest.mark.skipif(smollm2_missing() is not None, reason=smollm2_missing() or "")
def test_smollm2_short_run_on_cuda(tmp_path: Path) -> None:
    sets = ["data.n_train=160", "data.n_val=40", "data.n_test=40", "data.n_ood=40",
            "teacher_train.epochs=1", "student_train.epochs=1", "eval.n_boot=50",
            f"runs_dir='{tmp_path / 'runs'}'", f"data.dir='{tmp_path / 'data'}'"]
    proc = subprocess.run(
        [sys.executable, "-m", "first_core", "run", "--config",
         str(ROOT / "configs" / "smollm2.toml"), *[a for s in sets for a in ("--set", s)],
         "--store", str(tmp_path / "first.duckdb")],
        cwd=tmp_path, capture_output=True, text=True, timeout=900,
        env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    check_store(tmp_path / "first.duckdb", 5)
    run = tmp_path / "runs" / "smollm2"
    manifest = json.loads((run / "topk" / "train" / "manifest.json").read_text())
    assert manifest["vocab_size"] == 49_152 and manifest["k"] == 5  # the real teacher's top-k
