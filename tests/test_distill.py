"""Knowledge matching (distill.py): the top-k KL loss, row alignment, the Trainer subclass."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from transformers import TrainerCallback

from first_core.config import TrainConfig
from first_core.data import Example, format_prompt
from first_core.distill import (DistillCollator, DistillTrainer, align_topk, answer_logits, distill,
                                topk_kl_loss)
from first_core.errors import ConfigError, FirstError
from first_core.finetune import EncodedDataset, training_arguments
from first_core.models import build_preset, encode_examples, load_model

torch.set_num_threads(1)

LETTERS = ("A", "B", "C", "D")
WORDS = ("red", "blue", "green", "gold")


# ---------------------------------------------------------------- independent references

def np_softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def np_first(p: np.ndarray, c: float) -> np.ndarray:
    """The paper's transform exp(p/c) / sum exp(p/c), written out directly."""
    return np.exp(p / c) / np.exp(p / c).sum(axis=1, keepdims=True)


def np_kl(logits: np.ndarray, ids: np.ndarray, q_t: np.ndarray, mode: str, c: float) -> np.ndarray:
    p = np.take_along_axis(np_softmax(logits), ids, axis=1)
    q_s = np_first(p, c) if mode == "first" else p / p.sum(axis=1, keepdims=True)
    return (q_t * (np.log(q_t) - np.log(q_s))).sum(axis=1)


def random_case(seed: int, b: int = 6, v: int = 40, k: int = 5):
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 3, size=(b, v))
    ids = np.stack([rng.choice(v, size=k, replace=False) for _ in range(b)])
    q_t = rng.dirichlet(np.ones(k), size=b)
    return logits, ids, q_t


# ---------------------------------------------------------------- the loss

@pytest.mark.parametrize("mode,c", [("first", 0.3), ("first", 1.0), ("renorm", None),
                                    ("ls", None)])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_kl_equals_numpy(mode, c, seed):
    logits, ids, q_t = random_case(seed)
    expected = np_kl(logits, ids, q_t, "first" if mode == "first" else "renorm", c)
    t = [torch.tensor(a) for a in (logits, ids, q_t)]
    got = topk_kl_loss(*t, mode=mode, student_c=c, reduction="none")
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(float(topk_kl_loss(*t, mode=mode, student_c=c)), expected.mean(),
                               rtol=1e-5)


def test_kl_matches_torch_kl_div_on_normalised_inputs():
    logits, ids, q_t = (torch.tensor(a) for a in random_case(3))
    p = torch.softmax(logits, dim=-1).gather(1, ids)
    q_s = p / p.sum(1, keepdim=True)
    expected = F.kl_div(q_s.log(), q_t, reduction="batchmean")
    torch.testing.assert_close(topk_kl_loss(logits, ids, q_t, mode="renorm"), expected)


def test_kl_is_zero_when_student_matches_teacher():
    logits, ids, q_t = random_case(4)
    rows = np.arange(len(ids))[:, None]
    # renorm: only the ratios at the k ids matter, so the rest of the row is left random
    matched = logits.copy()
    matched[rows, ids] = np.log(q_t) + 2.0
    zero = topk_kl_loss(torch.tensor(matched), torch.tensor(ids), torch.tensor(q_t), "renorm")
    assert abs(float(zero)) < 1e-6
    # first: a student whose raw top-k probabilities equal the teacher's raw ones, same c
    raw = q_t * 0.9  # rows sum to 0.9, the rest of the mass spread over the other tokens
    full = np.full(logits.shape, 0.1 / (logits.shape[1] - ids.shape[1]))
    full[rows, ids] = raw
    target = np_first(raw, 0.3)
    zero = topk_kl_loss(torch.tensor(np.log(full)), torch.tensor(ids), torch.tensor(target),
                        "first", student_c=0.3)
    assert abs(float(zero)) < 1e-6
    other = topk_kl_loss(torch.tensor(logits), torch.tensor(ids), torch.tensor(q_t), "renorm")
    assert float(other) > 1e-3


