"""The instruction-tuning setting as pipeline stages (`[data] kind = "instruct"`).

The paper's out-of-domain setting: teacher and students are tuned on instruction data, the
teacher's top-k is kept at every response token, and the students are tested on a
multiple-choice task they never saw. Stages (same names, resume and `--force` as the
multiple-choice pipeline; `runner.setting_for` picks `INSTRUCTION`):

- data: the embedded instruction task (or your Alpaca / prompt-response files) and the
  multiple-choice data of `[data]`, every file checked before anything trains.
- models: presets with a tokenizer over the instruction training text *and* the
  multiple-choice training text (vocabulary only: the stand-in for a pretrained tokenizer,
  which covers both); no model ever trains on multiple-choice text.
- teacher_ft, student_ft: SFT on the response tokens (`sft.finetune_responses`).
- topk: top-k at every response token of train / val / test (`token_topk`); a split whose
  finished store matches is kept (resume after a kill).
- calibrate: c and delta by ECE over **every response token of the instruction validation
  split**: that is the distribution the students are trained on (the targets are transformed
  at every response token), and a multiple-choice validation set would be the OOD task,
  which the method must not see.
- student_distill, first_ls, first_ts: the KL at every response token (`distill.distill_tokens`).
- eval_*: `val` / `test`: token-level top-1 accuracy, ECE, MCE and trust over the
  instruction splits' response tokens; `test_ood`: the multiple-choice split
  `instruct.mc_split` of `[data]` exactly as in the MC setting (`evaluate.predict`), with
  the prompt `instruct.mc_prompt` in the instruction layout.
- store: runs, metrics, MC predictions, the temperature search, the coverage over all
  response tokens of train, the MC examples.

So in Table 1 of such a run, "ID" is the instruction test split per token and "OOD" is the
multiple-choice task.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from ..data import examples as data
from ..config.settings import RunConfig
from ..errors import FirstError
from ..atomic_files import write_json_atomic
from ..data.instruct_data import (ALPACA_INPUT, ALPACA_NO_INPUT, InstructExample, InstructTemplate,
                                  check_instruct_file, load_instruct)
from .knowledge_steps import distill_student, extract_splits, load_split_topk
from .stage_base import (Context, Setting, build_models, dataset_hash, finetune_stage, load_for,
                         run_posthoc, search_calibration, stage_mc_data, train_config,
                         write_store)

INSTRUCT_SPLITS = ("train", "val", "test")


def instruct_template(cfg: RunConfig) -> InstructTemplate:
    i = cfg.instruct
    return InstructTemplate(with_input=i.with_input or ALPACA_INPUT,
                            no_input=i.no_input or ALPACA_NO_INPUT)


def mc_template(cfg: RunConfig) -> data.PromptTemplate:
    """The multiple-choice prompt in the instruction layout (`instruct.mc_prompt`)."""
    prompt = cfg.instruct.mc_prompt or instruct_template(cfg).no_input.replace(
        "{instruction}", "{context}{question}\n{options}")
    return data.PromptTemplate(prompt=prompt)


def instruct_examples(ctx: Context) -> dict[str, list[InstructExample]]:
    """The instruction splits, loaded once per process (kept in `ctx.loaded`)."""
    cached = ctx.loaded.get("instruct")
    if cached is None:
        files = ctx.record("data")["instruct_files"]
        tpl = instruct_template(ctx.cfg)
        cached = {s: load_instruct(p, ctx.cfg.instruct.fmt, tpl) for s, p in files.items()}
        if ctx.cfg.data.max_train:
            cached["train"] = cached["train"][: ctx.cfg.data.max_train]
        ctx.loaded["instruct"] = cached
    return cached


# ---------------------------------------------------------------- stages

def stage_data(ctx: Context) -> dict[str, Any]:
    """The MC data as in the MC setting, plus the instruction files, all checked first."""
    i = ctx.cfg.instruct
    root = Path(i.dir)
    if i.embedded:
        from ..data.instruct_tasks import write_instruct_task
        written = write_instruct_task(root, seed=ctx.cfg.data.seed, n_train=i.n_train,
                                      n_val=i.n_val, n_test=i.n_test)
        files = {s: str(p) for s, p in written.items()}
    else:
        files = {s: str(root / getattr(i, s)) for s in INSTRUCT_SPLITS}
    tpl = instruct_template(ctx.cfg)
    problems = [p for f in files.values() for p in check_instruct_file(f, i.fmt, tpl)]
    if problems:
        shown = "\n".join(str(p) for p in problems[:20])
        more = f"\n... and {len(problems) - 20} more" if len(problems) > 20 else ""
        raise FirstError(f"the instruction data has {len(problems)} problem(s):\n{shown}{more}")
    mc = stage_mc_data(ctx)
    counts = {s: len(load_instruct(f, i.fmt, tpl)) for s, f in files.items()}
    both = {**mc["files"], **{f"instruct_{s}": f for s, f in files.items()}}
    return {**mc, "instruct_files": files, "instruct_counts": counts,
            "dataset_hash": dataset_hash(both)}


def stage_models(ctx: Context) -> dict[str, Any]:
    """As in the MC setting (`stage_base.build_models`), the tokenizer over both texts."""
    tpl = mc_template(ctx.cfg)
    texts = ([ex.prompt + " " + ex.response for ex in instruct_examples(ctx)["train"]]
             + [data.format_prompt(ex, tpl) + data.answer_text(ex.answer)
                for ex in ctx.examples["train"]])
    return build_models(ctx, texts)


def stage_finetune(ctx: Context, method: str) -> dict[str, Any]:
    """SFT on the response tokens: the teacher, and the 'fine-tuned student' baseline."""
    from ..training.sft import finetune_responses
    return finetune_stage(ctx, method, finetune_responses, instruct_examples(ctx)["train"])


def stage_topk(ctx: Context) -> dict[str, Any]:
    """The teacher's top-k at every response token of train / val / test, a finished split
    kept (`knowledge_steps.extract_splits`)."""
    from ..knowledge.manifest import TOKENS
    from ..knowledge.token_topk import extract_token_topk, instruct_examples_hash
    examples = instruct_examples(ctx)
    return extract_splits(ctx, {s: examples[s] for s in INSTRUCT_SPLITS}, TOKENS,
                          instruct_examples_hash, extract_token_topk)


def stage_calibrate(ctx: Context) -> dict[str, Any]:
    """c (by `[calibration] strategy`, as in the MC setting) and delta over every response
    token of the validation split (module doc)."""
    val, test = _topk(ctx, "val"), _topk(ctx, "test")
    result = search_calibration(ctx.cfg.calibration, val, test,
                                _topk(ctx, "train").probs)
    for res in result.values():
        res.update(positions="every response token of the validation split",
                   n_positions=int(len(val.probs)))
    write_json_atomic(ctx.path("calibration.json"), result)
    return {"c": result["TS"]["best"], "delta": result["LS"]["best"],
            "n_val_tokens": int(len(val.probs))}


def stage_distill(ctx: Context, method: str) -> dict[str, Any]:
    """The KL at every response token (`knowledge_steps.distill_student`)."""
    from ..training.distill import distill_tokens
    topk = _topk(ctx, "train")

    def train(model, tok, targets, *args, **options):
        return distill_tokens(model, tok, instruct_examples(ctx)["train"], topk.example_ids,
                              topk.gold_ids, topk.ids, targets, *args, **options)
    return {**distill_student(ctx, method, topk, train), "n_train_tokens": int(len(topk.ids))}


def _topk(ctx: Context, split: str):
    from ..knowledge.manifest import TOKENS
    return load_split_topk(ctx, split, TOKENS)


def stage_evaluate(ctx: Context, method: str) -> dict[str, Any]:
    """Token metrics on the instruction val/test, MC predictions + metrics on the OOD split."""
    return evaluate_splits(ctx, method, ctx.path("eval", method))


def stage_posthoc(ctx: Context, method: str) -> dict[str, Any]:
    """Post-hoc temperature scaling of one trained model (`stage_base.run_posthoc`), T fitted
    at every response token of the instruction validation split: the distribution the model
    was tuned on (the OOD task stays unseen, as for FIRST's c)."""
    from ..calibration.posthoc import token_logits

    def collect(model, tok):
        return token_logits(model, tok, instruct_examples(ctx)["val"],
                            ctx.cfg.eval.batch_size, train_config(ctx, method).max_length)
    return run_posthoc(ctx, method, collect, evaluate_splits)


def evaluate_splits(ctx: Context, method: str, out: Path, temperature: float | None = None,
                    model=None) -> dict[str, Any]:
    """Token metrics on the instruction val/test and MC predictions + metrics on the OOD
    split of one model (logits divided by `temperature` if given), written to `out`."""
    from ..evaluation.evaluate import compute_metrics, predict
    from ..evaluation.instruct_eval import token_confidences, token_metrics
    model, tok = model or load_for(ctx, ctx.model_path(method))
    e = ctx.cfg.eval
    max_length = train_config(ctx, method).max_length
    mets, n_tokens = [], {}
    for split in ("val", "test"):
        conf, correct = token_confidences(model, tok, instruct_examples(ctx)[split],
                                          e.batch_size, max_length, temperature=temperature)
        n_tokens[split] = int(len(conf))
        mets.append(token_metrics(conf, correct, e.n_bins, e.n_boot, ctx.cfg.seed)
                    .assign(split=split))
    mc = ctx.examples[ctx.cfg.instruct.mc_split]
    pred = predict(model, tok, mc, template=mc_template(ctx.cfg), k=e.topk,
                   batch_size=e.batch_size, max_length=max_length, temperature=temperature)
    mets.append(compute_metrics(pred, n_bins=e.n_bins, n_boot=e.n_boot, seed=ctx.cfg.seed)
                .assign(split="test_ood"))
    out.mkdir(parents=True, exist_ok=True)
    pred.assign(split="test_ood").to_parquet(out / "predictions.parquet")
    pd.concat(mets, ignore_index=True).to_parquet(out / "metrics.parquet")
    return {"dir": str(out), "n_tokens": n_tokens, "n_mc": len(mc)}


def stage_store(ctx: Context) -> dict[str, Any]:
    """As in the MC setting (`stage_base.write_store`, one transaction), with the coverage over
    all response tokens of train and the multiple-choice OOD examples."""
    from ..knowledge.coverage import coverage_table
    from ..knowledge.manifest import TOKENS, read_manifest
    dataset = ctx.record("data")["dataset_hash"]
    mc = ctx.examples[ctx.cfg.instruct.mc_split]
    examples = pd.DataFrame([{
        "dataset": dataset, "split": "test_ood", "example_id": ex.id,
        "question": ex.question, "context": ex.context, "labels": list(ex.labels),
        "choices": list(ex.choices), "answer": ex.answer} for ex in mc])
    return write_store(
        ctx, lambda: coverage_table(read_manifest(ctx.path("topk", "train"), TOKENS)),
        examples)


INSTRUCTION = Setting(
    name="instruction tuning", data=stage_data, models=stage_models, finetune=stage_finetune,
    topk=stage_topk, calibrate=stage_calibrate, distill=stage_distill,
    evaluate=stage_evaluate, posthoc=stage_posthoc, store=stage_store)
