"""The teacher-knowledge steps both settings run alike: the topk stage's loop over splits
(`extract_splits`), a split's stored top-k (`load_split_topk`) and the distillation stage's
body (`distill_student`). What differs is handed in: the layout (`manifest.ANSWER` or
`manifest.TOKENS`), the examples, the extraction and the training function.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from .stage_base import Context, load_for, student_targets, teacher_vocab_size


def extract_splits(ctx: Context, examples: Mapping[str, Sequence[Any]], layout: str,
                   examples_hash: Callable[[Sequence[Any]], str],
                   extract: Callable[..., Any]) -> dict[str, Any]:
    """The topk stage of either setting: the fine-tuned teacher's top-k of each split of
    `examples` in `layout`, written by `extract` (`answer_topk.extract_topk` or
    `token_topk.extract_token_topk`) under `topk/SPLIT`. A split whose finished store
    matches this config and these examples is kept (resume after a kill,
    `manifest.store_matches`); the teacher is loaded only when a split is extracted."""
    from ..knowledge.manifest import store_matches
    t = ctx.cfg.topk
    info = {"teacher": ctx.cfg.model.teacher, "dataset_hash": ctx.record("data")["dataset_hash"],
            "config_hash": ctx.cfg.hash()}
    model = tok = None
    out, kept = {}, []
    for split, split_examples in examples.items():
        folder = ctx.path("topk", split)
        out[split] = str(folder)
        if store_matches(folder, layout=layout, config_hash=info["config_hash"], k=t.k,
                         examples_hash=examples_hash(split_examples)):
            kept.append(split)  # finished before a kill: resume after it
            continue
        if model is None:
            model, tok = load_for(ctx, ctx.model_path("teacher_ft"))
        extract(model, tok, split_examples, folder, k=t.k, coverage_k=t.coverage_k,
                dtype=t.dtype, shard_size=t.shard_size, batch_size=t.batch_size,
                max_length=ctx.cfg.teacher_train.max_length,
                manifest_info={**info, "split": split})
    return {"dirs": out, "kept": kept}


def load_split_topk(ctx: Context, split: str, layout: str):
    """A split's stored top-k (`layout`: `manifest.ANSWER` or `manifest.TOKENS`), refused
    unless it came from this run's teacher, data and vocabulary."""
    from ..knowledge.reader import load_topk
    return load_topk(ctx.path("topk", split), expect_vocab_size=teacher_vocab_size(ctx),
                     expect_dataset_hash=ctx.record("data")["dataset_hash"],
                     expect_teacher=ctx.cfg.model.teacher, layout=layout)


def distill_student(ctx: Context, method: str, topk: Any,
                    train: Callable[..., Path]) -> dict[str, Any]:
    """A distillation stage of either setting: `method`'s teacher targets (`student_targets`)
    from the stored train top-k, a fresh student from its init, and the setting's
    `train(model, tokenizer, targets, out, train_config, **options)` (`distill.distill` or
    `distill.distill_tokens` over the setting's examples)."""
    from ..training.distill import teacher_targets
    mode, c, delta = student_targets(ctx, method)
    targets = teacher_targets(topk.probs, mode, c, delta)
    model, tok = load_for(ctx, ctx.init_path("student"))
    d = ctx.cfg.distill
    out = train(model, tok, targets, ctx.path("models", method), ctx.cfg.student_train,
                student_side=d.student_side, ce_weight=d.ce_weight, seed=ctx.cfg.seed,
                section="student_train")
    return {"model": str(out), "mode": mode, "c": c, "delta": delta}
