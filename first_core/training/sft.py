"""Supervised fine-tuning (the teacher, and the student baseline) in both settings.

SFT is `TargetTrainer` with the cross-entropy at the targets: the answer token
(`loss_on = "answer"`) or every real token (`"sequence"`) of a multiple-choice sequence, the
response tokens (`"response"`) of an instruction pair. The LM head runs only where a label
is predicted (`targets.target_logits`); the loss is the sum of cross-entropies over those
labels divided by the per-step count (`trainer.TargetTrainer.step_mean`), the same loss as
the model's own over all `[B, T, V]` logits, at a fraction of the projection.

The two settings' sum is taken the way each always took it (bit for bit, so runs resume and
reproduce across versions): `reduction="sum"` at the answer position, a sum of per-token
losses over the response tokens.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch.nn.functional as F
from transformers import TrainerCallback

from ..config.settings import TrainConfig
from ..data.examples import DEFAULT_TEMPLATE, Example, PromptTemplate
from ..data.instruct_data import InstructExample
from ..errors import ConfigError
from ..models.encoding import Encoded, encode_examples, encode_responses
from .targets import TargetCollator, TargetDataset
from .trainer import TargetTrainer, as_model, train_and_save, training_arguments


class SFTTrainer(TargetTrainer):
    """SFT: the cross-entropy at the targets (module docstring).

    `per_token = True` sums per-token losses (the instruction setting, whose reduction it
    always was); otherwise the cross-entropy's own `reduction="sum"`.
    """

    def __init__(self, *args: Any, per_token: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.per_token = per_token

    def target_loss(self, logits, targets, inputs):
        if self.per_token:
            return F.cross_entropy(logits.float(), targets, reduction="none").sum()
        return F.cross_entropy(logits.float(), targets, reduction="sum")


def train_sft(model: Any, tokenizer, encoded: Encoded, out_dir: str | os.PathLike[str],
              train_cfg: TrainConfig, seed: int = 0,
              callbacks: Sequence[TrainerCallback] = (), section: str | None = None) -> Path:
    """SFT of `model` (an object or a path) on `encoded`'s targets; returns `out_dir/final`.
    `section` names the config section in a diverged run's error (`train_and_save`)."""
    trainer = SFTTrainer(model=as_model(model), args=training_arguments(out_dir, train_cfg, seed),
                         train_dataset=TargetDataset(encoded), processing_class=tokenizer,
                         data_collator=TargetCollator(tokenizer.pad_token_id, train_cfg.loss_on),
                         callbacks=list(callbacks), per_token=train_cfg.loss_on == "response")
    return train_and_save(trainer, out_dir, section)


def finetune(model: Any, tokenizer, examples: Sequence[Example],
             out_dir: str | os.PathLike[str], train_cfg: TrainConfig, seed: int = 0,
             template: PromptTemplate = DEFAULT_TEMPLATE,
             callbacks: Sequence[TrainerCallback] = (), section: str | None = None) -> Path:
    """Fine-tune on multiple-choice `examples` (the answer token, or every token with
    `loss_on = "sequence"`); returns `out_dir/final`."""
    encoded = encode_examples(tokenizer, examples, template, train_cfg.max_length)
    return train_sft(model, tokenizer, encoded, out_dir, train_cfg, seed, callbacks, section)


def finetune_responses(model: Any, tokenizer, examples: Sequence[InstructExample],
                       out_dir: str | os.PathLike[str], train_cfg: TrainConfig, seed: int = 0,
                       callbacks: Sequence[TrainerCallback] = (),
                       section: str | None = None) -> Path:
    """SFT on the response tokens of instruction pairs (teacher-forced); returns
    `out_dir/final`."""
    if train_cfg.loss_on != "response":
        raise ConfigError(f"loss_on: the instruction setting trains on the response tokens; "
                          f"set loss_on = \"response\" (got {train_cfg.loss_on!r})")
    encoded = encode_responses(tokenizer, examples, train_cfg.max_length)
    return train_sft(model, tokenizer, encoded, out_dir, train_cfg, seed, callbacks, section)
