"""Teacher-forced sequences `prompt + response + eos`, and the logits at the response tokens.

Everything the instruction setting does per token goes through this module, so supervised
fine-tuning, top-k extraction, distillation and evaluation see the same tokens at the same
positions:

- `encode_responses`: `encode(prompt)` (with the tokenizer's special tokens) followed by
  `encode(response)` (without) and the eos token. Prompt and response are tokenised apart, as
  Stanford Alpaca does, so the response tokens never depend on the template's last word.
  Too-long pairs lose response tokens from the end first (at least one stays), then prompt
  tokens from the left (after BOS); one warning counts them.
- `ResponseCollator`: right-padded `input_ids` / `attention_mask`, `labels` equal to the
  token at every response position and -100 elsewhere (so the `Trainer`'s own count of
  labels, `num_items_in_batch`, is the number of response tokens in the optimizer step), and
  `index` (the example's row).
- `response_logits`: logits `[N, V]` for the N response tokens of a batch, in row-major
  order (example by example, position by position), projecting to the vocabulary only the
  hidden states that predict a response token: `logits_to_keep` as a boolean `[B, T]` mask
  (transformers' `slice_logits_to_keep`, used by Llama, Qwen2, Mistral, Gemma ...). Models
  whose forward slices by hand get the band of positions from the batch's first to last
  response token (a 1-D index tensor), models without `logits_to_keep` the full logits.
  Always through the model's own forward, so it works under DDP / FSDP and with logit
  soft-capping.
- `ResponseSFTTrainer` / `finetune_responses`: SFT with the loss on the response tokens only
  (`loss_on = "response"`): cross-entropy summed over response tokens, divided by the number
  of response tokens in the optimizer step (all micro-batches and processes).
"""

from __future__ import annotations

import inspect
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.nn.utils.rnn import pad_sequence
from transformers import Trainer, TrainerCallback

from ..config.settings import TrainConfig
from ..errors import ConfigError, FirstError
from .sft import IGNORE, as_model, train_and_save, training_arguments
from ..data.instruct_data import InstructExample

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EncodedResponses:
    """`input_ids[i] = prompt ids + response ids`; `response_start[i]` is the index of the
    first response token. The logits that predict token t sit at t - 1."""

    input_ids: list[list[int]]
    response_start: list[int]
    example_ids: list[str]

    def __len__(self) -> int:
        return len(self.input_ids)

    def n_response(self, i: int) -> int:
        return len(self.input_ids[i]) - self.response_start[i]

    def n_tokens(self) -> int:
        return sum(len(s) - r for s, r in zip(self.input_ids, self.response_start))


def encode_responses(tokenizer, examples: Sequence[InstructExample],
                     max_length: int) -> EncodedResponses:
    """Tokenise `examples` as described in the module docstring."""
    if max_length < 3:
        raise ConfigError(f"max_length: must be >= 3, got {max_length}")
    if not examples:
        raise FirstError("examples: empty, nothing to encode")
    prompts = tokenizer([ex.prompt for ex in examples], add_special_tokens=True)["input_ids"]
    responses = tokenizer([ex.response for ex in examples],
                          add_special_tokens=False)["input_ids"]
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    bos = tokenizer.bos_token_id
    seqs, starts, n_cut = [], [], 0
    for p, r, ex in zip(prompts, responses, examples):
        r = [*r, *eos]
        if not r:
            raise FirstError(f"example {ex.id!r}: the response has no tokens")
        if len(p) + len(r) > max_length:
            n_cut += 1
            r = r[:max(1, max_length - len(p))]
            room = max_length - len(r)
            if len(p) > room:
                keep_bos = bos is not None and p[0] == bos
                p = [bos, *p[len(p) - room + 1:]] if keep_bos else p[len(p) - room:]
        seqs.append([*p, *r])
        starts.append(len(p))
    if n_cut:
        log.warning("%d of %d prompt+response pairs were longer than max_length=%d and were "
                    "cut (response end first, then prompt start)", n_cut, len(examples),
                    max_length)
    return EncodedResponses(seqs, starts, [ex.id for ex in examples])


class ResponseDataset(torch.utils.data.Dataset):
    def __init__(self, encoded: EncodedResponses) -> None:
        self.encoded = encoded

    def __len__(self) -> int:
        return len(self.encoded)

    def __getitem__(self, i: int) -> dict[str, Any]:
        e = self.encoded
        return {"input_ids": e.input_ids[i], "response_start": e.response_start[i], "index": i}


