"""Evaluation: predictions at the answer position under both confidence conventions, metrics.

`predict` runs a model over examples (through `inference.answer_reduced`, the same forward,
length-sorted batches and top-k as extraction: on the model's device when it is off the CPU,
so only `[B, k]` top-k values, the option letters' logits and the normaliser reach the host)
and returns one row per example with exactly the columns of the store's
`predictions` table (minus `run_id` and `split`, which the caller adds):

- `paper` convention: the top-1 token over the *whole vocabulary*; `confidence` is its
  probability, `correct` is true only if that token is the gold answer-letter token.
- `option` convention: the answer-letter probabilities renormalised over the example's own
  options; the prediction is the best option.

Both come from `metrics.conventions` (`paper_convention` / `option_convention`).

`compute_metrics` turns those rows into the store's `metrics` rows; every formula lives in
`first_core.metrics`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch

from ..metrics import selective as selective_metrics
from ..metrics.binning import maximum_calibration_error
from ..metrics.conventions import option_convention, paper_convention
from ..metrics.intervals import bootstrap_interval
from ..metrics.point_scores import accuracy, brier_score, negative_log_likelihood, trust_score
from ..store.schema import TABLES
from ..calibration.transforms import check_temperature
from ..data.examples import DEFAULT_TEMPLATE, Example, PromptTemplate
from ..inference.forward import PromptIds, answer_reduced, on_device_default, to_device, vocab_size
from ..inference.logit_reduce import top_logits
from ..models.encoding import label_token_ids
from ..models.presets import MAX_POSITIONS
from ..knowledge.extraction import check_k

PREDICTION_COLUMNS = tuple(c for c in TABLES["predictions"].columns
                           if c not in ("run_id", "split"))
METRIC_COLUMNS = tuple(c for c in TABLES["metrics"].columns if c not in ("run_id", "split"))


def _pad(rows: Sequence[Sequence], fill, dtype) -> tuple[np.ndarray, np.ndarray]:
    """Ragged rows -> (`[N, max_len]` matrix padded with `fill`, boolean mask of real cells)."""
    lengths = np.fromiter((len(r) for r in rows), dtype=np.int64, count=len(rows))
    flat = [np.asarray(r, dtype=dtype) for r in rows]
    return _place(lengths, np.concatenate(flat) if flat else np.empty(0, dtype), fill, dtype)


def _place(lengths: np.ndarray, flat: np.ndarray, fill, dtype) -> tuple[np.ndarray, np.ndarray]:
    width = int(lengths.max()) if len(lengths) else 0
    mask = np.arange(width) < lengths[:, None]
    out = np.full((len(lengths), width), fill, dtype=dtype)
    out[mask] = flat if width else []
    return out, mask


def _pad_column(column: pd.Series, fill, dtype) -> tuple[np.ndarray, np.ndarray]:
    """`_pad` of a list column; an Arrow-backed one (the importer's) without a list per row."""
    if not isinstance(column.dtype, pd.ArrowDtype):
        return _pad(column.tolist(), fill, dtype)
    import pyarrow as pa
    import pyarrow.compute as pc
    rows = pa.array(column)
    lengths = pc.fill_null(pc.list_value_length(rows), 0).to_numpy(zero_copy_only=False)
    flat = pc.list_flatten(rows).to_numpy(zero_copy_only=False).astype(dtype)
    return _place(lengths.astype(np.int64), flat, fill, dtype)


def _token_texts(tokenizer, ids: np.ndarray) -> dict[int, str]:
    """Decoded text of each distinct id in `ids` (one tokenizer call for the whole array)."""
    uniq = np.unique(ids).tolist()
    return dict(zip(uniq, tokenizer.batch_decode([[i] for i in uniq])))


def predict(model: torch.nn.Module, tokenizer, examples: Sequence[Example],
            template: PromptTemplate = DEFAULT_TEMPLATE, k: int = 5, batch_size: int = 64,
            max_length: int = MAX_POSITIONS, progress: bool | None = None,
            on_device: bool | None = None, temperature: float | None = None) -> pd.DataFrame:
    """One row per example with the store's `predictions` columns (see the module doc).

    Examples may have different numbers of options (BoolQ's 2 next to CSQA's 5). `on_device`:
    where the top-k is taken (`inference.on_device_default`); the predictions are the same.
    `temperature`: the logits are divided by it in float32 before anything is taken from
    them (post-hoc temperature scaling, `first_core.calibration.posthoc`); 1.0 gives the same
    bits as None.
    """
    if temperature is not None:
        temperature = check_temperature(temperature)
    check_k(k, vocab_size(model))
    if not examples:
        raise ValueError("examples: nothing to evaluate (empty list)")
    letter_id = label_token_ids(tokenizer, examples)
    id_letter = {i: lab for lab, i in letter_id.items()}
    labels = [list(ex.labels) for ex in examples]
    opt_ids, opt_mask = _pad([[letter_id[lab] for lab in row] for row in labels], 0, np.int64)
    gold_col = np.array([ex.labels.index(ex.answer) for ex in examples])
    gold_id = opt_ids[np.arange(len(examples)), gold_col]

    n, width = opt_ids.shape
    top_i, top_p = np.zeros((n, k), np.int64), np.zeros((n, k))
    opt_p = np.zeros((n, width))
    on_device = on_device_default(model, on_device)

    def reduce(logits: torch.Tensor, index: np.ndarray):
        if not on_device:
            logits = logits.float().cpu()
        logits = divide_logits(logits, temperature)
        rows = to_device(torch.from_numpy(opt_ids[index]), logits.device)  # no GPU stall
        return (*top_logits(logits, k, on_device), logits.gather(1, rows).float())

    prompts = PromptIds(tokenizer, examples, template, max_length)
    for start, (top, ids, lse, opt) in answer_reduced(model, tokenizer, prompts, reduce,
                                                       batch_size, progress, desc="predict"):
        rows, lse = slice(start, start + len(top)), lse.double()
        # exp(logit - logsumexp) of the kept tokens only: no [B, V] probability tensor
        top_p[rows], top_i[rows] = torch.exp(top.double() - lse).numpy(), ids.numpy()
        opt_p[rows] = torch.exp(opt.double() - lse).numpy()
    opt_p *= opt_mask  # padding columns hold no option

    paper = paper_convention(top_p, top_i, gold_id)
    option = option_convention(opt_p, gold_col)
    texts = _token_texts(tokenizer, top_i)
    frame = pd.DataFrame({
        "example_id": [ex.id for ex in examples],
        "gold": [ex.answer for ex in examples],
        "pred": [id_letter.get(i, texts[i]) for i in paper.pred.tolist()],
        "confidence": paper.confidence,
        "correct": paper.correct,
        "pred_option": [row[c] for row, c in zip(labels, option.pred.tolist())],
        "confidence_option": option.confidence,
        "correct_option": option.correct,
        "option_labels": labels,
        "option_probs": [row[:len(lab)] for row, lab in zip(opt_p.tolist(), labels)],
        "topk_ids": top_i.tolist(),
        "topk_probs": top_p.tolist(),
        "topk_tokens": [[texts[i] for i in row] for row in top_i.tolist()],
    })
    return frame[list(PREDICTION_COLUMNS)]


def option_distribution(pred: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """(`[N, max_options]` option probabilities renormalised per row, zero-padded; gold column).

    Padding with zeros leaves Brier and NLL unchanged: a padded class has p = 0 and y = 0.
    """
    probs, _ = _pad_column(pred["option_probs"], 0.0, np.float64)
    probs = probs / probs.sum(axis=1, keepdims=True)
    labels, mask = _pad_column(pred["option_labels"], "", object)
    gold = ((labels == pred["gold"].to_numpy(dtype=object)[:, None]) & mask).argmax(axis=1)
    return probs, gold


def divide_logits(logits: torch.Tensor, temperature: float | None) -> torch.Tensor:
    """Post-hoc temperature scaling where the logits are: logits / T in float32 (`None`: the
    logits as they are, so T = 1.0 and None give the same bits downstream). Shared by the
    answer-position and the per-token evaluation."""
    return logits if temperature is None else logits.float() / temperature


def confidence_metrics(confidence: np.ndarray, correct: np.ndarray, n_bins: int = 10,
                       n_boot: int = 1000, seed: int = 0
                       ) -> dict[str, tuple[float, float | None, float | None]]:
    """What one convention's confidences score, as {metric: (value, ci_low, ci_high)}:
    accuracy, mean confidence, ECE, MCE, trust, AUROC and AURC (ECE, AUROC and AURC with
    bootstrap intervals on the same resamples; AUROC NaN where every answer is right or
    every one is wrong). The one computation behind both settings' metric rows: the answer
    position's (`compute_metrics`) and every response token's (`instruct_eval`)."""
    acc = accuracy(correct)
    ece, low, high = bootstrap_interval("ece", confidence, correct, n_bins=n_bins,
                                        n_boot=n_boot, seed=seed)
    return {"accuracy": (acc, None, None), "confidence": (float(confidence.mean()), None, None),
            "ece": (ece, low, high),
            "mce": (maximum_calibration_error(confidence, correct, n_bins=n_bins),
                    None, None),
            "trust": (trust_score(acc, ece), None, None),
            **selective_metrics.bootstrap_intervals(confidence, correct, n_boot=n_boot,
                                                    seed=seed)}


def metric_rows(values: Sequence[tuple[str, dict[str, tuple]]]) -> pd.DataFrame:
    """The store's `metrics` rows (without `run_id` / `split`) of [(convention, values)]; a
    missing interval end is NaN (NULL in the store)."""
    return pd.DataFrame([(convention, name, *(float("nan") if v is None else float(v)
                                              for v in vals))
                         for convention, by_name in values for name, vals in by_name.items()],
                        columns=list(METRIC_COLUMNS))


def compute_metrics(pred: pd.DataFrame, n_bins: int = 10, n_boot: int = 1000,
                    seed: int = 0, conventions: Sequence[str] = ("paper", "option")
                    ) -> pd.DataFrame:
    """The store's `metrics` rows (without `run_id` / `split`) for both conventions:
    `confidence_metrics` of each, and for `option` also Brier and NLL over the renormalised
    option distribution.
    """
    out = []
    for convention, conf_col, correct_col in (("paper", "confidence", "correct"),
                                              ("option", "confidence_option", "correct_option")):
        if convention not in conventions:
            continue
        conf = pred[conf_col].to_numpy(dtype=np.float64)
        correct = pred[correct_col].to_numpy(dtype=bool)
        values = confidence_metrics(conf, correct, n_bins, n_boot, seed)
        if convention == "option":
            probs, gold = option_distribution(pred)
            values["brier"] = (brier_score(probs, gold), None, None)
            values["nll"] = (negative_log_likelihood(probs, gold), None, None)
        out.append((convention, values))
    return metric_rows(out)
