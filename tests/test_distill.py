"""Knowledge matching (training/distill.py) at the answer position: the top-k KL loss, row
alignment, the Trainer subclass. The per-token setting: tests/test_instruct.py."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from transformers import TrainerCallback

from first_core.config.settings import TrainConfig
from first_core.data.examples import Example, format_prompt
from first_core.training.distill import (DistillCollator, DistillTrainer, align_rows, distill,
                                         teacher_targets, topk_kl_loss)
from first_core.errors import ConfigError, FirstError
from first_core.training.targets import IGNORE, TargetDataset, target_logits
from first_core.training.trainer import training_arguments
from first_core.models.encoding import Encoded, encode_examples
from first_core.models.loading import load_model
from first_core.models.presets import build_preset

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


def np_kl(logits: np.ndarray, ids: np.ndarray, q_t: np.ndarray, side: str) -> np.ndarray:
    p = np.take_along_axis(np_softmax(logits), ids, axis=1)
    q_s = p if side == "full" else p / p.sum(axis=1, keepdims=True)
    return (q_t * (np.log(q_t) - np.log(q_s))).sum(axis=1)


def random_case(seed: int, b: int = 6, v: int = 40, k: int = 5):
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 3, size=(b, v))
    ids = np.stack([rng.choice(v, size=k, replace=False) for _ in range(b)])
    q_t = rng.dirichlet(np.ones(k), size=b)
    return logits, ids, q_t


# ---------------------------------------------------------------- the loss

@pytest.mark.parametrize("side", ["full", "renorm"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_kl_equals_numpy(side, seed):
    logits, ids, q_t = random_case(seed)
    expected = np_kl(logits, ids, q_t, side)
    t = [torch.tensor(a) for a in (logits, ids, q_t)]
    got = topk_kl_loss(*t, student_side=side, reduction="none")
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(float(topk_kl_loss(*t, student_side=side)), expected.mean(),
                               rtol=1e-5)


def test_default_loss_reads_the_full_vocabulary():
    """The default is the FIRST loss: student probabilities over the whole vocabulary."""
    logits, ids, q_t = (torch.tensor(a) for a in random_case(8))
    expected = np_kl(*(a.numpy() for a in (logits, ids, q_t)), "full").mean()
    np.testing.assert_allclose(float(topk_kl_loss(logits, ids, q_t)), expected, rtol=1e-6)


def test_renorm_matches_torch_kl_div_on_normalised_inputs():
    logits, ids, q_t = (torch.tensor(a) for a in random_case(3))
    p = torch.softmax(logits, dim=-1).gather(1, ids)
    q_s = p / p.sum(1, keepdim=True)
    expected = F.kl_div(q_s.log(), q_t, reduction="batchmean")
    torch.testing.assert_close(topk_kl_loss(logits, ids, q_t, student_side="renorm"), expected)


def _student_at(q_t: np.ndarray, ids: np.ndarray, v: int, leak: float) -> np.ndarray:
    """Logits whose softmax is (1 - leak) * q_T on the ids and `leak` spread over the rest."""
    full = np.full((len(ids), v), leak / (v - ids.shape[1]))
    np.put_along_axis(full, ids, (1 - leak) * q_t, axis=1)
    return np.log(full)


def test_gradient_vanishes_exactly_at_q_t_on_the_ids_and_zero_elsewhere():
    logits, ids, q_t = random_case(4)
    v = logits.shape[1]
    grads = {}
    for name, leak in (("optimum", 1e-12), ("leaky", 0.2)):
        x = torch.tensor(_student_at(q_t, ids, v, leak), requires_grad=True)
        topk_kl_loss(x, torch.tensor(ids), torch.tensor(q_t)).backward()
        grads[name] = x.grad.abs().max().item()
    # softmax = q_T on the ids (within 1e-12 of all the mass) is a stationary point ...
    assert grads["optimum"] < 1e-9
    # ... and leaking 20% of the mass to other tokens is not: the loss pulls it back
    assert grads["leaky"] > 1e-3
    # a random student is not either
    x = torch.tensor(logits, requires_grad=True)
    topk_kl_loss(x, torch.tensor(ids), torch.tensor(q_t)).backward()
    assert x.grad.abs().max().item() > 1e-3


def _fit_free_logits(target: np.ndarray, ids: np.ndarray, v: int, loss_fn, steps: int = 3000):
    """Optimise free student logits against one teacher target; return its softmax."""
    torch.manual_seed(0)
    x = torch.zeros(1, v, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.Adam([x], lr=0.05)
    tid, tq = torch.tensor(ids[None]), torch.tensor(target[None])
    for _ in range(steps):
        opt.zero_grad()
        loss_fn(x, tid, tq).backward()
        opt.step()
    return torch.softmax(x.detach(), -1)[0].numpy()


TEACHER_TOP5 = np.array([0.80, 0.08, 0.05, 0.04, 0.02])
IDS = np.array([3, 7, 11, 2, 19])


@pytest.mark.parametrize("c", [0.15, 0.28, 1.0])
def test_student_learns_the_recalibrated_teacher_for_each_c(c):
    target = np_first(TEACHER_TOP5[None], c)[0]
    p = _fit_free_logits(target, IDS, 32, topk_kl_loss)
    assert abs(p[IDS[0]] - target[0]) < 0.02, (c, p[IDS[0]], target[0])
    assert p[IDS].sum() >= 0.97


def test_the_three_temperatures_teach_three_different_students():
    tops = [_fit_free_logits(np_first(TEACHER_TOP5[None], c)[0], IDS, 32, topk_kl_loss)[IDS[0]]
            for c in (0.15, 0.28, 1.0)]
    assert tops[0] > 0.95 and 0.75 < tops[1] < 0.82 and tops[2] < 0.4, tops


def test_transforming_both_sides_is_blind_to_c():
    """Why the student side is never put through softmax(p / c): the transform ignores a
    constant shift, so every c pulls the student to the teacher's *raw* probabilities."""
    def both_sides(c):
        def loss(x, tid, tq):
            p = torch.softmax(x, -1).gather(1, tid)
            log_q_s = torch.log_softmax(p / c, -1)
            return (tq * (tq.log() - log_q_s)).sum()
        return loss
    tops = []
    for c in (0.15, 0.28, 1.0):
        target = np_first(TEACHER_TOP5[None], c)[0]
        tops.append(_fit_free_logits(target, IDS, 32, both_sides(c), steps=1500)[IDS[0]])
    # the targets' top-1 are 0.974, 0.786 and 0.347; all three land near the raw 0.80
    np.testing.assert_allclose(tops, TEACHER_TOP5[0], atol=0.05)
    assert max(tops) - min(tops) < 0.05


