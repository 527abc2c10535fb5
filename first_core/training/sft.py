"""Supervised fine-tuning with the Hugging Face `Trainer` (teacher and the student baseline).

This module also owns what every training stage shares, so distillation reuses it instead of
copying it: the dataset over `models.Encoded`, the right-padding collator, the
`TrainingArguments` built from a `TrainConfig`, and `train_and_save`, which resumes from the
last complete checkpoint and publishes `out_dir/final` atomically. Because the loop is the
`Trainer`'s, the same code runs under `accelerate launch` (DDP, FSDP, DeepSpeed) unchanged.

Sequences are `prompt + [answer token]`, right-padded: with causal attention the padding sits
after every real token, so it cannot change the logits at the answer position.
"""

from __future__ import annotations

import inspect
import json
import logging
import math
import os
import re
import shutil
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.nn.utils.rnn import pad_sequence
from transformers import Trainer, TrainerCallback, TrainingArguments

from ..config.settings import TrainConfig
from ..console import quiet_trainer
from ..data.examples import DEFAULT_TEMPLATE, Example, PromptTemplate
from ..errors import ConfigError, FirstError
from ..models.loading import Encoded, encode_examples, load_model
from ..config.report_to import check_report_to

log = logging.getLogger(__name__)

IGNORE = -100  # label value the loss skips
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
TRAINING_LOG = "training_log.json"  # in `final`: the Trainer's log_history, every entry


class EncodedDataset(torch.utils.data.Dataset):
    """Items of an `Encoded` batch-to-be; `index` lets collators fetch per-example tables."""

    def __init__(self, encoded: Encoded) -> None:
        self.encoded = encoded

    def __len__(self) -> int:
        return len(self.encoded)

    def __getitem__(self, i: int) -> dict[str, Any]:
        e = self.encoded
        return {"input_ids": e.input_ids[i], "answer_pos": e.answer_pos[i],
                "answer_id": e.answer_id[i], "index": i}