def test_kl_gradient_flows_and_is_correct():
    logits, ids, q_t = random_case(5, b=3, v=12, k=4)
    x = torch.tensor(logits, requires_grad=True)
    for mode, c in (("first", 0.4), ("renorm", None)):
        assert torch.autograd.gradcheck(
            lambda z: topk_kl_loss(z, torch.tensor(ids), torch.tensor(q_t), mode, c), (x,))
    loss = topk_kl_loss(x.float(), torch.tensor(ids), torch.tensor(q_t), "first", 0.3)
    loss.backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_kl_is_finite_on_extreme_inputs():
    logits, ids, q_t = random_case(6)
    q_t[:, 1:] = 0.0
    q_t[:, 0] = 1.0  # a one-hot teacher row: 0 * log 0 terms
    huge = torch.tensor(logits * 1e4, dtype=torch.float32, requires_grad=True)
    loss = topk_kl_loss(huge, torch.tensor(ids), torch.tensor(q_t), "renorm")
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(huge.grad).all()


def test_kl_rejects_bad_arguments():
    logits, ids, q_t = (torch.tensor(a) for a in random_case(7))
    with pytest.raises(ConfigError, match="student_c"):
        topk_kl_loss(logits, ids, q_t, "first", None)
    with pytest.raises(ConfigError, match="mode"):
        topk_kl_loss(logits, ids, q_t, "softmax", 1.0)
    with pytest.raises(ValueError, match="shapes"):
        topk_kl_loss(logits, ids[:, :2], q_t, "renorm")


# ---------------------------------------------------------------- top-k rows by example id

def test_align_topk_reorders_by_id_and_names_problems():
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 50, size=(4, 3))
    targets = rng.dirichlet(np.ones(3), size=4)
    stored = ["a", "b", "c", "d"]
    got_ids, got_t = align_topk(["c", "a", "d"], stored, ids, targets, vocab_size=50)
    assert got_ids.tolist() == ids[[2, 0, 3]].tolist()
    np.testing.assert_allclose(got_t.numpy(), targets[[2, 0, 3]], rtol=1e-6)
    with pytest.raises(FirstError, match=r"1 training example.*'zz'"):
        align_topk(["a", "zz"], stored, ids, targets, vocab_size=50)
    with pytest.raises(FirstError, match=r"duplicated.*'a'"):
        align_topk(["a"], ["a", "a", "c", "d"], ids, targets, vocab_size=50)
    with pytest.raises(FirstError, match="vocabulary"):
        align_topk(stored, stored, ids, targets, vocab_size=int(ids.max()))
    with pytest.raises(FirstError, match=r"example 'b'.*not a distribution"):
        align_topk(["a", "b"], stored, ids, targets * [[1], [0.5], [1], [1]], vocab_size=50)


# ---------------------------------------------------------------- the Trainer

def make_examples(n: int) -> list[Example]:
    return [Example(id=f"q{i}", question=" ".join(["please"] * (i % 3) + [f"pick {WORDS[i % 4]}"]),
                    labels=LETTERS, choices=WORDS, answer=LETTERS[i % 4]) for i in range(n)]


@pytest.fixture(scope="module")
def student(tmp_path_factory):
    texts = [format_prompt(ex) + " " + ex.answer for ex in make_examples(8)]
    path = build_preset("tiny-student", texts, tmp_path_factory.mktemp("m") / "s", seed=0)
    return path, load_model(path, device="cpu")[1]


