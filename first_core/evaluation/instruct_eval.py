"""Token-level evaluation of the instruction setting: top-1 accuracy and ECE over responses.

At every response token (teacher-forced, the same forward as extraction and training) the
confidence is the model's top-1 probability over the whole vocabulary and the prediction is
correct when that top-1 token is the response token: the `paper` convention of the answer
position, applied to each token. Metrics come from `first_core.metrics` and are the store's
`metrics` rows (convention `paper`; there are no options, so no `option` rows). The
bootstrap interval resamples tokens; tokens of one response are correlated, so it is
narrower than an interval over responses would be (stated, not corrected).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch

from ..calibration.transforms import check_temperature
from .evaluate import confidence_metrics, divide_logits, metric_rows
from ..inference.forward import on_device_default
from ..data.instruct_data import InstructExample
from ..inference.logit_reduce import top_logits
from ..knowledge.token_topk import iter_token_batches


def token_confidences(model: torch.nn.Module, tokenizer, examples: Sequence[InstructExample],
                      batch_size: int, max_length: int, on_device: bool | None = None,
                      temperature: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(confidence `[N]`, correct `[N]`) at the N response tokens of `examples`: the top-1
    probability exp(logit - logsumexp), taken where the logits are (`on_device`, as in
    extraction), and whether the top-1 token is the response token. `temperature`: the
    logits are divided by it in float32 first (post-hoc scaling; 1.0 gives None's bits)."""
    on_device = on_device_default(model, on_device)
    if temperature is not None:
        temperature = check_temperature(temperature)

    def reduce(logits: torch.Tensor, targets: torch.Tensor):
        logits = divide_logits(logits, temperature)
        top, ids, lse = top_logits(logits, 1, on_device)
        return top, lse, ids[:, 0] == targets.to(ids.device)

    conf, correct = [], []
    for _, (top, lse, hit), _ in iter_token_batches(model, tokenizer, examples, batch_size,
                                                    max_length, reduce):
        conf.append(torch.exp(top[:, 0].double() - lse[:, 0].double()).numpy())
        correct.append(hit.numpy())
    return np.concatenate(conf), np.concatenate(correct)


def token_metrics(confidence: np.ndarray, correct: np.ndarray, n_bins: int = 10,
                  n_boot: int = 1000, seed: int = 0) -> pd.DataFrame:
    """Metric rows (without run_id / split) over response tokens: `confidence_metrics`, the
    same rows `evaluate.compute_metrics` gives for the `paper` convention."""
    return metric_rows([("paper", confidence_metrics(confidence, correct, n_bins, n_boot,
                                                     seed))])
