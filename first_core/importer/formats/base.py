"""What every converter in `importers` hands to `importer.validate_cells`: another tool's
file as runs of the importer's own per-option layout (`p_A, p_B, ..., gold, example_id,
split, question`), so that one validation and one store path serve every format."""

from __future__ import annotations

import string
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ..table_read import Cells

LETTERS = string.ascii_uppercase  # option labels; `importer.MAX_OPTIONS` is 26 as well


@dataclass(frozen=True)
class ConvertedRun:
    """One run of a converted file.

    `path` is the file that problems are reported against; `task` names the run (None: the
    user's --name does); `variant` is appended to the name (`acc_norm`); `choices` holds each
    row's option texts; `expected_accuracy` is the tool's own accuracy for the run and where
    it is written, checked against what is stored."""

    path: Path
    cells: Cells
    task: str | None = None
    variant: str | None = None
    model: str | None = None
    choices: list[list[str]] | None = None
    config: dict = field(default_factory=dict)
    expected_accuracy: tuple[float, str] | None = None


@dataclass(frozen=True)
class Converted:
    """Every run of one file or folder, and notes for the user (skipped variants, options
    not found, older runs left out)."""

    runs: list[ConvertedRun]
    notes: list[str] = field(default_factory=list)


def softmax_rows(scores: np.ndarray) -> np.ndarray:
    """Row-wise softmax of [N, K] log-scores (−inf allowed for absent options), in float64:
    the probability over the options that the scores' model gives."""
    top = np.max(scores, axis=1, keepdims=True)
    e = np.exp(scores - top)
    return e / e.sum(axis=1, keepdims=True)


def option_frame(probs: np.ndarray, gold: np.ndarray, example_id: list[str],
                 question: list[str] | None, lines: np.ndarray) -> Cells:
    """The importer's per-option layout from [N, K] probabilities and gold indices."""
    frame = pd.DataFrame(probs, columns=[f"p_{LETTERS[j]}" for j in range(probs.shape[1])])
    frame.insert(0, "example_id", pd.array(example_id, dtype="string"))
    frame["gold"] = pd.array(np.asarray(list(LETTERS))[gold], dtype="string")
    if question is not None:
        frame["question"] = pd.array(question, dtype="string")
    found = np.asarray(lines, dtype=np.int64)
    return Cells(frame, lambda: found)
