"""Time per optimizer step: the FIRST student loss and online full-vocabulary KD, each against
a plain SFT step of the same student on the same batch.

Each step is forward + loss + backward + AdamW step + zero_grad, with the loss computed by the
real `compute_loss` of the pipeline's trainers:

- `sft_trainer`: `sft.SFTTrainer` with `targets.TargetCollator`, exactly what the
  fine-tuning stage runs: the causal-LM loss with labels on the answer token, the LM head run
  only at the labelled position (the plain `Trainer`'s model loss projects *every* position to
  the vocabulary); `sft_trainer / sft_answer` checks that the stage pays no more than the
  answer-only step (target <= 1.1);
- `sft_answer`: cross-entropy on the gold token at the answer position only, through the same
  forward as FIRST (`targets.target_logits`, one position projected): the like-for-like SFT
  step, so `first / sft_answer` isolates the cost of the FIRST loss itself (the target);
- `first`: `distill.DistillTrainer` (`mode="first"`) on `distill.DistillCollator` rows whose
  targets are the teacher's real stored top-k (`topk.extract_topk` + `calibrate`);
- `online_kd`: the contrast FIRST avoids: the teacher runs inside every step and the loss is
  the full-vocabulary KL at the answer position. (Only at the answer position, which is the
  cheapest online KD can be; sequence-level KD costs more.)

Two student/teacher pairs: the tiny presets (~120-token vocabulary) and random Llamas with a
real 32k vocabulary (student hidden 64 / 2 layers, teacher hidden 256 / 4 layers), where the
vocabulary-sized tensors dominate as they do for real models.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from transformers import Trainer, TrainingArguments

from _common import (interleaved_medians, parse_args, print_machine, random_llama, report,
                     tiny_setup)

TARGET_FIRST = 1.05
TARGET_SFT_STAGE = 1.1
FIRST_C = 0.3  # the paper's typical optimum of the trustworthy-maximization temperature


class AnswerCETrainer(Trainer):
    """SFT with the answer-position forward FIRST uses: CE on the gold answer token."""

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        from first_core.training.targets import target_logits

        logits, answers = target_logits(model, inputs, keep_only=True)
        return F.cross_entropy(logits.float(), answers)


class OnlineKDTrainer(Trainer):
    """Online KD baseline: teacher forward inside the step, full-vocabulary forward KL."""

    def __init__(self, *args, teacher: torch.nn.Module, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.teacher = teacher.eval()

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        from first_core.training.targets import target_logits

        student = target_logits(model, inputs, keep_only=True)[0]
        with torch.no_grad():
            teacher = target_logits(self.teacher, inputs, keep_only=True)[0]
        return F.kl_div(F.log_softmax(student.float(), -1), F.log_softmax(teacher.float(), -1),
                        log_target=True, reduction="batchmean")


def step_fns(student, teacher, tok, examples, work: Path) -> dict[str, Callable[[], None]]:
    """One optimizer-step closure per contender, all on the same batch and student weights."""
    from first_core.training.distill import DistillCollator, DistillTrainer, teacher_targets
    from first_core.training.sft import SFTTrainer
    from first_core.training.targets import TargetCollator, TargetDataset
    from first_core.models.encoding import encode_examples
    from first_core.knowledge.answer_topk import extract_topk
    from first_core.knowledge.reader import load_topk

    extract_topk(teacher, tok, examples, work / "topk", k=5, coverage_k=5, progress=False)
    topk = load_topk(work / "topk")
    targets = teacher_targets(topk.probs, "first", c=FIRST_C)
    items = list(TargetDataset(encode_examples(tok, examples)))  # same order as the store
    sft_batch = TargetCollator(tok.pad_token_id)(items)
    first_batch = DistillCollator(tok.pad_token_id, "answer", np.arange(len(items)),
                                  np.ones(len(items), int), torch.as_tensor(topk.ids),
                                  torch.as_tensor(targets, dtype=torch.float32))(items)
    args = TrainingArguments(output_dir=str(work / "args"), use_cpu=True, report_to=[],
                             remove_unused_columns=False)
    trainers = {
        "sft_trainer": (SFTTrainer(model=student, args=args), sft_batch),
        "sft_answer": (AnswerCETrainer(model=student, args=args), first_batch),
        "first": (DistillTrainer(model=student, args=args),
                  first_batch),
        "online_kd": (OnlineKDTrainer(model=student, args=args, teacher=teacher), first_batch),
    }
    optimizer = torch.optim.AdamW(student.parameters(), lr=1e-4)
    student.train()

    def step(trainer: Trainer, batch: dict[str, torch.Tensor]) -> None:
        trainer.compute_loss(student, batch).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return {name: (lambda t=t, b=b: step(t, b)) for name, (t, b) in trainers.items()}


def main() -> None:
    args = parse_args(__doc__, batch_size=(int, None, "examples per step (default 32, quick 8)"),
                      repeats=(int, None, "timed steps per contender (default 30, quick 3)"))
    repeats = args.repeats or (3 if args.quick else 30)
    batch_size = args.batch_size or (8 if args.quick else 32)
    print_machine(f"bench_distill_step: time per optimizer step (batch {batch_size}, "
                  f"median of {repeats})")
    from first_core.models.loading import load_model

    with tempfile.TemporaryDirectory(prefix="bench_distill-") as tmp:
        work = Path(tmp)
        setup = tiny_setup(work, n_train=max(batch_size, 8))
        teacher, tok = load_model(setup.teacher_dir, device="cpu")
        student, _ = load_model(setup.student_dir, device="cpu")
        pairs = {"tiny presets": (student, teacher),
                 "llama V=32k": (random_llama(tok, 32_000, hidden=64, layers=2),
                                 random_llama(tok, 32_000, hidden=256, layers=4))}
        examples = setup.train[:batch_size]
        for name, (s, t) in pairs.items():
            fns = step_fns(s, t, tok, examples, work / name.replace(" ", "_"))
            sec = interleaved_medians(fns, repeats, warmup=2)
            print(f"\n{name}\n{'step':>12} {'median ms':>10}")
            for contender, v in sec.items():
                print(f"{contender:>12} {1e3 * v:>10.2f}")
            ratio = sec["first"] / sec["sft_answer"]
            report(f"first_step/sft_answer_step[{name}]", ratio, f"<= {TARGET_FIRST}",
                   ratio <= TARGET_FIRST)
            report(f"online_kd_step/sft_answer_step[{name}]",
                   sec["online_kd"] / sec["sft_answer"])
            report(f"first_step/sft_trainer_step[{name}]", sec["first"] / sec["sft_trainer"])
            stage = sec["sft_trainer"] / sec["sft_answer"]
            report(f"sft_stage_step/sft_answer_step[{name}]", stage, f"<= {TARGET_SFT_STAGE}",
                   stage <= TARGET_SFT_STAGE)


if __name__ == "__main__":
    main()
