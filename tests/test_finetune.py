"""Supervised fine-tuning (training/sft.py, trainer.py, targets.py): collator, padding, learning,
resume, atomic final, a diverged run naming its config section in both settings."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from transformers import TrainerCallback

from first_core.config.settings import TrainConfig
from first_core.data.examples import Example, format_prompt
from first_core.errors import ConfigError
from first_core.training.sft import SFTTrainer, finetune, finetune_responses
from first_core.training.targets import IGNORE, TargetCollator, TargetDataset
from first_core.training.trainer import TrainingDiverged, training_arguments
from first_core.models.encoding import encode_examples
from first_core.models.loading import load_model
from first_core.models.presets import build_preset
from helpers.tiny_instruct import make_examples as instruct_examples, make_model

torch.set_num_threads(1)

LETTERS = ("A", "B", "C", "D")
WORDS = ("red", "blue", "green", "gold")


def make_examples(n: int) -> list[Example]:
    """A separable toy task: the colour named in the question is the answer; the filler
    words make prompt lengths differ, so batches need padding."""
    return [Example(id=f"q{i}", question=" ".join(["please"] * (i % 3) + [f"pick {WORDS[i % 4]}"]),
                    labels=LETTERS, choices=WORDS, answer=LETTERS[i % 4]) for i in range(n)]


CFG = TrainConfig(epochs=6, batch_size=8, learning_rate=1e-2, warmup_ratio=0.0, save_steps=4,
                  max_length=64)


@pytest.fixture(scope="module")
def student(tmp_path_factory):
    texts = [format_prompt(ex) + " " + ex.answer for ex in make_examples(8)]
    path = build_preset("tiny-student", texts, tmp_path_factory.mktemp("m") / "s", seed=0)
    return path, load_model(path, device="cpu")[1]


def answer_nll(model, tok, examples) -> float:
    """Mean CE of the gold letter, one unpadded example at a time (independent of the collator)."""
    enc = encode_examples(tok, examples, max_length=64)
    with torch.no_grad():
        losses = [F.cross_entropy(model(torch.tensor([ids[:-1]])).logits[0, -1],
                                  torch.tensor(ids[-1])) for ids in enc.input_ids]
    return float(torch.stack(losses).mean())


def model_inputs(batch: dict) -> dict:
    """The collator's batch less its `index` column: what the model's own loss takes."""
    return {k: v for k, v in batch.items() if k != "index"}


def test_collator_right_pads_and_labels_only_the_answer(student):
    _, tok = student
    enc = encode_examples(tok, make_examples(3), max_length=64)
    items = [TargetDataset(enc)[i] for i in range(3)]
    lengths = [len(s) for s in enc.input_ids]
    assert len(set(lengths)) == 3
    batch = TargetCollator(tok.pad_token_id, "answer")(items)
    for row, ids in enumerate(enc.input_ids):
        n = len(ids)
        assert batch["input_ids"][row, :n].tolist() == ids
        assert (batch["input_ids"][row, n:] == tok.pad_token_id).all()
        assert batch["attention_mask"][row].tolist() == [1] * n + [0] * (max(lengths) - n)
        labels = batch["labels"][row]
        assert labels[n - 1] == ids[-1] and (labels[: n - 1] == IGNORE).all()
        assert (labels[n:] == IGNORE).all()
    seq = TargetCollator(tok.pad_token_id, "sequence")(items)["labels"]
    assert torch.equal(seq != IGNORE, batch["attention_mask"].bool())


@pytest.mark.parametrize("loss_on", ["answer", "sequence"])
def test_loss_with_padding_equals_unpadded(student, loss_on):
    path, tok = student
    model = load_model(path, device="cpu")[0].eval()
    enc = encode_examples(tok, make_examples(3)[1:], max_length=64)  # lengths differ
    items = [TargetDataset(enc)[i] for i in range(2)]
    collate = TargetCollator(tok.pad_token_id, loss_on)
    with torch.no_grad():
        singles = [model(**model_inputs(collate([it]))).loss for it in items]
        both = model(**model_inputs(collate(items))).loss
    counts = torch.tensor([1.0, 1.0]) if loss_on == "answer" else \
        torch.tensor([len(s) - 1 for s in enc.input_ids], dtype=torch.float)
    expected = (torch.stack(singles) * counts).sum() / counts.sum()
    torch.testing.assert_close(both, expected, rtol=1e-5, atol=1e-6)
    assert not torch.isclose(singles[0], singles[1])  # the comparison can tell rows apart


@pytest.mark.parametrize("loss_on", ["answer", "sequence"])
@pytest.mark.parametrize("num_items", [None, 7])
def test_sft_loss_projects_only_labelled_positions(student, loss_on, num_items, tmp_path):
    """SFTTrainer's loss and gradients equal the model's own full-logits loss, while the LM
    head sees only the rows that predict a label."""
    path, tok = student
    model = load_model(path, device="cpu")[0]
    enc = encode_examples(tok, make_examples(3), max_length=64)  # three lengths: padding
    batch = TargetCollator(tok.pad_token_id, loss_on)([TargetDataset(enc)[i] for i in range(3)])
    trainer = SFTTrainer(model=model, args=training_arguments(tmp_path, CFG, 0))
    rows = []
    hook = model.lm_head.register_forward_hook(lambda m, i, o: rows.append(i[0].shape[:-1]))
    loss = trainer.compute_loss(model, dict(batch), num_items_in_batch=num_items)
    hook.remove()
    n_labels = int((batch["labels"][:, 1:] != IGNORE).sum())
    assert rows == [torch.Size([n_labels])]  # not [B, T]
    grads = torch.autograd.grad(loss, model.lm_head.weight)[0]
    extra = {} if num_items is None else {"num_items_in_batch": num_items}
    reference = model(**model_inputs(batch), **extra).loss  # the model's, all [B, T, V] logits
    ref_grads = torch.autograd.grad(reference, model.lm_head.weight)[0]
    torch.testing.assert_close(loss, reference, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grads, ref_grads, rtol=1e-4, atol=1e-7)


class Crash(TrainerCallback):
    def __init__(self, at: int) -> None:
        self.at = at

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.at:
            raise KeyboardInterrupt("simulated kill")


class CountSteps(TrainerCallback):
    def __init__(self) -> None:
        self.steps: list[int] = []

    def on_step_end(self, args, state, control, **kwargs):
        self.steps.append(state.global_step)


@pytest.fixture(scope="module")
def reference(student, tmp_path_factory):
    """One uninterrupted fine-tuning run (24 steps)."""
    path, tok = student
    out = tmp_path_factory.mktemp("ft") / "ref"
    return finetune(path, tok, make_examples(32), out, CFG, seed=0)


def test_finetune_learns_and_publishes_final(student, reference):
    path, tok = student
    examples = make_examples(32)
    before = answer_nll(load_model(path, device="cpu")[0], tok, examples)
    model, tok2 = load_model(reference, device="cpu")
    after = answer_nll(model, tok2, examples)
    assert after < 0.5 * before and after < 0.8 * math.log(4)  # beats guessing among letters
    names = {p.name for p in reference.iterdir()}
    assert {"model.safetensors", "config.json", "tokenizer.json"} <= names
    assert "training_args.bin" not in names and not (reference.parent / ".final.tmp").exists()


def test_killed_run_resumes_from_its_checkpoint(student, reference, tmp_path):
    path, tok = student
    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        finetune(path, tok, make_examples(32), out, CFG, seed=0, callbacks=[Crash(6)])
    assert (out / "checkpoint-4").is_dir() and not (out / "final").exists()
    counter = CountSteps()
    final = finetune(path, tok, make_examples(32), out, CFG, seed=0, callbacks=[counter])
    assert counter.steps == list(range(5, 25))  # continued after step 4, did not restart
    resumed = load_file(final / "model.safetensors")
    ref = load_file(reference / "model.safetensors")
    for name in ref:
        torch.testing.assert_close(resumed[name], ref[name], rtol=1e-4, atol=1e-5)
    again = CountSteps()
    assert finetune(path, tok, make_examples(32), out, CFG, seed=0, callbacks=[again]) == final
    assert again.steps == []  # a finished run is not trained again


@pytest.mark.parametrize("setting", ["multiple choice", "instruction"])
def test_a_diverged_run_names_its_config_section_in_both_settings(student, setting, tmp_path):
    """Both settings train through one `train_and_save`, so a run whose weights become
    non-finite stops naming the config section to change, and leaves no `final`. (1e30:
    after one Adam step of ~1e30 the next forward overflows float32 on every CPU.)"""
    out = tmp_path / "run"
    if setting == "multiple choice":
        path, tok = student
        cfg = TrainConfig(epochs=1, batch_size=4, learning_rate=1e30, warmup_ratio=0.0,
                          save_steps=2, max_length=64)
        run, section = lambda: finetune(path, tok, make_examples(24), out, cfg,
                                        section="teacher_train"), "teacher_train"
    else:
        examples = instruct_examples(tmp_path / "data", n=24)
        model, tok = make_model(examples)
        cfg = TrainConfig(epochs=1, batch_size=4, learning_rate=1e30, warmup_ratio=0.0,
                          save_steps=2, max_length=64, loss_on="response")
        run, section = lambda: finetune_responses(model, tok, examples, out, cfg,
                                                  section="student_train"), "student_train"
    with pytest.raises(TrainingDiverged, match=rf"^{section}: training diverged: non-finite "
                       r".*learning_rate=1e\+30.*nothing of this stage was kept"):
        run()
    assert not (out / "final").exists()


def test_bad_training_options_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="warmup_ratio"):
        training_arguments(tmp_path, TrainConfig(warmup_ratio=1.5), seed=0)
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="fp16"):
            training_arguments(tmp_path, TrainConfig(fp16=True), seed=0)
    with pytest.raises(ConfigError, match="loss_on"):
        TargetCollator(0, "everything")