@dataclass
class ResponseCollator:
    """Right-padded batch; `labels` = the token at each response position, -100 elsewhere."""

    pad_id: int

    def __call__(self, items: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        seqs = [torch.tensor(it["input_ids"], dtype=torch.long) for it in items]
        ids = pad_sequence(seqs, batch_first=True, padding_value=self.pad_id)
        lengths = torch.tensor([len(s) for s in seqs])
        starts = torch.tensor([it["response_start"] for it in items])
        cols = torch.arange(ids.shape[1])
        mask = cols < lengths[:, None]
        response = mask & (cols >= starts[:, None])
        return {"input_ids": ids, "attention_mask": mask.long(),
                "labels": ids.masked_fill(~response, IGNORE),
                "index": torch.tensor([it["index"] for it in items])}


LOGITS_MODES = ("mask", "band", "full")


def logits_mode(model: torch.nn.Module) -> str:
    """How `response_logits` can ask this model for the response positions only (above)."""
    inner = getattr(model, "module", model)  # DDP keeps the model under .module
    if "logits_to_keep" not in inspect.signature(inner.forward).parameters:
        return "full"
    try:
        source = inspect.getsource(type(inner).forward)
    except (OSError, TypeError):
        return "band"
    return "mask" if "slice_logits_to_keep" in source else "band"


def response_logits(model: torch.nn.Module, batch: dict[str, torch.Tensor],
                    keep_only: bool | str = True) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits `[N, V]`, targets `[N]`) at the batch's N response tokens, row-major order.

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
        raise FirstError("batch: no response tokens to compute logits for")
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


def reduce_over_step(trainer: Trainer, per_token: torch.Tensor,
                     num_items_in_batch: torch.Tensor | int | None) -> torch.Tensor:
    """Sum over this micro-batch's tokens / tokens in the whole optimizer step.

    `num_items_in_batch` is the Trainer's count of labels != -100 over every micro-batch of
    the step (and every process, with `average_tokens_across_devices`, whose gradients DDP
    then averages, hence the factor). Without it (evaluation) the plain mean.
    """
    if num_items_in_batch is None:
        return per_token.mean()
    loss = per_token.sum() / num_items_in_batch
    if trainer.args.average_tokens_across_devices:
        loss = loss * trainer.accelerator.num_processes
    return loss


def count_tokens_per_step(trainer: Trainer) -> None:
    """Make the Trainer count the response labels of each optimizer step and pass them as
    `num_items_in_batch`, whatever the model class says about its own loss kwargs: our
    `compute_loss` divides by that count itself (`reduce_over_step`), so the Trainer must
    neither skip the count nor divide by the accumulation steps again."""
    trainer.model_accepts_loss_kwargs = True


class ResponseLossMixin:
    """For a `Trainer` whose loss lives at the response tokens: logits only there
    (`response_logits`), a per-token loss from `per_token_loss`, reduced over the optimizer
    step (`reduce_over_step`). Shared by SFT here and distillation (`distill_tokens`)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._keep_only = logits_mode(self.accelerator.unwrap_model(self.model))
        count_tokens_per_step(self)

    def per_token_loss(self, logits: torch.Tensor, targets: torch.Tensor,
                       inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        logits, targets = response_logits(model, inputs, self._keep_only)
        per_token = self.per_token_loss(logits, targets, inputs)
        loss = reduce_over_step(self, per_token, num_items_in_batch)
        return (loss, {"logits": logits}) if return_outputs else loss


class ResponseSFTTrainer(ResponseLossMixin, Trainer):
    """SFT whose loss is the cross-entropy on the response tokens only."""

    def per_token_loss(self, logits, targets, inputs):
        return F.cross_entropy(logits.float(), targets, reduction="none")


def finetune_responses(model: Any, tokenizer, examples: Sequence[InstructExample],
                       out_dir: str | os.PathLike[str], train_cfg: TrainConfig, seed: int = 0,
                       callbacks: Sequence[TrainerCallback] = ()) -> Path:
    """SFT on the response tokens (teacher-forced); returns `out_dir/final`."""
    if train_cfg.loss_on != "response":
        raise ConfigError(f"loss_on: the instruction setting trains on the response tokens; "
                          f"set loss_on = \"response\" (got {train_cfg.loss_on!r})")
    encoded = encode_responses(tokenizer, examples, train_cfg.max_length)
    trainer = ResponseSFTTrainer(model=as_model(model),
                                 args=training_arguments(out_dir, train_cfg, seed),
                                 train_dataset=ResponseDataset(encoded),
                                 processing_class=tokenizer,
                                 data_collator=ResponseCollator(tokenizer.pad_token_id),
                                 callbacks=list(callbacks))
    return train_and_save(trainer, out_dir)
