"""Concentrated knowledge at the answer position: the teacher's top-k per example, as a store
of the answer layout (`manifest.ANSWER`, one row per example).

`extract_topk` runs the teacher over the examples once and writes, per example, the top-k
token ids (int32) and their *raw* full-vocabulary softmax probabilities (float16 or float32,
not renormalised; computed as exp(logit - logsumexp) from the top-k of the logits, never as a
[B, V] softmax) with the top-`coverage_k` coverage statistics from the same `topk` call.

The loop is the left-padded last-position forward (`inference.answer_top`) that
multiple-choice evaluation runs too, on purpose: the teacher's stored distribution is the one
evaluation would see. Everything around the loop (ranks, shards, coverage, manifest, the
`.NAME.partial` folder) is `extraction.run_extraction`, shared with the token layout.

Layout of a store directory::

    manifest.json                  written last: the stage is done when it exists
    part-r000-00000.parquet ...    rank 000's shards, `shard_size` rows each
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..data import examples as data
from ..inference.forward import PromptIds, answer_top, vocab_size
from ..models.encoding import label_token_ids
from ..models.presets import MAX_POSITIONS
from .extraction import Rows, check_extraction, provenance, run_extraction
from .manifest import ANSWER, Manifest


def examples_hash(examples: Sequence[data.Example],
                  template: data.PromptTemplate = data.DEFAULT_TEMPLATE) -> str:
    """Content hash of the examples *and* the prompt template: both decide the prompts."""
    names = [f.name for f in dataclasses.fields(data.Example)]
    rows = [dataclasses.asdict(template)] + [[getattr(e, n) for n in names] for e in examples]
    return hashlib.sha256(json.dumps(rows).encode()).hexdigest()[:16]


def extract_topk(model: torch.nn.Module, tokenizer, examples: Sequence[data.Example],
                 out_dir: str | os.PathLike[str], *, k: int = 5, coverage_k: int = 100,
                 dtype: str = "float32", shard_size: int = 50_000, batch_size: int = 64,
                 template: data.PromptTemplate = data.DEFAULT_TEMPLATE,
                 max_length: int = MAX_POSITIONS, manifest_info: Mapping[str, Any] | None = None,
                 progress: bool | None = None, on_device: bool | None = None) -> Manifest:
    """Write the teacher's top-k store for `examples` to `out_dir` and return its manifest.

    `manifest_info` may hold `teacher`, `dataset_hash` and `config_hash` (checked again by
    `reader.load_topk`); any other keys are kept under `info`. `coverage_k` is capped at the
    vocabulary size. An existing store at `out_dir` is replaced. `on_device`: where the top-k
    is taken (`inference.answer_top`; default: on the model's device off the CPU, by the
    compiled kernel on it).
    """
    vocab = vocab_size(model)
    width = check_extraction(k=k, coverage_k=coverage_k, dtype=dtype, shard_size=shard_size,
                             examples=examples, vocab=vocab)
    letter_ids = label_token_ids(tokenizer, examples)

    def rows(mine: Sequence[data.Example], rank: int) -> Rows:
        gold = np.array([letter_ids[ex.answer] for ex in mine], dtype=np.int64)
        prompts = PromptIds(tokenizer, mine, template, max_length)
        # the top-`width` once per batch: the kept top-k and the coverage statistics both
        # come from it, and no [B, V] softmax is formed (logit_reduce.top_logits)
        for start, top_p, top_i, _ in answer_top(model, tokenizer, prompts, width, batch_size,
                                                 progress, desc=f"top-{k} (rank {rank})",
                                                 on_device=on_device):
            end = start + len(top_i)
            yield top_p.numpy(), top_i.numpy(), gold[start:end], {
                "example_id": np.array([ex.id for ex in mine[start:end]], dtype=object)}

    return run_extraction(model, examples, Path(out_dir), rows, layout=ANSWER, k=k,
                          width=width, vocab=vocab, dtype=dtype, shard_size=shard_size,
                          template=dataclasses.asdict(template),
                          **provenance(manifest_info, examples_hash(examples, template)))