def test_teacher_targets_match_the_formulas():
    rng = np.random.default_rng(9)
    p = rng.dirichlet(np.ones(5), size=7) * 0.9
    np.testing.assert_allclose(teacher_targets(p, "first", c=0.3), np_first(p, 0.3), rtol=1e-12)
    renorm = p / p.sum(1, keepdims=True)
    np.testing.assert_allclose(teacher_targets(p, "renorm"), renorm, rtol=1e-12)
    ls = teacher_targets(p, "ls", delta=0.05)
    top = renorm.argmax(1)
    expected = renorm + 0.05 / 4
    expected[np.arange(7), top] = renorm[np.arange(7), top] - 0.05
    np.testing.assert_allclose(ls, expected, rtol=1e-12)
    for mode in ("first", "renorm", "ls"):
        np.testing.assert_allclose(teacher_targets(p, mode, 0.3, 0.05).sum(1), 1, rtol=1e-12)
    with pytest.raises(ConfigError, match="c"):
        teacher_targets(p, "first")
    with pytest.raises(ConfigError, match="mode"):
        teacher_targets(p, "softmax", 1.0)


def test_kl_gradient_flows_and_is_correct():
    logits, ids, q_t = random_case(5, b=3, v=12, k=4)
    x = torch.tensor(logits, requires_grad=True)
    for side in ("full", "renorm"):
        assert torch.autograd.gradcheck(
            lambda z: topk_kl_loss(z, torch.tensor(ids), torch.tensor(q_t), side), (x,))


