"""The target span in a batch: its dataset, its labels, and the logits that predict it.

Both settings train on one idea: a sequence is `prompt + targets` (`models.encoding.Encoded`),
and the loss lives at the targets only. A multiple-choice answer is a target span one token
long; an instruction response is the span `response + eos`. So one dataset, one collator and
one `target_logits` serve SFT, distillation, top-k extraction and evaluation in both:

- `TargetCollator`: right-padded `input_ids` / `attention_mask` (with causal attention the
  padding sits after every real token, so it cannot change the logits at a target), `labels`
  equal to the token at every target position and -100 elsewhere (so the `Trainer`'s own
  count of labels, `num_items_in_batch`, is the number of targets in the optimizer step; with
  `loss_on = "sequence"` every real token is a target), and `index` (the example's row).
- `target_logits`: logits `[N, V]` for the N targets of a batch, in row-major order (example
  by example, position by position), projecting to the vocabulary only the hidden states that
  predict a target: `logits_to_keep` as a boolean `[B, T]` mask (transformers'
  `slice_logits_to_keep`, used by Llama, Qwen2, Mistral, Gemma ...). Models whose forward
  slices by hand get the band of positions from the batch's first to last target (a 1-D index
  tensor), models without `logits_to_keep` the full logits. `logits_mode` is the one place
  that asks a model which of these it supports. Always through the model's own forward, so it
  works under DDP / FSDP and with logit soft-capping.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch.nn.utils.rnn import pad_sequence

from ..errors import ConfigError, FirstError
from ..models.encoding import Encoded

IGNORE = -100  # label value the loss skips
LOSS_ON = ("answer", "sequence", "response")  # "answer" and "response" both mean the targets
LOGITS_MODES = ("mask", "band", "full")


class TargetDataset(torch.utils.data.Dataset):
    """Items of an `Encoded`; `index` lets collators fetch per-example tables."""

    def __init__(self, encoded: Encoded) -> None:
        self.encoded = encoded

    def __len__(self) -> int:
        return len(self.encoded)

    def __getitem__(self, i: int) -> dict[str, Any]:
        e = self.encoded
        return {"input_ids": e.input_ids[i], "target_start": e.target_start[i], "index": i}


@dataclass
class TargetCollator:
    """Right-padded batch; `labels` = the token at each target position, -100 elsewhere
    (every real token with `loss_on = "sequence"`)."""

    pad_id: int
    loss_on: str = "answer"

    def __post_init__(self) -> None:
        if self.loss_on not in LOSS_ON:
            raise ConfigError(f"loss_on: expected one of {LOSS_ON}, got {self.loss_on!r}")

    def __call__(self, items: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        seqs = [torch.tensor(it["input_ids"], dtype=torch.long) for it in items]
        ids = pad_sequence(seqs, batch_first=True, padding_value=self.pad_id)
        lengths = torch.tensor([len(s) for s in seqs])
        starts = torch.tensor([0 if self.loss_on == "sequence" else it["target_start"]
                               for it in items])
        cols = torch.arange(ids.shape[1])
        mask = cols < lengths[:, None]
        target = mask & (cols >= starts[:, None])
        return {"input_ids": ids, "attention_mask": mask.long(),
                "labels": ids.masked_fill(~target, IGNORE),
                "index": torch.tensor([it["index"] for it in items])}


def logits_mode(model: torch.nn.Module) -> str:
    """How `target_logits` can ask this model for the target positions only (above)."""
    inner = getattr(model, "module", model)  # DDP keeps the model under .module
    if "logits_to_keep" not in inspect.signature(inner.forward).parameters:
        return "full"
    try:
        source = inspect.getsource(type(inner).forward)
    except (OSError, TypeError):
        return "band"
    return "mask" if "slice_logits_to_keep" in source else "band"


def target_logits(model: torch.nn.Module, batch: dict[str, torch.Tensor],
                  keep_only: bool | str = True) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits `[N, V]`, targets `[N]`) at the batch's N labelled tokens, row-major order.

    Row i of the result holds the logits at position t - 1 of the example's token t.
    `keep_only`: a `LOGITS_MODES` entry (`True` = "mask", `False` = "full").
    """
    mode = {True: "mask", False: "full"}.get(keep_only, keep_only)
    if mode not in LOGITS_MODES:
        raise ValueError(f"keep_only: expected a bool or one of {LOGITS_MODES}, got {mode!r}")
    labels = batch["labels"]
    predicts = labels[:, 1:] != IGNORE                  # logits at t predict token t + 1
    targets = labels[:, 1:][predicts]
    if len(targets) == 0:
        raise FirstError("batch: no target tokens to compute logits for")
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"],
              "use_cache": False}
    if mode == "full":
        return model(**inputs).logits[:, :-1][predicts], targets
    if mode == "mask":
        mask = torch.nn.functional.pad(predicts, (0, 1))  # [B, T], last column False
        return model(**inputs, logits_to_keep=mask).logits, targets
    cols = predicts.any(dim=0).nonzero().squeeze(1)
    lo, hi = int(cols[0]), int(cols[-1]) + 1
    keep = torch.arange(lo, hi, device=labels.device)
    logits = model(**inputs, logits_to_keep=keep).logits
    return logits[predicts[:, lo:hi]], targets