def teacher_rows(tok, examples: list[Example]) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Synthetic teacher top-5: the four letters plus "pick", 70% on the gold letter."""
    letter_ids = tok.convert_tokens_to_ids(list(LETTERS))
    ids = np.array([[letter_ids[LETTERS.index(ex.answer)],
                     *[t for t in letter_ids if t != letter_ids[LETTERS.index(ex.answer)]],
                     tok.convert_tokens_to_ids("pick")] for ex in examples])
    targets = np.tile([0.7, 0.1, 0.1, 0.05, 0.05], (len(examples), 1))
    return [ex.id for ex in examples][::-1], ids[::-1], targets  # stored in another order


def batch_of(tok, examples, rows):
    enc = encode_examples(tok, examples, max_length=64)
    ids, targets = align_topk(enc.example_ids, *rows, vocab_size=len(tok))
    collate = DistillCollator(tok.pad_token_id, "answer", ids, targets)
    return collate([EncodedDataset(enc)[i] for i in range(len(enc))])


def make_trainer(path, tok, tmp_path, **kwargs) -> DistillTrainer:
    model = load_model(path, device="cpu")[0]
    return DistillTrainer(model=model, args=training_arguments(tmp_path, TrainConfig(), 0),
                          **kwargs)


def test_compute_loss_uses_the_answer_position_of_each_padded_row(student, tmp_path):
    path, tok = student
    examples = make_examples(3)
    batch = batch_of(tok, examples, teacher_rows(tok, examples))
    assert len(set(batch["answer_pos"].tolist())) == 3  # rows of different lengths
    trainer = make_trainer(path, tok, tmp_path, mode="first", student_c=0.5)
    model = trainer.model.eval()
    with torch.no_grad():
        # reference: each example alone, unpadded, full logits of its last prompt token
        alone = torch.stack([model(torch.tensor([ids[:-1]])).logits[0, -1] for ids in
                             encode_examples(tok, examples, max_length=64).input_ids])
        expected = topk_kl_loss(alone, batch["topk_ids"], batch["topk_targets"], "first", 0.5)
        torch.testing.assert_close(trainer.compute_loss(model, batch), expected, rtol=1e-5,
                                   atol=1e-6)
        torch.testing.assert_close(answer_logits(model, batch, keep_only=False), alone,
                                   rtol=1e-5, atol=1e-5)
        per_sum = topk_kl_loss(alone, batch["topk_ids"], batch["topk_targets"], "first", 0.5,
                               reduction="none").sum()
        torch.testing.assert_close(trainer.compute_loss(model, batch, num_items_in_batch=8),
                                   per_sum / 8, rtol=1e-5, atol=1e-6)
        ce_trainer = make_trainer(path, tok, tmp_path, mode="renorm", ce_weight=1.0)
        ce = F.cross_entropy(alone, batch["answer_id"])
        torch.testing.assert_close(ce_trainer.compute_loss(model, batch), ce, rtol=1e-5,
                                   atol=1e-6)


def test_distill_trains_with_a_short_final_batch(student, tmp_path):
    path, tok = student
    examples = make_examples(5)
    rows = teacher_rows(tok, examples)
    cfg = TrainConfig(epochs=10, batch_size=2, learning_rate=1e-2, warmup_ratio=0.0,
                      save_steps=100, max_length=64)  # 5 = 2 + 2 + 1 per epoch
    batch = batch_of(tok, examples, rows)

    def kl(model) -> float:
        with torch.no_grad():
            logits = answer_logits(model.eval(), batch, keep_only=True)
            return float(topk_kl_loss(logits, batch["topk_ids"], batch["topk_targets"], "renorm"))

    before = kl(load_model(path, device="cpu")[0])
    final = distill(path, tok, examples, *rows, tmp_path / "d", cfg, mode="renorm", seed=0)
    after = kl(load_model(final, device="cpu")[0])
    assert after < 0.85 * before  # 30 steps on 5 items: it at least learns the letter marginal
    assert (final / "model.safetensors").exists()


def test_distill_refuses_missing_rows(student, tmp_path):
    path, tok = student
    examples = make_examples(4)
    ids, top, targets = teacher_rows(tok, examples[:3])
    with pytest.raises(FirstError, match="q3"):
        distill(path, tok, examples, ids, top, targets, tmp_path / "d", TrainConfig(),
                mode="renorm")



class LoggedLosses(TrainerCallback):
    def __init__(self) -> None:
        self.losses: list[float] = []

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            self.losses.append(float(logs["loss"]))


def test_gradient_accumulation_reduces_like_one_big_batch(student, tmp_path):
    """Micro-batches of 3 + 2 accumulated (with activation checkpointing) must give the loss
    and update of one batch of 5: the exact mean over the optimizer step, not the mean of
    micro-batch means."""
    path, tok = student
    examples = make_examples(5)
    rows = teacher_rows(tok, examples)
    base = dict(epochs=2, learning_rate=1e-2, warmup_ratio=0.0, save_steps=1, max_length=64)
    runs = {}
    for name, extra in (("big", dict(batch_size=5)),
                        ("accum", dict(batch_size=3, gradient_accumulation_steps=2,
                                       gradient_checkpointing=True))):
        logged = LoggedLosses()
        final = distill(path, tok, examples, *rows, tmp_path / name, TrainConfig(**base, **extra),
                        mode="first", student_c=0.5, seed=0, callbacks=[logged])
        runs[name] = (logged.losses, load_model(final, device="cpu")[0].state_dict())
    (big_losses, big), (acc_losses, acc) = runs["big"], runs["accum"]
    assert len(big_losses) == 2
    np.testing.assert_allclose(acc_losses, big_losses, rtol=1e-4)
    init = load_model(path, device="cpu")[0].state_dict()
    assert not torch.allclose(big["lm_head.weight"], init["lm_head.weight"])
    for name in big:
        torch.testing.assert_close(acc[name], big[name], rtol=0, atol=1e-4)  # updates ~1e-2
