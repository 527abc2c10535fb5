"""Knowledge matching: train a student with forward KL to the teacher's recalibrated top-k,
at the answer position (multiple choice) or at every response token (instruction).

The teacher target q_T `[k]` is the teacher's recalibrated distribution over its k stored ids,
rows summing to 1 (`teacher_targets`): `first` = softmax(p / c), the paper's trustworthy
maximization; `ls` = label smoothing of p / sum(p); `renorm` (direct distillation) = p / sum(p).

The student side is the student's *full-vocabulary* probability at those ids,
q_S = softmax(logits)[ids], neither renormalised nor transformed. The loss per position is
KL = sum_i q_T,i (log q_T,i - log q_S,i). Why that is the right student side, in one line:
sum_i q_T,i log q_S,i subject to sum_i q_S,i <= 1 is maximised by q_S = q_T (Gibbs'
inequality), and q_T sums to 1, so the minimum is q_S = q_T on the ids and 0 elsewhere: the
student learns exactly the recalibrated distribution and keeps its mass on the teacher's ids.

Two tempting alternatives are wrong. Putting the student through the same softmax(p / c)
makes the loss blind to c: softmax(x / c) is unchanged when a constant is added to x, so the
minimum is p_S = p_T + a for any a, and every c teaches the teacher's *raw* probabilities.
Renormalising the student over the ids (`student_side="renorm"`, the official code's
choice, kept as an explicit option) matches only the ratios: the student's mass outside the
ids is unconstrained and can leak away, which reads as under-confidence under the
full-vocabulary confidence convention.

Both settings are one trainer: `DistillTrainer` is `trainer.TargetTrainer` with this KL as
its loss at the targets (the answer token, or every response token: the loss mask is "targets
only"), optionally mixed with cross-entropy on the gold token, and the one per-step
reduction: the mean over the targets of the optimizer step (`TargetTrainer.step_mean`). With
one answer per example that is the mean over examples; over responses, long responses weigh
more than short ones, token for token, as in the paper's sequence-level SFT (averaging per
micro-batch would overweight a micro-batch of short responses; tested in
tests/test_instruct.py against one big batch).

Teacher targets are prepared once, before training, from the stored raw top-k; `align_rows`
finds each training example's stored rows (one at the answer position, one per response
token) and checks them, and the collator only looks rows up.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from transformers import TrainerCallback

from ..calibration import transforms as calibrate
from ..config.settings import TrainConfig
from ..data.examples import DEFAULT_TEMPLATE, Example, PromptTemplate
from ..data.instruct_data import InstructExample
from ..errors import ConfigError, FirstError
from ..inference import forward as inference
from ..models.encoding import Encoded, encode_examples, encode_responses
from .targets import TargetCollator, TargetDataset
from .trainer import TargetTrainer, as_model, train_and_save, training_arguments

MODES = ("first", "renorm", "ls")          # how the teacher target q_T is made
STUDENT_SIDES = ("full", "renorm")          # how the student is read at the teacher's ids
LOG_FLOOR = -100.0  # log-probabilities are clamped here so an underflowed entry stays finite


def teacher_targets(probs: np.ndarray, mode: str, c: float | None = None,
                    delta: float | None = None) -> np.ndarray:
    """q_T `[N, k]`, rows summing to 1, from the stored raw top-k probabilities.

    `first`: the trustworthy-maximization transform softmax(p / c) (c > 0; c = 1 is *not* the
    identity); `ls`: label smoothing by `delta` of p / sum(p); `renorm` (direct distillation):
    p / sum(p).
    """
    if mode not in MODES:
        raise ConfigError(f"mode: expected one of {MODES}, got {mode!r}")
    if mode == "first":
        if c is None:
            raise ConfigError("c: mode 'first' needs a temperature > 0, got None")
        return calibrate.temperature_scale(probs, c, mode="first")
    renorm = calibrate.temperature_scale(probs, 1.0, mode="renorm")
    if mode == "ls":
        if delta is None:
            raise ConfigError("delta: mode 'ls' needs a smoothing delta, got None")
        return calibrate.label_smooth(renorm, delta)
    return renorm


def check_side(student_side: str) -> None:
    if student_side not in STUDENT_SIDES:
        raise ConfigError(f"distill.student_side: expected one of {STUDENT_SIDES}, "
                          f"got {student_side!r}")


def student_log_q(student_logits: torch.Tensor, topk_ids: torch.Tensor,
                  student_side: str = "full") -> torch.Tensor:
    """log q_S `[B, k]`: the student read at the teacher's k ids.

    `full`: log_softmax over the whole vocabulary, gathered at the ids, nothing else. `renorm`
    (the official code's option) renormalises over the ids in log space, log p - logsumexp(log
    p), so an underflowed probability never becomes log 0 and a NaN gradient.
    """
    check_side(student_side)
    logits = student_logits.to(torch.promote_types(student_logits.dtype, torch.float32))
    log_p = torch.log_softmax(logits, dim=-1).gather(-1, topk_ids.long())
    if student_side == "full":
        return log_p
    return log_p - torch.logsumexp(log_p, dim=-1, keepdim=True)


def topk_kl_loss(student_logits: torch.Tensor, topk_ids: torch.Tensor,
                 teacher_target: torch.Tensor, student_side: str = "full",
                 reduction: str = "mean") -> torch.Tensor:
    """Forward KL(q_T || q_S) over the teacher's top-k ids at the answer position.

    `student_logits` `[B, V]`, `topk_ids` `[B, k]`, `teacher_target` q_T `[B, k]` (rows sum to
    1). With the default `student_side="full"` this is the FIRST loss: its minimum is the
    student's softmax equal to q_T on the ids and 0 elsewhere. `reduction="mean"` averages over
    examples; `"none"` returns the `[B]` values.
    """
    if reduction not in ("mean", "none"):
        raise ValueError(f"reduction: expected 'mean' or 'none', got {reduction!r}")
    if student_logits.ndim != 2 or topk_ids.shape != teacher_target.shape \
            or topk_ids.shape[0] != student_logits.shape[0]:
        raise ValueError(f"shapes: student_logits {tuple(student_logits.shape)} must be [B, V], "
                         f"topk_ids {tuple(topk_ids.shape)} and teacher_target "
                         f"{tuple(teacher_target.shape)} [B, k]")
    log_q_s = student_log_q(student_logits, topk_ids, student_side).clamp_min(LOG_FLOOR)
    q_t = teacher_target.to(log_q_s.dtype)
    per_example = (torch.special.xlogy(q_t, q_t) - q_t * log_q_s).sum(-1)
    return per_example.mean() if reduction == "mean" else per_example


def align_rows(encoded: Encoded, store_example_ids: Sequence[str], topk_ids: np.ndarray,
               topk_targets: np.ndarray, vocab_size: int,
               store_token_ids: np.ndarray | None = None
               ) -> tuple[np.ndarray, torch.Tensor, torch.Tensor]:
    """(first store row of each encoded example, ids, targets) after checking the store.

    The store must hold, for each training example, one row per target token, in order and
    contiguous: one row at the answer position, or one per response token, whose
    `store_token_ids` must then be the example's response tokens. A missing, duplicated or
    foreign example (another tokenizer, template or `max_length`), a token id outside the
    vocabulary or a target row that is not a distribution raises `FirstError` naming it:
    training on misaligned rows would look fine and learn nonsense. `ids` and `targets` stay
    in store order; the collator looks each batch's rows up from the returned starts.
    """
    ids, targets = np.asarray(topk_ids), np.asarray(topk_targets, dtype=np.float64)
    if ids.ndim != 2 or ids.shape != targets.shape or len(ids) != len(store_example_ids):
        raise FirstError(f"top-k: topk_ids {ids.shape}, topk_targets {targets.shape} and "
                         f"{len(store_example_ids)} example ids must agree as [N, k] / N")
    codes, uniq = pd.factorize(pd.Index(store_example_ids))
    counts = np.bincount(codes, minlength=len(uniq))
    firsts = np.r_[0, np.cumsum(counts)[:-1]]
    if not (np.diff(codes) >= 0).all():  # rows of one example must be contiguous
        raise FirstError("top-k: the store's rows of an example are not contiguous "
                         "(duplicated example ids?)")
    example_ids = encoded.example_ids
    where = uniq.get_indexer(pd.Index(example_ids))
    if (where < 0).any():
        missing = [example_ids[i] for i in np.flatnonzero(where < 0)[:5]]
        raise FirstError(f"top-k: no stored rows for {int((where < 0).sum())} training "
                         f"example(s), e.g. {missing}; re-run top-k extraction on this data")
    n_targets = encoded.target_counts()
    bad = np.flatnonzero(counts[where] != n_targets)
    if len(bad):
        i = int(bad[0])
        raise FirstError(f"top-k: example {example_ids[i]!r} has {n_targets[i]} target tokens "
                         f"but {counts[where[i]]} stored rows (a duplicated example id, or a "
                         "store of another tokenizer or max_length); re-extract with this "
                         "tokenizer and max_length")
    start = firsts[where]
    rows = inference.span_rows(start, n_targets)

    def example_of(row: int) -> str:  # the training example of the row-th target
        return example_ids[int(np.searchsorted(np.cumsum(n_targets), row, side="right"))]

    if store_token_ids is not None:
        mine = np.concatenate([s[r:] for s, r in zip(encoded.input_ids, encoded.target_start)])
        differ = np.flatnonzero(np.asarray(store_token_ids)[rows] != mine)
        if len(differ):
            raise FirstError(f"top-k: stored tokens of example {example_of(differ[0])!r} "
                             "differ from its response tokens; teacher and student must share "
                             "one tokenizer and the store must be from this data")
    used = ids[rows]
    if used.min() < 0 or used.max() >= vocab_size:
        raise FirstError(f"top-k: token ids must lie in [0, {vocab_size}) (the student's "
                         f"vocabulary), got {used.min()}..{used.max()}: teacher and student "
                         "must share one tokenizer")
    t = targets[rows]
    sums = t.sum(axis=1)
    wrong = ~np.isfinite(t).all(axis=1) | (t < 0).any(axis=1) | (abs(sums - 1) > 1e-3)
    if wrong.any():
        r = int(np.flatnonzero(wrong)[0])
        raise FirstError(f"topk_targets: row for example {example_of(r)!r} is not a "
                         f"distribution (sum {sums[r]:.4f}); prepare targets with "
                         "teacher_targets (first_core.calibration.transforms)")
    return (start, torch.as_tensor(np.ascontiguousarray(ids), dtype=torch.long),
            torch.as_tensor(np.ascontiguousarray(targets), dtype=torch.float32))


@dataclass
class DistillCollator(TargetCollator):
    """`TargetCollator` plus the teacher rows of the batch's targets, row-major."""

    starts: np.ndarray | None = None       # first store row of each dataset example
    counts: np.ndarray | None = None       # target tokens of each dataset example
    topk_ids: torch.Tensor | None = None   # [rows, k], store order
    topk_targets: torch.Tensor | None = None

    def __call__(self, items: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        batch = super().__call__(items)
        idx = batch["index"].numpy()
        rows = torch.from_numpy(inference.span_rows(self.starts[idx], self.counts[idx]))
        batch.update(topk_ids=self.topk_ids[rows], topk_targets=self.topk_targets[rows])
        return batch


class DistillTrainer(TargetTrainer):
    """`TargetTrainer` whose loss is the top-k KL at each target, optionally mixed with CE on
    the gold token: (1 - ce_weight) * KL + ce_weight * CE, per target, summed."""

    def __init__(self, *args: Any, student_side: str = "full", ce_weight: float = 0.0,
                 **kwargs: Any) -> None:
        check_side(student_side)
        if not 0.0 <= ce_weight <= 1.0:
            raise ConfigError(f"distill.ce_weight: must be in [0, 1], got {ce_weight}")
        super().__init__(*args, **kwargs)
        self.student_side, self.ce_weight = student_side, ce_weight

    def target_loss(self, logits, targets, inputs):
        if logits.shape[0] != inputs["topk_ids"].shape[0]:
            raise FirstError(f"batch: {logits.shape[0]} target tokens but "
                             f"{inputs['topk_ids'].shape[0]} teacher rows")
        per_target = topk_kl_loss(logits, inputs["topk_ids"], inputs["topk_targets"],
                                  self.student_side, reduction="none")
        if self.ce_weight:
            ce = F.cross_entropy(logits.float(), targets, reduction="none")
            per_target = (1 - self.ce_weight) * per_target + self.ce_weight * ce
        return per_target.sum()


def distill_trainer(model: Any, tokenizer, encoded: Encoded, store_example_ids: Sequence[str],
                    topk_ids: np.ndarray, topk_targets: np.ndarray,
                    out_dir: str | os.PathLike[str], train_cfg: TrainConfig, *,
                    store_token_ids: np.ndarray | None = None, student_side: str = "full",
                    ce_weight: float = 0.0, seed: int = 0,
                    callbacks: Sequence[TrainerCallback] = ()) -> DistillTrainer:
    """The Trainer `distill` / `distill_tokens` run (separate so tests can inspect its
    gradients): the stored rows aligned to `encoded` (`align_rows`), looked up per batch."""
    check_side(student_side)
    student = as_model(model)
    starts, ids, targets = align_rows(encoded, store_example_ids, topk_ids, topk_targets,
                                      inference.vocab_size(student), store_token_ids)
    collator = DistillCollator(tokenizer.pad_token_id, "answer", starts,
                               encoded.target_counts(), ids, targets)
    return DistillTrainer(model=student, args=training_arguments(out_dir, train_cfg, seed),
                          train_dataset=TargetDataset(encoded), processing_class=tokenizer,
                          data_collator=collator, callbacks=list(callbacks),
                          student_side=student_side, ce_weight=ce_weight)


def distill(model: Any, tokenizer, examples: Sequence[Example], topk_example_ids: Sequence[str],
            topk_ids: np.ndarray, topk_targets: np.ndarray, out_dir: str | os.PathLike[str],
            train_cfg: TrainConfig, student_side: str = "full", ce_weight: float = 0.0,
            seed: int = 0, template: PromptTemplate = DEFAULT_TEMPLATE,
            callbacks: Sequence[TrainerCallback] = (), section: str | None = None) -> Path:
    """Train the student `model` (object or path) at the answer position of multiple-choice
    `examples`; returns out_dir/final.

    `topk_targets` are q_T (already recalibrated, rows summing to 1), row-aligned with
    `topk_example_ids` and `topk_ids` (see `teacher_targets`). `student_side` picks how the
    student is read at the ids (`full`, the FIRST loss, unless you know why not). `section`
    names the config section in a diverged run's error.
    """
    encoded = encode_examples(tokenizer, examples, template, train_cfg.max_length)
    trainer = distill_trainer(model, tokenizer, encoded, topk_example_ids, topk_ids,
                              topk_targets, out_dir, train_cfg, student_side=student_side,
                              ce_weight=ce_weight, seed=seed, callbacks=callbacks)
    return train_and_save(trainer, out_dir, section)


def distill_tokens(model: Any, tokenizer, examples: Sequence[InstructExample],
                   store_example_ids: np.ndarray, store_token_ids: np.ndarray,
                   topk_ids: np.ndarray, topk_targets: np.ndarray,
                   out_dir: str | os.PathLike[str], train_cfg: TrainConfig,
                   student_side: str = "full", ce_weight: float = 0.0, seed: int = 0,
                   callbacks: Sequence[TrainerCallback] = (), section: str | None = None) -> Path:
    """Distil the student over every response token of instruction `examples`; returns
    `out_dir/final`.

    `topk_targets` are q_T rows (`teacher_targets` of the stored raw probabilities),
    row-aligned with the store's `example_ids`, `token_ids` and `topk_ids`.
    """
    encoded = encode_responses(tokenizer, examples, train_cfg.max_length)
    trainer = distill_trainer(model, tokenizer, encoded, store_example_ids, topk_ids,
                              topk_targets, out_dir, train_cfg, store_token_ids=store_token_ids,
                              student_side=student_side, ce_weight=ce_weight, seed=seed,
                              callbacks=callbacks)
    return train_and_save(trainer, out_dir, section)
