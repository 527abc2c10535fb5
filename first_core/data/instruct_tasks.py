"""The embedded instruction task: the multiple-choice world (`tasks.py`) in other forms.

Same world as the "noisy max" multiple-choice task: readings are integers in 1..20 and each
reading stands for a true value = reading + N(0, SIGMA) noise (the same `tasks.SIGMA`), which
the response is about; so near-ties are genuinely uncertain here too. Three instruction forms,
all with multi-token responses, none of them the multiple-choice layout:

- **sort**: "sort these numbers from smallest to largest ." + 3-5 readings ->
  the readings in the order of their true values ("3 7 9 12").
- **largest**: "name the largest reading and by how much it leads ." + 3-4 lettered readings
  ("A 5 , B 12 , C 3") -> "B 12 , ahead by 3 ." (the winner by true value, its reading, and
  the rounded true lead over the runner-up).
- **compare**: "compare the two readings : which is larger ?" + two lettered readings ->
  "B is larger than A .".

The letters are upper case `A`-`D`, the multiple-choice answer tokens, so a model tuned on
these instructions has learnt "name the letter of the largest" in another phrasing and
layout ("A 5 , B 12" in the input, the letter as the response's first token). Asked the
multiple-choice question ("which number is the largest ?" with options "A. 5" lines and a
one-letter answer), it is out of domain the way CommonsenseQA is for an Alpaca-tuned model:
same kind of knowledge, unseen task format.

Files are Alpaca JSONL (`instruction`, `input`, `output`, `id`) so the embedded task goes
through the loader path of real Alpaca data. Each split draws from its own random stream
(seed, split); the same arguments give identical bytes.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..atomic_files import write_text_atomic
from .tasks import HIGH, LETTERS, LOW, SIGMA

INSTRUCT_SPLITS = ("train", "val", "test")
FORMS = ("sort", "largest", "compare")
INSTRUCTIONS = {
    "sort": ("sort these numbers from smallest to largest .",
             "put these readings in order , smallest first ."),
    "largest": ("name the largest reading and by how much it leads .",
                "which reading is the biggest , and by how much ?"),
    "compare": ("compare the two readings : which is larger ?",
                "of these two readings , which one is higher ?"),
}


def _distinct(rng: np.random.Generator, n: int, width: int) -> np.ndarray:
    """n rows of `width` distinct readings in LOW..HIGH (vectorised)."""
    pool = np.argsort(rng.random((n, HIGH - LOW + 1)), axis=1)[:, :width]
    return pool + LOW


def _item(form: str, values: np.ndarray, true: np.ndarray, phrasing: int) -> dict[str, str]:
    """One record (python over one item's 2-5 numbers; the draws themselves are vectorised)."""
    instruction = INSTRUCTIONS[form][phrasing]
    if form == "sort":
        order = np.argsort(true, kind="stable")
        return {"instruction": instruction, "input": " , ".join(map(str, values.tolist())),
                "output": " ".join(str(int(values[i])) for i in order)}
    labels = LETTERS[:len(values)]
    shown = " , ".join(f"{lab} {int(v)}" for lab, v in zip(labels, values.tolist()))
    ranked = np.argsort(-true, kind="stable")
    win, second = int(ranked[0]), int(ranked[1])
    if form == "largest":
        lead = int(np.rint(true[win] - true[second]))
        return {"instruction": instruction, "input": shown,
                "output": f"{labels[win]} {int(values[win])} , ahead by {lead} ."}
    return {"instruction": instruction, "input": shown,
            "output": f"{labels[win]} is larger than {labels[second]} ."}


def _split_text(split: str, rng: np.random.Generator, n: int) -> str:
    form = rng.integers(len(FORMS), size=n)
    width = np.select([form == 0, form == 1], [rng.integers(3, 6, size=n),
                                               rng.integers(3, 5, size=n)], 2)
    phrasing = rng.integers(2, size=n)
    values = _distinct(rng, n, 5)
    noise = rng.normal(0.0, SIGMA, size=(n, 5))
    lines = []
    for i in range(n):
        w = int(width[i])
        rec = _item(FORMS[form[i]], values[i, :w], values[i, :w] + noise[i, :w],
                    int(phrasing[i]))
        lines.append(json.dumps({"id": f"{split}-{i:05d}", **rec}))
    return "\n".join(lines) + "\n"


def instruct_files(out_dir: str | Path) -> dict[str, Path]:
    """The paths `write_instruct_task` writes: {split: out_dir/instruct_<split>.jsonl}."""
    return {s: Path(out_dir) / f"instruct_{s}.jsonl" for s in INSTRUCT_SPLITS}


def write_instruct_task(out_dir: str | Path, seed: int = 0, n_train: int = 4000,
                        n_val: int = 500, n_test: int = 500) -> dict[str, Path]:
    """Write the three splits (Alpaca JSONL); the same arguments give identical bytes."""
    sizes = dict(zip(INSTRUCT_SPLITS, (n_train, n_val, n_test)))
    for split, n in sizes.items():
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
            raise ValueError(f"instruct.n_{split}: expected a positive integer, got {n!r}")
    paths = instruct_files(out_dir)
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    for index, split in enumerate(INSTRUCT_SPLITS):
        # streams 100+ keep clear of tasks.py's (seed, 0..3), so both tasks can share a seed
        rng = np.random.default_rng([int(seed), 100 + index])
        write_text_atomic(paths[split], _split_text(split, rng, sizes[split]))
    return paths
