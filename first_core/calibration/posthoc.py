"""Post-hoc temperature scaling of a trained model: the baseline every calibration expert asks
about first (Guo et al. 2017), evaluated beside FIRST.

One temperature T per model, fitted on the validation split by the NLL of the gold token
under softmax(z / T) over the **whole vocabulary**, z the model's logits at evaluation time
(not the stored top-k): at the answer position in the multiple-choice setting, at every
response token in the instruction setting (a multiple-choice answer is a response one token
long, so one fit serves both). The model is then evaluated again with its logits divided by T
(`evaluate.predict(temperature=T)`, `instruct_eval.token_confidences(temperature=T)`), with
every metric the other rows have. Dividing the logits by T never changes the arg-max, so
accuracy and AUROC-relevant ranks within a split are those of the model itself; only the
confidence level moves.

Beside the NLL T the fit records the ECE-minimising T on the same validation rows, over a
grid (`ECE_GRID` plus the NLL T), scored like every other ECE (top-1 confidence, uniform
bins): how far the likelihood's choice is from the calibration metric's.

The fit holds the validation logits (float32) in memory: at most `FIT_BYTES`. Past that it
keeps an evenly spaced subset of the positions (every 2nd, 4th, ... in order, halved each
time the budget fills), which the record says (`stride`): a multiple-choice validation split
of a real vocabulary fits whole (1,221 CSQA items x 49,152 tokens is 240 MB); a long
instruction split may not.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numba
import numpy as np
import torch

from ..metrics.binning import expected_calibration_error
from ..data.examples import DEFAULT_TEMPLATE, Example, PromptTemplate
from ..inference.forward import PromptIds, answer_reduced
from ..kernels.ece import fast_exp
from ..models.encoding import label_token_ids
from .temperature_fit import fit_temperature

FIT_BYTES = 1 << 30
ECE_GRID = np.round(np.geomspace(0.1, 10.0, 81), 6)  # T for the ECE-minimising T


class HeldLogits:
    """Logit rows and their gold token ids kept for the fit, within `budget` bytes: when full,
    every other kept row is dropped and only every `stride`-th position is kept from then
    on (an evenly spaced, deterministic subset of the split)."""

    def __init__(self, budget: int = FIT_BYTES):
        self.budget, self.stride, self.seen = budget, 1, 0
        self._rows: list[np.ndarray] = []
        self._gold: list[np.ndarray] = []
        self._held = 0

    def add(self, logits: torch.Tensor, gold: np.ndarray) -> None:
        """`logits` [n, V] (any float dtype, host) at n positions whose gold ids are `gold`."""
        index = np.arange(self.seen, self.seen + len(gold))
        self.seen += len(gold)
        take = index % self.stride == 0
        rows = logits.float().numpy()[take]
        self._rows.append(rows)
        self._gold.append(np.asarray(gold, dtype=np.int64)[take])
        self._held += rows.nbytes
        while self._held > self.budget and self.stride < self.seen:
            self._halve()

    def _halve(self) -> None:
        """Keep the positions on the doubled stride (their index within the split is known:
        every kept row sits at a multiple of the old stride, in order)."""
        rows, gold = self.rows(), self.gold()
        keep = (np.arange(len(gold)) * self.stride) % (2 * self.stride) == 0
        self.stride *= 2
        self._rows, self._gold = [rows[keep]], [gold[keep]]
        self._held = self._rows[0].nbytes

    def rows(self) -> np.ndarray:
        if len(self._rows) != 1:
            self._rows = [np.concatenate(self._rows)] if self._rows else [np.zeros((0, 0),
                                                                                  np.float32)]
        return self._rows[0]

    def gold(self) -> np.ndarray:
        if len(self._gold) != 1:
            self._gold = [np.concatenate(self._gold) if self._gold else np.zeros(0, np.int64)]
        return self._gold[0]


def answer_logits(model: torch.nn.Module, tokenizer, examples: Sequence[Example],
                  template: PromptTemplate = DEFAULT_TEMPLATE, batch_size: int = 64,
                  max_length: int = 512, budget: int = FIT_BYTES) -> HeldLogits:
    """The full-vocabulary logits at the answer position of `examples`, gold = the gold
    letter's token: the same forward, prompts and padding as `evaluate.predict`."""
    letter_id = label_token_ids(tokenizer, examples)
    gold = np.array([letter_id[ex.answer] for ex in examples], dtype=np.int64)
    held = HeldLogits(budget)

    def reduce(logits: torch.Tensor, _: np.ndarray):
        return (logits.float(),)

    prompts = PromptIds(tokenizer, examples, template, max_length)
    for start, (rows,) in answer_reduced(model, tokenizer, prompts, reduce, batch_size,
                                         desc="posthoc fit"):
        held.add(rows, gold[start:start + len(rows)])
    return held


