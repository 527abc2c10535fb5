"""Knowledge matching over whole responses: the top-k KL at every response token.

The instruction setting's `distill.distill`. The student is run teacher-forced over
`prompt + response + eos` (`response_tokens`); at each of the batch's N response tokens its
logits form one row of `[N, V]`, the stored teacher rows `[N, k]` (`token_topk`) are looked
up in the same row-major order, and the loss is `distill.topk_kl_loss` on those rows (so the
per-token loss is exactly the single-position FIRST loss, `student_side` and `ce_weight`
included; the loss mask is "response tokens only").

**Reduction: the mean over the response tokens of the optimizer step.** Each micro-batch
contributes sum(per-token loss) / T, where T is the number of response tokens in the whole
step: every micro-batch of a gradient-accumulation step and, with
`average_tokens_across_devices`, every process (the Trainer's `num_items_in_batch`, which
counts the collator's response labels). So a step's gradient is the gradient of the mean
per-token loss over all its tokens, whatever the accumulation and however the tokens fall
into micro-batches: long responses weigh more than short ones, token for token, as in the
paper's sequence-level SFT. (Averaging per micro-batch would overweight a micro-batch of
short responses.) Tested in tests/test_instruct.py against one big batch.
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

from ..inference import forward as inference
from ..config.settings import TrainConfig
from .distill import DistillTrainer, _check_side, topk_kl_loss
from ..errors import FirstError
from .sft import as_model, train_and_save, training_arguments
from ..data.instruct_data import InstructExample
from .response_tokens import (EncodedResponses, ResponseCollator, ResponseDataset,
                              ResponseLossMixin, encode_responses)


def align_token_rows(encoded: EncodedResponses, store_example_ids: np.ndarray,
                     store_token_ids: np.ndarray, ids: np.ndarray, targets: np.ndarray,
                     vocab_size: int) -> tuple[np.ndarray, torch.Tensor, torch.Tensor]:
    """(first store row of each encoded example, ids, targets) after checking the store.

    The store must hold, for each training example, one row per response token, in order,
    and those rows' `token_id` must be the example's response tokens: a store from another
    tokenizer, template or `max_length` raises `FirstError` naming an example.
    """
    codes, uniq = pd.factorize(pd.Index(store_example_ids))
    counts = np.bincount(codes, minlength=len(uniq))
    firsts = np.r_[0, np.cumsum(counts)[:-1]]
    if not (np.diff(codes) >= 0).all():  # rows of one example must be contiguous
        raise FirstError("top-k: the store's rows of an example are not contiguous")
    where = uniq.get_indexer(pd.Index(encoded.example_ids))
    if (where < 0).any():
        missing = [encoded.example_ids[i] for i in np.flatnonzero(where < 0)[:5]]
        raise FirstError(f"top-k: no stored rows for {int((where < 0).sum())} training "
                         f"example(s), e.g. {missing}; re-run top-k extraction on this data")
    n_resp = np.array([encoded.n_response(i) for i in range(len(encoded))])
    bad = np.flatnonzero(counts[where] != n_resp)
    if len(bad):
        i = int(bad[0])
        raise FirstError(f"top-k: example {encoded.example_ids[i]!r} has {n_resp[i]} response "
                         f"tokens but {counts[where[i]]} stored rows; re-extract with this "
                         "tokenizer and max_length")
    start = firsts[where]
    rows = np.repeat(start - np.r_[0, np.cumsum(n_resp)[:-1]], n_resp) + np.arange(n_resp.sum())
    mine = np.concatenate([s[r:] for s, r in zip(encoded.input_ids, encoded.response_start)])
    if (store_token_ids[rows] != mine).any():
        i = int(np.searchsorted(np.cumsum(n_resp), np.flatnonzero(
            store_token_ids[rows] != mine)[0], side="right"))
        raise FirstError(f"top-k: stored tokens of example {encoded.example_ids[i]!r} differ "
                         "from its response tokens; teacher and student must share one "
                         "tokenizer and the store must be from this data")
    ids = np.asarray(ids)
    if ids.min() < 0 or ids.max() >= vocab_size:
        raise FirstError(f"top-k: token ids must lie in [0, {vocab_size}) (the student's "
                         f"vocabulary), got {ids.min()}..{ids.max()}")
    t = np.asarray(targets, dtype=np.float64)
    sums = t.sum(axis=1)
    if not np.isfinite(t).all() or (t < 0).any() or (abs(sums - 1) > 1e-3).any():
        raise FirstError("topk_targets: some rows are not distributions; prepare them with "
                         "distill.teacher_targets")
    return start, torch.as_tensor(ids, dtype=torch.long), torch.as_tensor(t, dtype=torch.float32)


@dataclass
class TokenDistillCollator(ResponseCollator):
    """`ResponseCollator` plus the teacher rows of the batch's response tokens, row-major."""

    starts: np.ndarray | None = None       # first store row of each dataset example
    counts: np.ndarray | None = None       # response tokens of each dataset example
    topk_ids: torch.Tensor | None = None   # [T, k]
    topk_targets: torch.Tensor | None = None

    def __call__(self, items: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        batch = super().__call__(items)
        idx = batch["index"].numpy()
        n = self.counts[idx]
        rows = torch.from_numpy(np.repeat(self.starts[idx] - np.r_[0, np.cumsum(n)[:-1]], n)
                                + np.arange(n.sum()))
        batch.update(topk_ids=self.topk_ids[rows], topk_targets=self.topk_targets[rows])
        return batch


class TokenDistillTrainer(ResponseLossMixin, DistillTrainer):
    """`DistillTrainer` with the loss summed over response tokens (module docstring)."""

    def per_token_loss(self, logits, targets, inputs):
        if logits.shape[0] != inputs["topk_ids"].shape[0]:
            raise FirstError(f"batch: {logits.shape[0]} response tokens but "
                             f"{inputs['topk_ids'].shape[0]} teacher rows")
        per_token = topk_kl_loss(logits, inputs["topk_ids"], inputs["topk_targets"],
                                 self.student_side, reduction="none")
        if self.ce_weight:
            ce = F.cross_entropy(logits.float(), targets, reduction="none")
            per_token = (1 - self.ce_weight) * per_token + self.ce_weight * ce
        return per_token


def build_token_trainer(model: Any, tokenizer, examples: Sequence[InstructExample],
                        store_example_ids: np.ndarray, store_token_ids: np.ndarray,
                        topk_ids: np.ndarray, topk_targets: np.ndarray,
                        out_dir: str | os.PathLike[str], train_cfg: TrainConfig,
                        student_side: str = "full", ce_weight: float = 0.0, seed: int = 0,
                        callbacks: Sequence[TrainerCallback] = ()) -> TokenDistillTrainer:
    """The Trainer `distill_tokens` runs (separate so tests can inspect its gradients)."""
    _check_side(student_side)
    student = as_model(model)
    encoded = encode_responses(tokenizer, examples, train_cfg.max_length)
    starts, ids, targets = align_token_rows(encoded, np.asarray(store_example_ids),
                                            np.asarray(store_token_ids), topk_ids, topk_targets,
                                            inference.vocab_size(student))
    counts = np.array([encoded.n_response(i) for i in range(len(encoded))])
    collator = TokenDistillCollator(tokenizer.pad_token_id, starts, counts, ids, targets)
    return TokenDistillTrainer(model=student, args=training_arguments(out_dir, train_cfg, seed),
                               train_dataset=ResponseDataset(encoded), processing_class=tokenizer,
                               data_collator=collator, callbacks=list(callbacks),
                               student_side=student_side, ce_weight=ce_weight)


def distill_tokens(model: Any, tokenizer, examples: Sequence[InstructExample],
                   store_example_ids: np.ndarray, store_token_ids: np.ndarray,
                   topk_ids: np.ndarray, topk_targets: np.ndarray,
                   out_dir: str | os.PathLike[str], train_cfg: TrainConfig,
                   student_side: str = "full", ce_weight: float = 0.0, seed: int = 0,
                   callbacks: Sequence[TrainerCallback] = ()) -> Path:
    """Distil the student over every response token; returns `out_dir/final`.

    `topk_targets` are q_T rows (`distill.teacher_targets` of the stored raw probabilities),
    row-aligned with the store's `example_ids`, `token_ids` and `topk_ids`.
    """
    trainer = build_token_trainer(model, tokenizer, examples, store_example_ids,
                                  store_token_ids, topk_ids, topk_targets, out_dir, train_cfg,
                                  student_side, ce_weight, seed, callbacks)
    return train_and_save(trainer, out_dir)
