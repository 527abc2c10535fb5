"""`report_to` of [teacher_train] / [student_train]: checked when the config loads, passed to
the `TrainingArguments` of every trainer (SFT, distillation, response SFT, token
distillation), and a change of it makes no finished stage stale."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

from first_core.config import report_to as reporting
from first_core.config.settings import TrainConfig
from first_core.config.loading import load_config
from first_core.data.examples import Example, format_prompt
from first_core.errors import ConfigError
from first_core.training.trainer import training_arguments

torch.set_num_threads(1)

HAS_TENSORBOARD = any(importlib.util.find_spec(p) is not None
                      for p in reporting.INTEGRATIONS["tensorboard"])


@pytest.fixture
def all_installed(monkeypatch):
    monkeypatch.setattr(reporting, "_installed", lambda package: True)


@pytest.mark.parametrize("value, expected", [
    ("none", []), ([], []), (["none"], []), ("all", ["all"]), (["all"], ["all"]),
    ("tensorboard", ["tensorboard"]), (["tensorboard", "wandb"], ["tensorboard", "wandb"]),
])
def test_accepted_values(all_installed, value, expected) -> None:
    assert reporting.check_report_to(value, "teacher_train.report_to") == expected


@pytest.mark.parametrize("override, message", [
    ("teacher_train.report_to='tensorbord'",
     "teacher_train.report_to: unknown integration 'tensorbord'; expected 'none', 'all'"),
    ("student_train.report_to=['tensorboard', 'none']",
     "student_train.report_to: 'none' cannot be combined"),
    ("student_train.report_to=['wandb', 'wandb']", "student_train.report_to: repeated"),
    ("teacher_train.report_to=3", "teacher_train.report_to: expected"),
    ("student_train.report_to=[1]", "student_train.report_to"),
])
def test_bad_values_name_the_key(all_installed, override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("[", r"\[")):
        load_config(overrides=[override])


def test_a_missing_package_fails_at_load_naming_the_key(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setitem(reporting.INTEGRATIONS, "wandb", ("first_lab_no_such_package",))
    cfg = tmp_path / "c.toml"
    cfg.write_text("[student_train]\nreport_to = ['wandb']\n")
    with pytest.raises(ConfigError, match=(
            r"c.toml: student_train.report_to: 'wandb' needs the package "
            r"'first_lab_no_such_package', which is not installed")):
        load_config(cfg)


def test_the_value_reaches_training_arguments(all_installed, tmp_path: Path) -> None:
    assert training_arguments(tmp_path, TrainConfig(), 0).report_to == []  # default: none
    args = training_arguments(tmp_path, TrainConfig(report_to=["tensorboard"]), 0)
    assert args.report_to == ["tensorboard"]
    assert load_config(overrides=["teacher_train.report_to=tensorboard"]
                       ).teacher_train.report_to == "tensorboard"


def test_a_report_to_change_makes_no_stage_stale() -> None:
    from first_core.pipeline.runner import _ORDER, affected_stage
    assert affected_stage("teacher_train.report_to", _ORDER) is None
    assert affected_stage("student_train.report_to", _ORDER) is None
    assert affected_stage("teacher_train.learning_rate", _ORDER) == "teacher_ft"


# ------------------------------------------------------------ every trainer writes its events

LETTERS, WORDS = ("A", "B", "C", "D"), ("red", "blue", "green", "gold")
CFG = dict(epochs=1, batch_size=4, learning_rate=1e-3, warmup_ratio=0.0, save_steps=100,
           max_length=64)


def events(out: Path) -> list[Path]:
    """TensorBoard event files the Trainer wrote (under output_dir/runs/<time>_<host>)."""
    return sorted(out.glob("runs/*/events.out.tfevents.*"))


@pytest.fixture(scope="module")
def mc(tmp_path_factory):
    from first_core.models.loading import load_model
    from first_core.models.presets import build_preset
    examples = [Example(id=f"q{i}", question=f"pick {WORDS[i % 4]}", labels=LETTERS,
                        choices=WORDS, answer=LETTERS[i % 4]) for i in range(8)]
    texts = [format_prompt(ex) + " " + ex.answer for ex in examples]
    path = build_preset("tiny-student", texts, tmp_path_factory.mktemp("mc") / "s", seed=0)
    return examples, path, load_model(path, device="cpu")[1]


@pytest.fixture(scope="module")
def instruct(tmp_path_factory):
    from helpers.tiny_instruct import make_examples, make_model
    examples = make_examples(tmp_path_factory.mktemp("instruct"), n=8)
    return examples, make_model


@pytest.mark.skipif(not HAS_TENSORBOARD, reason="tensorboard is not installed")
@pytest.mark.parametrize("report_to", ["tensorboard", "none"])
def test_every_trainer_reports_where_asked(mc, instruct, tmp_path: Path, report_to) -> None:
    from first_core.training.distill import distill, distill_tokens
    from first_core.training.sft import finetune, finetune_responses
    from first_core.knowledge.manifest import TOKENS
    from first_core.knowledge.reader import load_topk
    from first_core.knowledge.token_topk import extract_token_topk

    examples, path, tok = mc
    cfg = TrainConfig(report_to=report_to, **CFG)
    outs = {"sft": finetune(path, tok, examples, tmp_path / "sft", cfg).parent}
    ids = [tok.convert_tokens_to_ids(list(LETTERS))] * len(examples)
    targets = np.full((len(examples), 4), 0.25)
    outs["distill"] = distill(path, tok, examples, [ex.id for ex in examples], np.array(ids),
                              targets, tmp_path / "distill", cfg).parent
    inst, make_model = instruct
    teacher, itok = make_model(inst)
    icfg = TrainConfig(report_to=report_to, loss_on="response", **CFG)
    outs["response_sft"] = finetune_responses(make_model(inst, seed=1)[0], itok, inst,
                                              tmp_path / "rsft", icfg).parent
    extract_token_topk(teacher, itok, inst, tmp_path / "store", k=4, coverage_k=8,
                       max_length=64)
    s = load_topk(tmp_path / "store", layout=TOKENS)
    q = s.probs / s.probs.sum(axis=1, keepdims=True)
    outs["token_distill"] = distill_tokens(make_model(inst, seed=2)[0], itok, inst,
                                           s.example_ids, s.gold_ids, s.ids, q,
                                           tmp_path / "tdistill", icfg).parent
    for name, out in outs.items():
        assert bool(events(out)) == (report_to == "tensorboard"), name