def token_logits(model: torch.nn.Module, tokenizer, examples: Sequence, batch_size: int,
                 max_length: int, budget: int = FIT_BYTES) -> HeldLogits:
    """The full-vocabulary logits at every response token of instruction `examples`, gold =
    the response token (the same teacher-forced forward as extraction and evaluation)."""
    from ..knowledge.token_topk import iter_token_batches
    held = HeldLogits(budget)

    def reduce(logits: torch.Tensor, targets: torch.Tensor):
        return logits.float(), targets

    for _, (rows, targets), _ in iter_token_batches(model, tokenizer, examples, batch_size,
                                                    max_length, reduce):
        held.add(rows, targets.numpy())
    return held


@dataclass(frozen=True)
class PosthocFit:
    """What the post-hoc stage records (`fit.json`, the stage record, the store)."""

    temperature: float         # fitted on validation NLL: the one applied
    temperature_ece: float     # the ECE-minimising T on the same rows (grid + the NLL T)
    nll_before: float          # validation NLL at T = 1 and at T
    nll_after: float
    ece_before: float          # validation ECE (top-1, uniform bins) at T = 1 and at T
    ece_after: float
    n_positions: int           # positions fitted on
    stride: int                # 1: every validation position; k: every k-th
    iterations: int
    grid: list[float]          # the ECE curve over T on validation
    ece_grid: list[float]

    def to_dict(self) -> dict:
        return asdict(self)


def top1_confidence(rows: np.ndarray, temperature: float) -> np.ndarray:
    """max softmax(z / T) of each row: 1 / sum_j exp((z_j - max z) / T), in float64.

    Compiled (`_top1_confidence`) with the project's own exp (`kernels.ece.fast_exp`) rather
    than numpy's: numpy's float64 exp has an AVX-512 kernel of its own, so its last bits, and
    with them the stored ECE curve of `fit.json`, differed between CPUs with and without
    AVX-512 (scripts/cpu_repro_check.py found it)."""
    rows = np.ascontiguousarray(rows)
    out = np.empty(len(rows))
    _top1_confidence(rows, float(temperature), out, np.empty((_COLUMNS, _GROUP)))
    return out


_GROUP, _COLUMNS = 64, 512  # a block of rows x columns, transposed into a float64 buffer


@numba.njit(nogil=True, cache=True, fastmath={"contract"}, error_model="numpy")
def _top1_confidence(rows: np.ndarray, temperature: float, out: np.ndarray,
                     buf: np.ndarray) -> None:
    """`top1_confidence` into `out`. Blocks of `_GROUP` rows are copied column-major into
    `buf`, so the inner loop runs across rows, one vector lane per row, on contiguous memory
    (across rows in place, a row of a real vocabulary is 200 KB away from the next). Each
    row's terms are added in column order in its own lane: the bits do not depend on the
    vector width (AVX2 or AVX-512)."""
    n, m = rows.shape
    top = np.empty(_GROUP)
    total = np.empty(_GROUP)
    for lo in range(0, n, _GROUP):
        g = min(_GROUP, n - lo)
        for i in range(g):
            top[i] = rows[lo + i].max()
            total[i] = 0.0
        for c0 in range(0, m, _COLUMNS):
            c1 = min(m, c0 + _COLUMNS)
            for i in range(g):
                for j in range(c0, c1):
                    buf[j - c0, i] = rows[lo + i, j]
            for j in range(c1 - c0):
                for i in range(g):
                    total[i] += fast_exp((buf[j, i] - top[i]) / temperature)
        for i in range(g):
            out[lo + i] = 1.0 / total[i]


def fit_posthoc(held: HeldLogits, n_bins: int = 10) -> PosthocFit:
    """Fit T on the held validation logits by NLL (`temperature_fit`), and score the ECE of
    the top-1 confidence over `ECE_GRID` and the fitted T on the same rows."""
    rows, gold = held.rows(), held.gold()
    if not len(gold):
        raise ValueError("posthoc: the validation split has no positions to fit T on")
    fit = fit_temperature(rows, gold)
    correct = rows.argmax(axis=1) == gold  # the arg-max does not move with T

    def ece(t: float) -> float:
        return expected_calibration_error(top1_confidence(rows, t), correct,
                                          n_bins=n_bins)

    grid = np.union1d(ECE_GRID, [1.0, fit.temperature])  # 1.0: the model as it is
    curve = np.array([ece(float(t)) for t in grid])
    return PosthocFit(temperature=fit.temperature,
                      temperature_ece=float(grid[int(curve.argmin())]),
                      nll_before=fit.nll_before, nll_after=fit.nll_after,
                      ece_before=float(curve[grid == 1.0][0]),
                      ece_after=float(curve[grid == fit.temperature][0]),
                      n_positions=int(len(gold)), stride=held.stride,
                      iterations=fit.iterations, grid=grid.tolist(),
                      ece_grid=curve.tolist())
