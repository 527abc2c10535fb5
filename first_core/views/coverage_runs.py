"""The Top-k coverage page's runs: which one it opens on, and what the page says it shows.

The page opens on the run with the largest vocabulary: the paper's claim (top-5 keeps most of
the probability of a 32k-50k-token vocabulary) is only visible on a real one, and the demo's
fine-tuned teacher has 47 tokens. The sentences here hold fixed text and numbers only, so
they are safe to render as Markdown; the store's own texts (model, pipeline) are for
`st.text`, never Markdown.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import pandas as pd

from ..store.schema import PRETRAINED_METHOD

SMALL_VOCAB = 1000  # below this a top-5 keeps nearly everything whatever the model


def _count(value: object) -> int | None:
    """A stored count as an int, None when missing (NULL, NaN) or not a finite number."""
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return int(number) if math.isfinite(number) else None


def default_run(coverage: pd.DataFrame) -> str:
    """The run id with the largest vocabulary (the first stored among equals; a run without a
    stored vocabulary size counts as smallest); `coverage` is `store.load_topk_coverage`."""
    if coverage.empty:
        raise ValueError("coverage: no rows")
    order = list(dict.fromkeys(coverage["run_id"]))
    vocab = coverage.groupby("run_id", sort=False)["vocab_size"].max()
    sizes = {r: _count(vocab.get(r)) or 0 for r in order}
    return max(order, key=lambda r: sizes[r])  # max keeps the first of equals


def describe_run(method: str | None, row: Mapping[str, object]) -> str:
    """One sentence on what a coverage run's curve is of, from its method and one of its
    coverage rows (`n_positions`, `vocab_size`): fixed text and numbers only."""
    n, vocab = _count(row.get("n_positions")), _count(row.get("vocab_size"))
    positions = f"{n:,} " if n is not None else ""
    tokens = f"its {vocab:,}-token vocabulary" if vocab is not None else "its vocabulary"
    if method == PRETRAINED_METHOD:
        return (f"A pretrained model read zero-shot, **not the fine-tuned teacher**: its own "
                f"next-token probabilities at the answer position of {positions}validation "
                f"prompts, over {tokens}. The paper's claim (the top-5 keeps most of the "
                "probability of a 32k-50k-token vocabulary) is about vocabularies like this.")
    if method == "teacher_ft":
        text = (f"The pipeline's fine-tuned teacher at the answer position of its {positions}"
                f"training prompts, over {tokens}.")
        if vocab is not None and vocab < SMALL_VOCAB:
            text += (f" A vocabulary of {vocab:,} tokens keeps nearly all of its probability in "
                     "any top-5; pick a pretrained run (a real vocabulary) for the paper's "
                     "point.")
        return text
    return f"This run's top-k coverage at {positions}answer positions, over {tokens}."