@dataclass
class AnswerCollator:
    """Right-pads a batch; labels are the answer token only, or every real token.

    Returns exactly the model's inputs (`input_ids`, `attention_mask`, `labels`) so the plain
    `Trainer` can pass the batch to `model(**batch)`.
    """

    pad_id: int
    loss_on: str = "answer"

    def __post_init__(self) -> None:
        if self.loss_on not in ("answer", "sequence"):
            raise ConfigError(f"loss_on: expected 'answer' or 'sequence', got {self.loss_on!r}")

    def __call__(self, items: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        seqs = [torch.tensor(it["input_ids"], dtype=torch.long) for it in items]
        ids = pad_sequence(seqs, batch_first=True, padding_value=self.pad_id)
        lengths = torch.tensor([len(s) for s in seqs])
        mask = torch.arange(ids.shape[1]) < lengths[:, None]
        if self.loss_on == "answer":
            labels = torch.full_like(ids, IGNORE)
            pos = torch.tensor([it["answer_pos"] for it in items])
            labels[torch.arange(len(items)), pos] = ids[torch.arange(len(items)), pos]
        else:
            labels = ids.masked_fill(~mask, IGNORE)
        return {"input_ids": ids, "attention_mask": mask.long(), "labels": labels}


def head_positions(labels: torch.Tensor) -> torch.Tensor:
    """Boolean `[B, T]`: the positions whose logits the causal-LM loss reads, i.e. those
    followed by a label (position t predicts token t + 1)."""
    keep = torch.zeros_like(labels, dtype=torch.bool)
    keep[:, :-1] = labels[:, 1:] != IGNORE
    return keep


class SFTTrainer(Trainer):
    """The `Trainer` with the causal-LM loss computed from the needed logits only.

    The model's own loss projects every position to the vocabulary ([B, T, V]) and then
    ignores all but the labelled ones; at a 49k vocabulary that projection is most of an
    answer-token SFT step. Here the head runs only at the positions `head_positions` marks
    (the model's boolean `logits_to_keep`), and the loss is the same sum of cross-entropies
    over the same labels, divided by the same count (the Trainer's `num_items_in_batch` for
    the whole optimizer step when it gives one, else this batch's labels). A model whose
    forward has no `logits_to_keep`, a label smoother or a custom loss function falls back to
    the Trainer's own loss.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        forward = self.accelerator.unwrap_model(self.model).forward
        self._keep_only = "logits_to_keep" in inspect.signature(forward).parameters

    def compute_loss(self, model: torch.nn.Module, inputs: dict[str, torch.Tensor],
                     return_outputs: bool = False,
                     num_items_in_batch: torch.Tensor | int | None = None):
        if (not self._keep_only or self.label_smoother is not None
                or self.compute_loss_func is not None or "labels" not in inputs):
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        labels = inputs["labels"]
        keep = head_positions(labels)
        rest = {k: v for k, v in inputs.items() if k != "labels"}
        outputs = model(**rest, use_cache=False, logits_to_keep=keep)
        targets = labels[:, 1:][labels[:, 1:] != IGNORE]
        # the flattened logits follow keep's row-major order, as do the targets
        loss = F.cross_entropy(outputs.logits.float(), targets, reduction="sum")
        if num_items_in_batch is None:
            loss = loss / targets.numel()
        else:
            loss = loss / num_items_in_batch
            if self.args.average_tokens_across_devices and self.model_accepts_loss_kwargs:
                loss = loss * self.accelerator.num_processes  # DDP averages the gradients
        return (loss, outputs) if return_outputs else loss


def training_arguments(out_dir: str | os.PathLike[str], cfg: TrainConfig,
                       seed: int) -> TrainingArguments:
    """`TrainingArguments` from a `TrainConfig`: checkpoints for resume, and external loggers
    only where `report_to` names them (the default "none": none). Every trainer (SFT, both
    distillations, response SFT) gets its arguments here."""
    cuda = torch.cuda.is_available()
    if cfg.fp16 and not cuda:
        raise ConfigError("train.fp16: needs a CUDA GPU; use bf16 or float32 on CPU")
    if cfg.fp16 and cfg.bf16:
        raise ConfigError("train.fp16 and train.bf16: choose one")
    if not 0.0 <= cfg.warmup_ratio < 1.0:
        raise ConfigError(f"train.warmup_ratio: must be in [0, 1), got {cfg.warmup_ratio}")
    if cfg.save_steps < 1 or cfg.gradient_accumulation_steps < 1:
        raise ConfigError("train.save_steps and train.gradient_accumulation_steps must be >= 1")
    return TrainingArguments(
        output_dir=str(out_dir), num_train_epochs=cfg.epochs,
        per_device_train_batch_size=cfg.batch_size, learning_rate=cfg.learning_rate,
        weight_decay=cfg.weight_decay, warmup_steps=cfg.warmup_ratio,  # float < 1 = a ratio
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        bf16=cfg.bf16, fp16=cfg.fp16, activation_checkpointing=cfg.gradient_checkpointing,
        save_strategy="steps", save_steps=cfg.save_steps, save_total_limit=1,
        logging_steps=max(1, min(50, cfg.save_steps)),
        report_to=check_report_to(cfg.report_to, "train.report_to"),
        disable_tqdm=not sys.stderr.isatty(), use_cpu=not cuda, seed=seed, data_seed=seed,
        remove_unused_columns=False, dataloader_num_workers=0,
        ddp_find_unused_parameters=False)


class TrainingDiverged(FirstError):
    """The loss or the weights became NaN/inf: the run stops before saving anything from it."""


class FiniteCheck(TrainerCallback):
    """Stops training with `TrainingDiverged` at the first non-finite loss or weight.

    The weights are checked after every optimizer step, before the `Trainer` gets to save a
    checkpoint or the final model, so a diverged run never leaves something that looks done.
    One fused norm over all parameters costs about one extra read of the weights per step.
    """

    def __init__(self, model: torch.nn.Module) -> None:
        self.params = [p for p in model.parameters() if p.requires_grad]

    def _fail(self, what: str, step: int, args: TrainingArguments) -> None:
        raise TrainingDiverged(f"training diverged: {what} at optimizer step {step} "
                               f"(learning_rate={args.learning_rate:g}); lower the learning "
                               "rate, or use float32 instead of fp16")

    def on_step_end(self, args, state, control, **kwargs):
        with torch.no_grad():
            norm = torch.nn.utils.get_total_norm([p.detach() for p in self.params])
        if not torch.isfinite(norm):
            self._fail("non-finite weights", state.global_step, args)

    def on_log(self, args, state, control, logs=None, **kwargs):
        for key in ("loss", "train_loss"):
            value = (logs or {}).get(key)
            if isinstance(value, float) and not math.isfinite(value):
                self._fail(f"{key} = {value}", state.global_step, args)


def last_checkpoint(out_dir: Path) -> Path | None:
    """The newest *complete* `checkpoint-N` (the Trainer writes trainer_state.json last)."""
    if not out_dir.is_dir():
        return None
    done = [(int(m.group(1)), p) for p in out_dir.iterdir()
            if (m := _CHECKPOINT.match(p.name)) and (p / "trainer_state.json").exists()]
    return max(done)[1] if done else None


def train_and_save(trainer: Trainer, out_dir: str | os.PathLike[str]) -> Path:
    """Train (resuming from the last complete checkpoint) and publish `out_dir/final`.

    The final model and tokenizer are written to a temporary directory and renamed, so a
    reader never sees a half-written `final`, which also holds the Trainer's whole log
    (`TRAINING_LOG`). An existing `final` means the job finished:
    it is returned without training (delete it to retrain). Every rank must call this.
    """
    out = Path(out_dir)
    final, tmp = out / "final", out / ".final.tmp"
    if (final / "config.json").exists():
        log.info("%s exists: training already finished", final)
        return final
    resume = last_checkpoint(out)
    if resume is not None:
        log.info("resuming from %s", resume)
    trainer.add_callback(FiniteCheck(trainer.model))
    quiet_trainer(trainer, out.name)  # the CLI's one bar instead of the Trainer's chatter
    trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    main = trainer.is_world_process_zero()
    if main:
        shutil.rmtree(tmp, ignore_errors=True)
    trainer.accelerator.wait_for_everyone()
    trainer.save_model(str(tmp))  # collective under FSDP/DeepSpeed; rank 0 writes
    if main:
        (tmp / "training_args.bin").unlink(missing_ok=True)  # a pickle: keep final pickle-free
        # the whole log, the end-of-training summary included (a checkpoint's
        # trainer_state.json is saved before it): the console no longer prints it
        (tmp / TRAINING_LOG).write_text(json.dumps(trainer.state.log_history, indent=1),
                                        encoding="utf-8")
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
    trainer.accelerator.wait_for_everyone()
    return final


def as_model(model: Any) -> torch.nn.Module:
    """A model object as is, or one loaded (safely, on CPU) from a path or hub id."""
    if isinstance(model, (str, os.PathLike)):
        return load_model(model, device="cpu")[0]
    return model


def finetune(model: Any, tokenizer, examples: Sequence[Example],
             out_dir: str | os.PathLike[str], train_cfg: TrainConfig, seed: int = 0,
             template: PromptTemplate = DEFAULT_TEMPLATE,
             callbacks: Sequence[TrainerCallback] = ()) -> Path:
    """Fine-tune `model` (an object or a path) on `examples`; returns `out_dir/final`.

    The loss is the causal-LM loss on the labels the collator builds: the answer token only
    (`train_cfg.loss_on = "answer"`) or every real token ("sequence"), with the LM head run
    only where a label is predicted (`SFTTrainer`).
    """
    encoded = encode_examples(tokenizer, examples, template, train_cfg.max_length)
    trainer = SFTTrainer(model=as_model(model), args=training_arguments(out_dir, train_cfg, seed),
                         train_dataset=EncodedDataset(encoded), processing_class=tokenizer,
                         data_collator=AnswerCollator(tokenizer.pad_token_id, train_cfg.loss_on),
                         callbacks=list(callbacks))
    return train_and_save(trainer, out_dir)
