"""Everything the two top-k extractions share around their loops: one answer position per
example (`answer_topk.extract_topk`) and every response token (`token_topk.extract_token_topk`).
Both import this module, and it imports neither; the check of k (`check_k`) is evaluation's too.

The loops themselves differ for real (a left-padded last-position forward, shared with
multiple-choice evaluation, against a teacher-forced response band); each is handed to
`run_extraction` as a generator of rows, which does the rest the same way for both:

- bad settings are refused before the teacher runs (`check_extraction`);
- multi-process: launched with `accelerate launch` (or torchrun), every rank takes a
  contiguous slice of the examples (`PartialState.split_between_processes`), writes its own
  shards and coverage histogram, and rank 0 merges them into the manifest after a barrier.
  Shards are listed rank by rank, so reading them back gives the single-process row order.
  Ranks must share the output folder's file system; a plain `python` launch is one rank;
- everything is written into a `.NAME.partial` sibling folder (rank 0 creates it, every rank
  waits) that is renamed to the output folder only when complete, after the manifest, so a
  killed run never leaves a store that looks finished; an earlier store there is replaced.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator, Mapping, Sequence, Sized
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import ConfigError, StoreError
from ..inference.forward import model_device
from ..metrics.conventions import topk_labels
from .coverage import CoverageAccumulator
from .manifest import ANSWER, DTYPES, Manifest, read_manifest, write_manifest
from .shards import ShardWriter, clear_store_dir, collect_shards, shard_table

# what a loop yields per batch: the sorted top-`width` probabilities and their ids [B, width],
# the target tokens [B], and the layout's other columns (`example_id`, `position`) [B]
Rows = Iterator[tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, np.ndarray]]]


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


def provenance(manifest_info: Mapping[str, Any] | None, examples_hash: str) -> dict[str, Any]:
    """The manifest's provenance fields: `teacher`, `dataset_hash` (default: the examples'
    hash) and `config_hash` from `manifest_info`, the rest of it kept under `info`."""
    info = dict(manifest_info or {})
    return {"teacher": str(info.pop("teacher", "")),
            "dataset_hash": str(info.pop("dataset_hash", "") or examples_hash),
            "examples_hash": examples_hash, "config_hash": str(info.pop("config_hash", "")),
            "info": info}


def run_extraction(model: torch.nn.Module, examples: Sequence, out: Path,
                   rows: Callable[[Sequence, int], Rows], *, layout: str, k: int, width: int,
                   vocab: int, dtype: str, shard_size: int, **meta: Any) -> Manifest:
    """Write the store of `layout` for `examples` to `out` (replaced) and return its manifest.

    `rows(mine, rank)` is the layout's loop over this rank's examples (`Rows`); the kept
    top-k, the rank of each target in it and the coverage statistics all come from the same
    top-`width`. `meta`: the manifest's provenance (`provenance`) and the layout's own
    fields (`template` or `max_length`)."""
    state, tmp = start_partial(model, out)
    with state.split_between_processes(list(examples)) as mine:
        writer = ShardWriter(tmp, state.process_index, shard_size,
                             lambda cols: shard_table(cols, layout, dtype))
        coverage = CoverageAccumulator(width)
        for top_p, top_i, target, columns in rows(mine, state.process_index):
            ids = top_i[:, :k].copy()
            coverage.add(top_p)
            writer.add(**columns, target=target, gold_rank_in_topk=topk_labels(ids, target),
                       topk_ids=ids, topk_probs=top_p[:, :k].copy())
        writer.close()
        coverage.save(tmp / f"coverage-r{state.process_index:03d}.npz")
    state.wait_for_everyone()

    if state.is_main_process:
        collected = collect_shards(tmp, width)
        if layout == ANSWER and collected["n_positions"] != len(examples):
            raise StoreError(f"{tmp}: shards hold {collected['n_positions']} rows, "
                             f"expected {len(examples)}")
        write_manifest(tmp, Manifest(layout=layout, k=k, coverage_k=width, vocab_size=vocab,
                                     dtype=dtype, n_examples=len(examples),
                                     n_processes=state.num_processes, **collected, **meta))
        clear_store_dir(out)
        os.replace(tmp, out)
    state.wait_for_everyone()
    return read_manifest(out)
