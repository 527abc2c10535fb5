"""Knowledge matching: train a student with forward KL to the teacher's recalibrated top-k.

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

Reduction: the mean over examples. With one answer position per example this is the
per-sequence sum averaged over the batch; under gradient accumulation or several processes
the Trainer's `num_items_in_batch` (the number of answer positions in the whole optimizer
step) is the divisor, so a short final batch is weighted by its size, not as a full batch.

Teacher targets are prepared once, before training, from the stored raw top-k; the collator
only looks rows up by example id.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from transformers import Trainer, TrainerCallback

from ..calibration import transforms as calibrate
from ..inference import forward as inference
from ..config.settings import TrainConfig
from ..data.examples import DEFAULT_TEMPLATE, Example, PromptTemplate
from ..errors import ConfigError, FirstError
from .sft import AnswerCollator, EncodedDataset, as_model, train_and_save, training_arguments
from ..models.loading import encode_examples

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


def _check_side(student_side: str) -> None:
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
    _check_side(student_side)
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


def align_topk(example_ids: Sequence[str], topk_example_ids: Sequence[str],
               topk_ids: np.ndarray, topk_targets: np.ndarray,
               vocab_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Reorder the stored top-k rows to `example_ids`; validate them on the way.

    A missing or duplicated id, a token id outside the vocabulary or a target row that is not
    a distribution raises `FirstError` naming it: training on misaligned rows would look fine
    and learn nonsense.
    """
    ids, targets = np.asarray(topk_ids), np.asarray(topk_targets, dtype=np.float64)
    if ids.ndim != 2 or ids.shape != targets.shape or len(ids) != len(topk_example_ids):
        raise FirstError(f"top-k: topk_ids {ids.shape}, topk_targets {targets.shape} and "
                         f"{len(topk_example_ids)} example ids must agree as [N, k] / N")
    index = pd.Index(topk_example_ids)
    if not index.is_unique:
        dup = index[index.duplicated()].unique()[:5].tolist()
        raise FirstError(f"top-k: duplicated example id(s) {dup}")
    rows = index.get_indexer(pd.Index(example_ids))
    if (rows < 0).any():
        missing = [example_ids[i] for i in np.flatnonzero(rows < 0)[:5]]
        raise FirstError(f"top-k: no stored row for {int((rows < 0).sum())} training example(s), "
                         f"e.g. {missing}; re-run top-k extraction on this data")
    ids, targets = ids[rows], targets[rows]
    if ids.min() < 0 or ids.max() >= vocab_size:
        raise FirstError(f"top-k: token ids must lie in [0, {vocab_size}) (the student's "
                         f"vocabulary), got {ids.min()}..{ids.max()}: teacher and student "
                         "must share one tokenizer")
    sums = targets.sum(axis=1)
    bad = ~np.isfinite(targets).all(axis=1) | (targets < 0).any(axis=1) | (abs(sums - 1) > 1e-3)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise FirstError(f"topk_targets: row for example {example_ids[i]!r} is not a "
                         f"distribution (sum {sums[i]:.4f}); prepare targets with "
                         "first_core.calibration.transforms (temperature_scale / label_smooth)")
    return torch.as_tensor(ids, dtype=torch.long), torch.as_tensor(targets, dtype=torch.float32)


@dataclass
class DistillCollator(AnswerCollator):
    """`AnswerCollator` plus each example's answer position and teacher top-k rows."""

    topk_ids: torch.Tensor | None = None      # [N, k], rows in dataset order
    topk_targets: torch.Tensor | None = None  # [N, k]

    def __call__(self, items: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        batch = super().__call__(items)
        rows = torch.tensor([it["index"] for it in items])
        batch.update(answer_pos=torch.tensor([it["answer_pos"] for it in items]),
                     answer_id=torch.tensor([it["answer_id"] for it in items]),
                     topk_ids=self.topk_ids[rows], topk_targets=self.topk_targets[rows])
        return batch


def answer_logits(model: torch.nn.Module, batch: dict[str, torch.Tensor],
                  keep_only: bool) -> torch.Tensor:
    """Logits `[B, V]` at each row's last prompt token (the one predicting the answer).

    `keep_only`: the model accepts per-row `logits_to_keep`, so only those positions are
    projected to the vocabulary instead of the whole `[B, T, V]`.
    """
    pos = batch["answer_pos"] - 1
    rows = torch.arange(len(pos), device=pos.device)
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"],
              "use_cache": False}
    if keep_only:
        return model(**inputs, logits_to_keep=pos[:, None]).logits[:, 0]
    return model(**inputs).logits[rows, pos]


