"""The checks and the folder set-up that both top-k extractions share: one answer position
per example (`topk.extract_topk`) and every response token (`topk_tokens.extract_token_topk`).
Both import this module, and it imports neither: the stored probability dtypes (`DTYPES`) and
the check of k (`check_k`, evaluation's too) live here.

Both refuse bad settings before the teacher runs, and both write into `.NAME.partial` beside
the output folder (rank 0 creates it, every rank waits), so a killed run never leaves a store
that looks finished.
"""

from __future__ import annotations

import shutil
from collections.abc import Sized
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

from ..errors import ConfigError
from ..inference.forward import model_device

DTYPES = {"float16": (pa.float16(), np.float16), "float32": (pa.float32(), np.float32)}


def check_k(k: int, vocab_size: int, name: str = "k") -> None:
    """`k` must be a positive integer no larger than the vocabulary."""
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ConfigError(f"{name} must be an integer >= 1, got {k!r}")
    if k > vocab_size:
        raise ConfigError(f"{name}={k} is larger than the teacher's vocabulary "
                          f"({vocab_size} tokens)")


def check_extraction(*, k: int, coverage_k: int, dtype: str, shard_size: int,
                     examples: Sized, vocab: int) -> int:
    """Refuse bad extraction settings (`ConfigError`); return the coverage width, the
    top-`coverage_k` capped at the vocabulary size."""
    check_k(k, vocab)
    if isinstance(coverage_k, bool) or not isinstance(coverage_k, int) or coverage_k < k:
        raise ConfigError(f"coverage_k must be an integer >= k={k}, got {coverage_k!r}")
    if dtype not in DTYPES:
        raise ConfigError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    if shard_size < 1:
        raise ConfigError(f"shard_size must be >= 1, got {shard_size}")
    if not examples:
        raise ConfigError("examples: nothing to extract (empty list)")
    return min(coverage_k, vocab)


def start_partial(model: torch.nn.Module, out: Path):
    """(accelerate state, `.NAME.partial` folder), the folder fresh and every rank past it.

    cpu=True lets a CPU run under `accelerate launch --cpu` / torchrun use gloo; a GPU rank
    gets its own device (the loader put every copy on the default one).
    """
    from accelerate import PartialState

    tmp = out.with_name(f".{out.name}.partial")
    state = PartialState(cpu=model_device(model).type == "cpu")
    if state.num_processes > 1:
        model.to(state.device)
    if state.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    state.wait_for_everyone()
    return state, tmp