def test_kl_is_finite_on_extreme_inputs():
    logits, ids, q_t = random_case(6)
    q_t[:, 1:] = 0.0
    q_t[:, 0] = 1.0  # a one-hot teacher row: 0 * log 0 terms
    for side in ("full", "renorm"):
        huge = torch.tensor(logits * 1e4, dtype=torch.float32, requires_grad=True)
        loss = topk_kl_loss(huge, torch.tensor(ids), torch.tensor(q_t), side)
        loss.backward()
        assert torch.isfinite(loss) and torch.isfinite(huge.grad).all()


def test_kl_rejects_bad_arguments():
    logits, ids, q_t = (torch.tensor(a) for a in random_case(7))
    with pytest.raises(ConfigError, match="student_side"):
        topk_kl_loss(logits, ids, q_t, "first")
    with pytest.raises(ValueError, match="shapes"):
        topk_kl_loss(logits, ids[:, :2], q_t)


# ---------------------------------------------------------------- top-k rows by example id

def answers(example_ids: list[str]) -> Encoded:
    """An encoding of one-token answers (the ids do not matter to the alignment)."""
    return Encoded([[0, 1]] * len(example_ids), [1] * len(example_ids), list(example_ids))


def align_topk(example_ids, stored, ids, targets, vocab_size):
    """The stored rows of `example_ids`, in their order, as the collator looks them up."""
    starts, all_ids, all_targets = align_rows(answers(example_ids), stored, ids, targets,
                                              vocab_size)
    return all_ids[starts], all_targets[starts]


def test_align_rows_reorders_by_id_and_names_problems():
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 50, size=(4, 3))
    targets = rng.dirichlet(np.ones(3), size=4)
    stored = ["a", "b", "c", "d"]
    got_ids, got_t = align_topk(["c", "a", "d"], stored, ids, targets, vocab_size=50)
    assert got_ids.tolist() == ids[[2, 0, 3]].tolist()
    np.testing.assert_allclose(got_t.numpy(), targets[[2, 0, 3]], rtol=1e-6)
    with pytest.raises(FirstError, match=r"1 training example.*'zz'"):
        align_topk(["a", "zz"], stored, ids, targets, vocab_size=50)
    with pytest.raises(FirstError, match=r"'a' has 1 target tokens but 2 stored rows.*duplicated"):
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
    starts, ids, targets = align_rows(enc, *rows, vocab_size=len(tok))
    collate = DistillCollator(tok.pad_token_id, "answer", starts, np.ones(len(enc), int), ids,
                              targets)
    return collate([TargetDataset(enc)[i] for i in range(len(enc))])


def make_trainer(path, tok, tmp_path, **kwargs) -> DistillTrainer:
    model = load_model(path, device="cpu")[0]
    return DistillTrainer(model=model, args=training_arguments(tmp_path, TrainConfig(), 0),
                          **kwargs)