class DistillTrainer(Trainer):
    """A `Trainer` whose loss is the top-k KL, optionally mixed with CE on the gold token.

    loss = (1 - ce_weight) * KL + ce_weight * CE, per example, then reduced as the module
    docstring says.
    """

    def __init__(self, *args: Any, student_side: str = "full", ce_weight: float = 0.0,
                 **kwargs: Any) -> None:
        _check_side(student_side)
        if not 0.0 <= ce_weight <= 1.0:
            raise ConfigError(f"distill.ce_weight: must be in [0, 1], got {ce_weight}")
        super().__init__(*args, **kwargs)
        self.student_side, self.ce_weight = student_side, ce_weight
        forward = self.accelerator.unwrap_model(self.model).forward
        self._keep_only = "logits_to_keep" in inspect.signature(forward).parameters

    def compute_loss(self, model: torch.nn.Module, inputs: dict[str, torch.Tensor],
                     return_outputs: bool = False,
                     num_items_in_batch: torch.Tensor | int | None = None
                     ) -> torch.Tensor | tuple[torch.Tensor, dict[str, torch.Tensor]]:
        logits = answer_logits(model, inputs, self._keep_only)
        per_example = topk_kl_loss(logits, inputs["topk_ids"], inputs["topk_targets"],
                                   self.student_side, reduction="none")
        if self.ce_weight:
            ce = F.cross_entropy(logits.float(), inputs["answer_id"], reduction="none")
            per_example = (1 - self.ce_weight) * per_example + self.ce_weight * ce
        if num_items_in_batch is None:
            loss = per_example.mean()
        else:
            # the Trainer counted the answer labels of the whole step (all micro-batches and,
            # with average_tokens_across_devices, all processes, whose gradients DDP averages)
            loss = per_example.sum() / num_items_in_batch
            if self.args.average_tokens_across_devices:
                loss = loss * self.accelerator.num_processes
        return (loss, {"logits": logits}) if return_outputs else loss


def distill(model: Any, tokenizer, examples: Sequence[Example], topk_example_ids: Sequence[str],
            topk_ids: np.ndarray, topk_targets: np.ndarray, out_dir: str | os.PathLike[str],
            train_cfg: TrainConfig, student_side: str = "full", ce_weight: float = 0.0,
            seed: int = 0,
            template: PromptTemplate = DEFAULT_TEMPLATE,
            callbacks: Sequence[TrainerCallback] = ()) -> Path:
    """Train the student `model` (object or path) on the teacher targets; returns out_dir/final.

    `topk_targets` are q_T (already recalibrated, rows summing to 1), row-aligned with
    `topk_example_ids` and `topk_ids` (see `teacher_targets`). `student_side` picks how the
    student is read at the ids (`full`, the FIRST loss, unless you know why not).
    """
    _check_side(student_side)
    student = as_model(model)
    encoded = encode_examples(tokenizer, examples, template, train_cfg.max_length)
    ids, targets = align_topk(encoded.example_ids, topk_example_ids, topk_ids, topk_targets,
                              inference.vocab_size(student))
    collator = DistillCollator(tokenizer.pad_token_id, "answer", ids, targets)
    trainer = DistillTrainer(model=student, args=training_arguments(out_dir, train_cfg, seed),
                             train_dataset=EncodedDataset(encoded), processing_class=tokenizer,
                             data_collator=collator, callbacks=list(callbacks),
                             student_side=student_side, ce_weight=ce_weight)
    return train_and_save(trainer, out_dir)
