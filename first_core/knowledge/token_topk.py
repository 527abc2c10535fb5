"""Concentrated knowledge at every response token: the teacher's top-k per token, as a store
of the token layout (`manifest.TOKENS`, long format, one row per response token).

The instruction setting's counterpart of `answer_topk.extract_topk` (one answer position per
example): the teacher is run teacher-forced over `prompt + response + eos`
(`models.encoding.encode_responses`), and at every response token the top-k ids (int32) and
their *raw* full-vocabulary softmax probabilities (float16 / float32, not renormalised) are
kept, with the top-`coverage_k` coverage statistics over all response tokens. The row's
distribution is the teacher's next-token distribution that predicts the row's `token_id`; why
long format, in docs/DESIGN.md. Everything around the loop (ranks, shards, coverage, manifest, the
`.NAME.partial` folder) is `extraction.run_extraction`, shared with the answer layout.

Streaming: examples are tokenised and run one window of batches at a time (batched by length,
put back in order, `iter_token_batches`, shared with evaluation), the top-k is taken where the
logits are (on the GPU for a model there: only `[tokens, coverage_k]` values cross to the
host) and rows are written as soon as `shard_size` of them are buffered, so peak memory is one
batch's logits plus one window's top-k rows plus one shard, whatever the size of the data
set. Resume is per store: the pipeline skips a split whose finished store matches
(`manifest.store_matches`).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..data.instruct_data import InstructExample
from ..errors import ConfigError
from ..inference.forward import (SORT_WINDOW, batch_order, in_order_index, model_device,
                                 on_device_default, prefetched, to_device, to_host, vocab_size)
from ..inference.logit_reduce import top_logits
from ..models.encoding import encode_responses
from ..training.targets import TargetCollator, logits_mode, target_logits
from .extraction import Rows, check_extraction, provenance, run_extraction
from .manifest import TOKENS, Manifest


def instruct_examples_hash(examples: Sequence[InstructExample]) -> str:
    """Content hash of the examples (their prompts already carry the template)."""
    rows = [[e.id, e.prompt, e.response] for e in examples]
    return hashlib.sha256(json.dumps(rows).encode()).hexdigest()[:16]


def iter_token_batches(model: torch.nn.Module, tokenizer, examples: Sequence[InstructExample],
                       batch_size: int, max_length: int,
                       reduce: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, ...]],
                       sort: bool = True
                       ) -> Iterator[tuple[Sequence[InstructExample], tuple[torch.Tensor, ...],
                                           np.ndarray]]:
    """Yield `(examples, outputs, tokens per example)` per window of examples, in order:
    `reduce(logits, targets)` of each teacher-forced batch (logits `[N, V]` at its N
    response tokens and the tokens they predict, on the model's device, the logits in its
    dtype) on the host, rows example by example, position by position. Shared with
    evaluation.

    With `sort` a window holds `inference.SORT_WINDOW` batches, batched by sequence length
    (less padding); the rows come back in example order either way. Only `reduce`'s outputs
    leave the device (`inference.to_host`), and on an accelerator the next window runs on a
    background thread while the caller works on this one (writing shards, statistics), so
    the GPU does not wait for the caller."""
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    model.eval()
    device = model_device(model)
    collate = TargetCollator(tokenizer.pad_token_id)
    keep_only = logits_mode(model)
    window = batch_size * (SORT_WINDOW if sort else 1)

    def run(enc, batches):
        for rows in batches:
            batch = collate([{"input_ids": enc.input_ids[i], "target_start":
                              enc.target_start[i], "index": int(i)} for i in rows])
            batch = {key: to_device(v, device) for key, v in batch.items()}
            with torch.inference_mode():
                logits, targets = target_logits(model, batch, keep_only)
                outputs = reduce(logits, targets)
            del logits, targets  # not alive while the next batch runs
            yield rows, outputs

    def run_window(start: int):
        chunk = examples[start:start + window]
        enc = encode_responses(tokenizer, chunk, max_length)
        counts = enc.target_counts()
        parts = list(to_host(run(enc, batch_order([len(s) for s in enc.input_ids],
                                                   batch_size, sort))))
        index = torch.from_numpy(in_order_index(np.concatenate([r for r, _ in parts]), counts))
        return chunk, tuple(torch.cat(col)[index] for col in zip(*(o for _, o in parts))), counts

    # off the CPU the next window runs on another thread while the caller takes this one
    yield from prefetched(run_window, range(0, len(examples), window),
                          background=device.type != "cpu")


def extract_token_topk(model: torch.nn.Module, tokenizer, examples: Sequence[InstructExample],
                       out_dir: str | os.PathLike[str], *, k: int = 5, coverage_k: int = 100,
                       dtype: str = "float32", shard_size: int = 200_000, batch_size: int = 32,
                       max_length: int = 512, manifest_info: Mapping[str, Any] | None = None,
                       on_device: bool | None = None) -> Manifest:
    """Write the teacher's per-token top-k store for `examples` to `out_dir` (replaced).
    `on_device`: where the top-k is taken (`inference.on_device_default`)."""
    vocab = vocab_size(model)
    width = check_extraction(k=k, coverage_k=coverage_k, dtype=dtype, shard_size=shard_size,
                             examples=examples, vocab=vocab)
    on_device = on_device_default(model, on_device)

    def reduce(logits: torch.Tensor, targets: torch.Tensor):  # no [T, V] softmax
        return (*top_logits(logits, width, on_device), targets)

    def rows(mine: Sequence[InstructExample], rank: int) -> Rows:
        for chunk, (top, top_i, lse, gold), counts in iter_token_batches(
                model, tokenizer, mine, batch_size, max_length, reduce):
            top_p, top_i, gold = torch.exp(top - lse).numpy(), top_i.numpy(), gold.numpy()
            starts = np.repeat(np.cumsum(counts) - counts, counts)
            yield top_p, top_i, gold, {
                "example_id": np.repeat(np.array([ex.id for ex in chunk], dtype=object), counts),
                "position": np.arange(len(gold)) - starts}

    return run_extraction(model, examples, Path(out_dir), rows, layout=TOKENS, k=k,
                          width=width, vocab=vocab, dtype=dtype, shard_size=shard_size,
                          max_length=max_length,
                          **provenance(manifest_info, instruct_examples_hash(examples)))