def test_compute_loss_uses_the_answer_position_of_each_padded_row(student, tmp_path):
    path, tok = student
    examples = make_examples(3)
    batch = batch_of(tok, examples, teacher_rows(tok, examples))
    assert len(set(batch["attention_mask"].sum(1).tolist())) == 3  # rows of different lengths
    trainer = make_trainer(path, tok, tmp_path)
    model = trainer.model.eval()
    with torch.no_grad():
        # reference: each example alone, unpadded, full logits of its last prompt token
        alone = torch.stack([model(torch.tensor([ids[:-1]])).logits[0, -1] for ids in
                             encode_examples(tok, examples, max_length=64).input_ids])
        expected = topk_kl_loss(alone, batch["topk_ids"], batch["topk_targets"])
        torch.testing.assert_close(trainer.compute_loss(model, batch), expected, rtol=1e-5,
                                   atol=1e-6)
        torch.testing.assert_close(target_logits(model, batch, keep_only=False)[0], alone,
                                   rtol=1e-5, atol=1e-5)
        per_sum = topk_kl_loss(alone, batch["topk_ids"], batch["topk_targets"],
                               reduction="none").sum()
        torch.testing.assert_close(trainer.compute_loss(model, batch, num_items_in_batch=8),
                                   per_sum / 8, rtol=1e-5, atol=1e-6)
        ce_trainer = make_trainer(path, tok, tmp_path, ce_weight=1.0)
        ce = F.cross_entropy(alone, batch["labels"][batch["labels"] != IGNORE])
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
            logits = target_logits(model.eval(), batch, keep_only=True)[0]
            return float(topk_kl_loss(logits, batch["topk_ids"], batch["topk_targets"]))

    before = kl(load_model(path, device="cpu")[0])
    final = distill(path, tok, examples, *rows, tmp_path / "d", cfg, seed=0)
    after = kl(load_model(final, device="cpu")[0])
    assert after < 0.85 * before  # 30 steps on 5 items: it at least learns the letter marginal
    assert (final / "model.safetensors").exists()


def test_distill_refuses_missing_rows(student, tmp_path):
    path, tok = student
    examples = make_examples(4)
    ids, top, targets = teacher_rows(tok, examples[:3])
    with pytest.raises(FirstError, match="q3"):
        distill(path, tok, examples, ids, top, targets, tmp_path / "d", TrainConfig())



class LoggedLosses(TrainerCallback):
    def __init__(self) -> None:
        self.losses: list[float] = []

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            self.losses.append(float(logs["loss"]))


class FirstStepGradients(TrainerCallback):
    """The accumulated gradients of the first optimizer step, just before the optimizer."""

    def __init__(self) -> None:
        self.grads: dict[str, torch.Tensor] | None = None

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        if self.grads is None:
            self.grads = {n: p.grad.detach().clone() for n, p in model.named_parameters()
                          if p.grad is not None}


def test_gradient_accumulation_reduces_like_one_big_batch(student, tmp_path):
    """Micro-batches of 3 + 2 accumulated (with activation checkpointing) must give the loss
    and the gradient of one batch of 5: the exact mean over the optimizer step, not the mean
    of micro-batch means (which would weigh the 2 short-batch items 1.5x, a ~20% error).

    Gradients are compared before the optimizer, not weights after it: AdamW's first step
    divides by sqrt(v) and turns float rounding into ~1% of the learning rate (flaky), while
    it also normalises away exactly the scaling error this test exists to catch."""
    path, tok = student
    examples = make_examples(5)
    rows = teacher_rows(tok, examples)
    base = dict(epochs=1, learning_rate=1e-2, warmup_ratio=0.0, save_steps=1, max_length=64)
    runs = {}
    for name, extra in (("big", dict(batch_size=5)),
                        ("accum", dict(batch_size=3, gradient_accumulation_steps=2,
                                       gradient_checkpointing=True))):
        logged, grads = LoggedLosses(), FirstStepGradients()
        distill(path, tok, examples, *rows, tmp_path / name, TrainConfig(**base, **extra),
                seed=0, callbacks=[logged, grads])
        runs[name] = (logged.losses, grads.grads)
    (big_losses, big), (acc_losses, acc) = runs["big"], runs["accum"]
    assert len(big_losses) == 1 and big is not None and acc is not None
    np.testing.assert_allclose(acc_losses, big_losses, rtol=1e-5)
    assert big.keys() == acc.keys() and big["lm_head.weight"].abs().max() > 1e-4
    for name in big:
        scale = float(big[name].abs().max()) + 1e-12
        torch.testing.assert_close(acc[name] / scale, big[name] / scale, rtol=0, atol=1e-5)
