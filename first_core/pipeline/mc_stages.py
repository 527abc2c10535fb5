"""The multiple-choice setting as pipeline stages (`[data] kind = "mc"`, the default).

The paper's in-domain setting (CSQA -> CSQA): every model is trained and tested at the answer
position, one token long (the letter after `Answer:`). Stages, in the order
`stage_base.build_stages` makes them: data (`stage_base.stage_mc_data`), models (presets get
a tokenizer over the training text), teacher_ft and student_ft (SFT on the answer token),
topk (the teacher's top-k at the answer position of train / val / test; a finished split is
kept), calibrate (c and delta by ECE on the validation top-k), the distilled students (the
KL to the transformed top-k), eval_* and posthoc_* (both conventions on val / test /
test_ood), store. `runner.run` runs them; `MULTIPLE_CHOICE` is what it is handed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..atomic_files import write_json_atomic
from ..calibration import transforms as calibrate
from ..data import examples as data
from .knowledge_steps import distill_student, extract_splits, load_split_topk
from .stage_base import (SPLITS, Context, Setting, build_models, finetune_stage, load_for,
                         run_posthoc, search_calibration, stage_mc_data, train_config,
                         write_store)


def stage_models(ctx: Context) -> dict[str, Any]:
    """Build the embedded presets (tokenizer trained on the training text only), and convert
    GGUF / layer-subset specs to safetensors folders (each GGUF file once), in the run dir."""
    texts = [data.format_prompt(ex) + data.answer_text(ex.answer) for ex in ctx.examples["train"]]
    return build_models(ctx, texts)


def stage_finetune(ctx: Context, method: str) -> dict[str, Any]:
    """Supervised fine-tuning: the teacher, and the 'fine-tuned student' baseline."""
    from ..training.sft import finetune
    return finetune_stage(ctx, method, finetune, ctx.examples["train"])


def stage_topk(ctx: Context) -> dict[str, Any]:
    """Concentrated knowledge: the fine-tuned teacher's top-k at the answer position of
    train (and val / test for c), a finished split kept (`knowledge_steps.extract_splits`)."""
    from ..knowledge.answer_topk import examples_hash, extract_topk
    from ..knowledge.manifest import ANSWER
    return extract_splits(ctx, {s: ctx.examples[s] for s in ("train", "val", "test")}, ANSWER,
                          examples_hash, extract_topk)


def _topk(ctx: Context, split: str):
    from ..knowledge.manifest import ANSWER
    return load_split_topk(ctx, split, ANSWER)


def stage_calibrate(ctx: Context) -> dict[str, Any]:
    """Trustworthy maximization: pick c (and the smoothing delta) by ECE on validation."""
    val, test = _topk(ctx, "val"), _topk(ctx, "test")
    result = search_calibration(ctx.cfg.calibration, val, test, _topk(ctx, "train").probs)
    write_json_atomic(ctx.path("calibration.json"), result)
    best = result["TS"]["best"]
    # what the transform does to the teacher on validation: mean top-1 before and after,
    # against its accuracy (a useful c moves the first towards the last)
    return {"c": best, "delta": result["LS"]["best"],
            "val_accuracy": float(np.mean(val.gold_rank == 0)),
            "val_top1_raw": float(val.probs.max(axis=1).mean()),
            "val_top1_first": float(calibrate.temperature_scale(val.probs, best, mode="first")
                                    .max(axis=1).mean()),
            "c_interior": bool(min(result["TS"]["grid"]) < best < max(result["TS"]["grid"]))}


def stage_distill(ctx: Context, method: str) -> dict[str, Any]:
    """Knowledge matching: a fresh student trained with KL to the recalibrated top-k
    (`knowledge_steps.distill_student`)."""
    from ..training.distill import distill
    topk = _topk(ctx, "train")

    def train(model, tok, targets, *args, **options):
        return distill(model, tok, ctx.examples["train"], topk.example_ids, topk.ids, targets,
                       *args, **options)
    return distill_student(ctx, method, topk, train)


def stage_evaluate(ctx: Context, method: str) -> dict[str, Any]:
    """Predictions of one model on val / test / test_ood, kept as Parquet until stored."""
    return evaluate_splits(ctx, method, ctx.path("eval", method))


def stage_posthoc(ctx: Context, method: str) -> dict[str, Any]:
    """Post-hoc temperature scaling of one trained model (`stage_base.run_posthoc`), T fitted
    on the validation split's answer-position logits."""
    from ..calibration.posthoc import answer_logits

    def collect(model, tok):
        return answer_logits(model, tok, ctx.examples["val"], batch_size=ctx.cfg.eval.batch_size,
                             max_length=train_config(ctx, method).max_length)
    return run_posthoc(ctx, method, collect, evaluate_splits)


def evaluate_splits(ctx: Context, method: str, out: Path, temperature: float | None = None,
                    model=None) -> dict[str, Any]:
    """Predictions and metrics of one model (logits divided by `temperature` if given) on
    val / test / test_ood, written to `out` as Parquet until the store stage."""
    from ..evaluation.evaluate import compute_metrics, predict
    model, tok = model or load_for(ctx, ctx.model_path(method))
    e = ctx.cfg.eval
    preds, mets = [], []
    for split in SPLITS:
        p = predict(model, tok, ctx.examples[split], k=e.topk, batch_size=e.batch_size,
                    max_length=train_config(ctx, method).max_length, temperature=temperature)
        m = compute_metrics(p, n_bins=e.n_bins, n_boot=e.n_boot, seed=ctx.cfg.seed)
        preds.append(p.assign(split=split))
        mets.append(m.assign(split=split))
    out.mkdir(parents=True, exist_ok=True)
    pd.concat(preds, ignore_index=True).to_parquet(out / "predictions.parquet")
    pd.concat(mets, ignore_index=True).to_parquet(out / "metrics.parquet")
    return {"dir": str(out)}


def stage_store(ctx: Context) -> dict[str, Any]:
    """Write every table of this pipeline to DuckDB in one transaction (`write_store`)."""
    def coverage() -> pd.DataFrame:
        from ..knowledge.coverage import coverage_table
        from ..knowledge.manifest import ANSWER, read_manifest
        return coverage_table(read_manifest(ctx.path("topk", "train"), ANSWER))

    return write_store(ctx, coverage, examples_frame(ctx))


def examples_frame(ctx: Context) -> pd.DataFrame:
    dataset = ctx.record("data")["dataset_hash"]
    return pd.DataFrame([{"dataset": dataset, "split": split, "example_id": ex.id,
                          "question": ex.question, "context": ex.context,
                          "labels": list(ex.labels), "choices": list(ex.choices),
                          "answer": ex.answer}
                         for split in SPLITS for ex in ctx.examples[split]])


MULTIPLE_CHOICE = Setting(
    name="multiple choice", data=stage_mc_data, models=stage_models, finetune=stage_finetune,
    topk=stage_topk, calibrate=stage_calibrate, distill=stage_distill,
    evaluate=stage_evaluate, posthoc=stage_posthoc, store=stage_store)
