"""What every training stage shares: arguments, the divergence check, resume and publish,
and `TargetTrainer`, the one base whose loss lives at the target span.

Both settings and both methods train the same way (TRL's pattern): a `Trainer` subclass that
overrides only the loss. `TargetTrainer.compute_loss` takes the logits at the targets
(`targets.target_logits`), asks the subclass for the loss summed over this micro-batch's
targets (`target_loss`: SFT's cross-entropy in `sft`, the top-k KL in `distill`), and
divides it by the one per-step count (`step_mean`): the number of targets in the whole
optimizer step, every micro-batch of a gradient-accumulation step and, with
`average_tokens_across_devices`, every process (the Trainer's `num_items_in_batch`, which
counts the collator's labels). So a step's gradient is the gradient of the mean per-target
loss over all its targets, however they fall into micro-batches: a short final batch weighs
by its size, and long responses weigh more than short ones, token for token.

`train_and_save` resumes from the last complete checkpoint and publishes `out_dir/final`
atomically; a run whose loss or weights become non-finite stops with `TrainingDiverged`,
naming the config section to change. Because the loop is the `Trainer`'s, the same code runs
under `accelerate launch` (DDP, FSDP, DeepSpeed) unchanged.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import shutil
import sys
from pathlib import Path
from typing import Any

import torch
from transformers import Trainer, TrainerCallback, TrainingArguments

from ..config.report_to import check_report_to
from ..config.settings import TrainConfig
from ..console import quiet_trainer
from ..errors import ConfigError, FirstError
from ..models.loading import load_model
from .targets import logits_mode, target_logits

log = logging.getLogger(__name__)

_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
TRAINING_LOG = "training_log.json"  # in `final`: the Trainer's log_history, every entry


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


def train_and_save(trainer: Trainer, out_dir: str | os.PathLike[str],
                   section: str | None = None) -> Path:
    """Train (resuming from the last complete checkpoint) and publish `out_dir/final`.

    The final model and tokenizer are written to a temporary directory and renamed, so a
    reader never sees a half-written `final`, which also holds the Trainer's whole log
    (`TRAINING_LOG`). An existing `final` means the job finished:
    it is returned without training (delete it to retrain). Every rank must call this.
    A diverged run's `TrainingDiverged` names `section`, the config section whose settings
    to change (`teacher_train`, `student_train`), in every setting.
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
    try:
        trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    except TrainingDiverged as exc:
        if section is None:
            raise
        raise TrainingDiverged(f"{section}: {exc}; nothing of this stage was kept as "
                               "finished") from None
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


class TargetTrainer(Trainer):
    """A `Trainer` whose loss lives at the target span (module docstring).

    Subclasses override only `target_loss`. The head runs only at the positions that predict
    a target (`targets.logits_mode`, asked once here). The Trainer is made to count the
    labels of each optimizer step and pass them as `num_items_in_batch`, whatever the model
    class says about its own loss kwargs: `step_mean` divides by that count itself, so the
    Trainer must neither skip the count nor divide by the accumulation steps again.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._keep_only = logits_mode(self.accelerator.unwrap_model(self.model))
        self.model_accepts_loss_kwargs = True

    def target_loss(self, logits: torch.Tensor, targets: torch.Tensor,
                    inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """The loss summed over this micro-batch's targets (a scalar)."""
        raise NotImplementedError

    def step_mean(self, total: torch.Tensor, n_targets: int,
                  num_items_in_batch: torch.Tensor | int | None) -> torch.Tensor:
        """`total` / the targets of the whole optimizer step (module docstring); without a
        step count (evaluation) / this micro-batch's `n_targets`. DDP averages the gradients
        over processes, hence the factor when the count spans them."""
        if num_items_in_batch is None:
            return total / n_targets
        loss = total / num_items_in_batch
        if self.args.average_tokens_across_devices:
            loss = loss * self.accelerator.num_processes
        return loss

    def compute_loss(self, model: torch.nn.Module, inputs: dict[str, torch.Tensor],
                     return_outputs: bool = False,
                     num_items_in_batch: torch.Tensor | int | None = None):
        logits, targets = target_logits(model, inputs, self._keep_only)
        total = self.target_loss(logits, targets, inputs)
        loss = self.step_mean(total, targets.numel(), num_items_in_batch)
        return (loss, {"logits": logits}) if return_outputs else loss
