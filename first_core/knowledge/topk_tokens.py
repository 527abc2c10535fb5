"""Concentrated knowledge at every response token: the teacher's top-k per token, sharded.

The instruction setting's counterpart of `topk.extract_topk` (one answer position per
example): the teacher is run teacher-forced over `prompt + response + eos`
(`models.encoding.encode_responses`), and at every response token the top-k ids (int32) and
their *raw* full-vocabulary softmax probabilities (float16 / float32, not renormalised) are
written as Parquet shards plus `manifest.json`, with the top-`coverage_k` coverage statistics
over all response tokens (`topk.CoverageAccumulator`, fixed size).

**Long format**, one row per response token (why, in docs/DESIGN.md): columns `example_id`
(string), `position` (int32, 0-based index of the token within the response), `token_id`
(int32, the response token itself), `gold_rank_in_topk` (int32, its column in `topk_ids`,
-1 if absent), `topk_ids` (fixed_size_list<int32>[k]), `topk_probs`
(fixed_size_list<float>[k]). The row's distribution is the teacher's next-token distribution
that predicts `token_id`. Rows are ordered example by example, position by position.

Streaming: examples are tokenised and run one window of batches at a time (batched by length,
put back in order), the top-k is taken where the logits are (on the GPU for a model there:
only `[tokens, coverage_k]` values cross to the host) and rows are written as soon as
`shard_size` of them are buffered, so peak memory is one batch's logits plus one window's
top-k rows plus one shard, whatever the size of the data set. Multi-process exactly like
`topk.extract_topk`: every rank takes a contiguous slice of the examples, writes
`part-r{rank}-{n}.parquet` and its coverage histogram into `.NAME.partial`, rank 0 merges them
into the manifest and renames the folder, so a killed run never leaves a store that looks
finished. Resume is per store: the pipeline
skips a split whose finished store matches (`token_store_matches`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch

from ..errors import ConfigError, StoreError
from ..inference.forward import (SORT_WINDOW, batch_order, in_order_index, model_device,
                                 on_device_default, prefetched, to_device, to_host, vocab_size)
from ..data.instruct_data import InstructExample
from ..inference.logit_reduce import top_logits
from ..metrics.scores import topk_labels
from ..models.encoding import encode_responses
from ..training.targets import TargetCollator, logits_mode, target_logits
from .topk import (MANIFEST, CoverageAccumulator, ShardWriter, _clear_store_dir, _collect_shards,
                   coverage_table, manifest_json, probs_array, write_manifest)
from .extraction import check_extraction, start_partial

TOKEN_SCHEMA_VERSION = 1
LAYOUT = "long-per-token"


@dataclass(frozen=True)
class TokenManifest:
    """What a per-token top-k store holds (`manifest.json`, `layout = "long-per-token"`)."""

    k: int
    coverage_k: int
    vocab_size: int
    dtype: str
    teacher: str
    dataset_hash: str
    examples_hash: str
    config_hash: str
    n_examples: int
    n_tokens: int
    n_gold_in_topk: int
    n_processes: int
    max_length: int
    shards: list[dict[str, Any]]
    coverage: dict[str, list[float]]
    bytes_per_token_measured: float  # topk_ids + topk_probs column chunks on disk / n_tokens
    info: dict[str, Any] = field(default_factory=dict)
    layout: str = LAYOUT
    schema_version: int = TOKEN_SCHEMA_VERSION


@dataclass(frozen=True)
class TokenTopK:
    """A loaded per-token store: row i is token `positions[i]` of `example_ids[i]`."""

    ids: np.ndarray        # int32 [N, k]
    probs: np.ndarray      # float64 [N, k], raw
    example_ids: np.ndarray  # str [N]
    positions: np.ndarray  # int32 [N]
    token_ids: np.ndarray  # int32 [N]
    gold_rank: np.ndarray  # int64 [N]
    manifest: TokenManifest


def instruct_examples_hash(examples: Sequence[InstructExample]) -> str:
    """Content hash of the examples (their prompts already carry the template)."""
    rows = [[e.id, e.prompt, e.response] for e in examples]
    return hashlib.sha256(json.dumps(rows).encode()).hexdigest()[:16]


def _token_table(cols: dict[str, np.ndarray], dtype: str) -> pa.Table:
    k = cols["topk_ids"].shape[1]
    return pa.table({
        "example_id": pa.array(cols["example_id"], pa.string()),
        "position": pa.array(cols["position"].astype(np.int32)),
        "token_id": pa.array(cols["token_id"].astype(np.int32)),
        "gold_rank_in_topk": pa.array(cols["gold_rank_in_topk"].astype(np.int32)),
        "topk_ids": pa.FixedSizeListArray.from_arrays(
            pa.array(cols["topk_ids"].ravel().astype(np.int32)), k),
        "topk_probs": pa.FixedSizeListArray.from_arrays(probs_array(cols["topk_probs"], dtype), k),
    })


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
        counts = np.array([enc.n_targets(i) for i in range(len(enc))], dtype=np.int64)
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
                       on_device: bool | None = None) -> TokenManifest:
    """Write the teacher's per-token top-k store for `examples` to `out_dir` (replaced).
    `on_device`: where the top-k is taken (`inference.on_device_default`)."""
    vocab = vocab_size(model)
    width = check_extraction(k=k, coverage_k=coverage_k, dtype=dtype, shard_size=shard_size,
                             examples=examples, vocab=vocab)
    on_device = on_device_default(model, on_device)
    out = Path(out_dir)
    state, tmp = start_partial(model, out)

    def reduce(logits: torch.Tensor, targets: torch.Tensor):  # no [T, V] softmax
        return (*top_logits(logits, width, on_device), targets)

    with state.split_between_processes(list(examples)) as mine:
        writer = ShardWriter(tmp, state.process_index, shard_size,
                             lambda cols: _token_table(cols, dtype))
        coverage = CoverageAccumulator(width)
        for chunk, (top, top_i, lse, gold), counts in iter_token_batches(
                model, tokenizer, mine, batch_size, max_length, reduce):
            top_p, top_i, gold = torch.exp(top - lse).numpy(), top_i.numpy(), gold.numpy()
            ids = top_i[:, :k].copy()
            coverage.add(top_p)
            starts = np.repeat(np.cumsum(counts) - counts, counts)
            writer.add(example_id=np.repeat(np.array([ex.id for ex in chunk], dtype=object),
                                            counts),
                       position=np.arange(len(gold)) - starts, token_id=gold,
                       gold_rank_in_topk=topk_labels(ids, gold), topk_ids=ids,
                       topk_probs=top_p[:, :k].copy())
        writer.close()
        coverage.save(tmp / f"coverage-r{state.process_index:03d}.npz")
    state.wait_for_everyone()

    if state.is_main_process:
        info = dict(manifest_info or {})
        ex_hash = instruct_examples_hash(examples)
        _merge(tmp, k=k, width=width, vocab=vocab, dtype=dtype, n_examples=len(examples),
               teacher=str(info.pop("teacher", "")),
               dataset_hash=str(info.pop("dataset_hash", "") or ex_hash),
               examples_hash=ex_hash, config_hash=str(info.pop("config_hash", "")),
               max_length=max_length, info=info, n_processes=state.num_processes)
        _clear_store_dir(out)
        os.replace(tmp, out)
    state.wait_for_everyone()
    return read_token_manifest(out)


def _merge(folder: Path, *, k: int, width: int, vocab: int, dtype: str, **meta: Any) -> None:
    coverage, listed, n, golds, payload = _collect_shards(folder, width)
    manifest = TokenManifest(k=k, coverage_k=width, vocab_size=vocab, dtype=dtype, n_tokens=n,
                             n_gold_in_topk=golds, coverage=coverage.summary(),
                             shards=listed,
                             bytes_per_token_measured=payload / max(n, 1), **meta)
    write_manifest(folder, manifest)


def read_token_manifest(store_dir: str | os.PathLike[str]) -> TokenManifest:
    path, raw = manifest_json(store_dir)
    if raw.get("layout") != LAYOUT:
        raise StoreError(f"{path}: not a per-token top-k store (layout {raw.get('layout')!r})")
    if raw.get("schema_version", 0) > TOKEN_SCHEMA_VERSION:
        raise StoreError(f"{path}: written by a newer first-lab; upgrade")
    names = {f.name for f in dataclasses.fields(TokenManifest)}
    try:
        return TokenManifest(**{n: raw[n] for n in names if n in raw})
    except TypeError as exc:
        raise StoreError(f"{path}: manifest lacks fields ({exc})") from None


def token_store_matches(store_dir: Path, **expected: Any) -> bool:
    """A finished store whose manifest has these values (the stage's resume test)."""
    try:
        m = read_token_manifest(store_dir)
    except StoreError:
        return False
    return all(getattr(m, key) == value for key, value in expected.items())


def iter_token_shards(store_dir: str | os.PathLike[str], manifest: TokenManifest | None = None,
                      columns: Sequence[str] | None = None) -> Iterator[pa.Table]:
    """Each shard as an Arrow table, in row order, checked against the manifest."""
    folder = Path(store_dir)
    manifest = manifest or read_token_manifest(folder)
    for shard in manifest.shards:
        path = folder / shard["file"]
        try:
            table = pq.read_table(path, columns=list(columns) if columns else None)
        except FileNotFoundError:
            raise StoreError(f"{path}: shard listed in the manifest is missing") from None
        except (pa.ArrowException, OSError) as exc:
            raise StoreError(f"{path}: unreadable Parquet shard: {exc}") from None
        if table.num_rows != shard["rows"]:
            raise StoreError(f"{path}: {table.num_rows} rows, the manifest says {shard['rows']}")
        yield table


def load_token_topk(store_dir: str | os.PathLike[str], expect_vocab_size: int | None = None,
                    expect_dataset_hash: str | None = None,
                    expect_teacher: str | None = None) -> TokenTopK:
    """Read a whole per-token store into arrays, refusing one for another teacher / data."""
    folder = Path(store_dir)
    m = read_token_manifest(folder)
    for name, want in (("vocab_size", expect_vocab_size), ("dataset_hash", expect_dataset_hash),
                       ("teacher", expect_teacher)):
        if want is not None and getattr(m, name) != want:
            raise StoreError(f"{folder / MANIFEST}: {name} mismatch: the store has "
                             f"{getattr(m, name)!r}, expected {want!r}; re-extract the top-k")
    table = pa.concat_tables(list(iter_token_shards(folder, m)))
    if table.num_rows != m.n_tokens:
        raise StoreError(f"{folder}: shards hold {table.num_rows} rows, the manifest says "
                         f"{m.n_tokens}")

    def flat(col: str, np_type: type) -> np.ndarray:
        return (pc.list_flatten(table.column(col)).to_numpy().astype(np_type)
                .reshape(table.num_rows, m.k))

    return TokenTopK(ids=flat("topk_ids", np.int32), probs=flat("topk_probs", np.float64),
                     example_ids=table.column("example_id").to_numpy(zero_copy_only=False),
                     positions=table.column("position").to_numpy().astype(np.int32),
                     token_ids=table.column("token_id").to_numpy().astype(np.int32),
                     gold_rank=table.column("gold_rank_in_topk").to_numpy().astype(np.int64),
                     manifest=m)


def token_coverage_table(manifest: TokenManifest) -> pd.DataFrame:
    """The store's `topk_coverage` rows for a per-token store: one position = one token, so
    `n_positions` is the number of response tokens and `bytes_per_position` is per token."""
    return coverage_table(SimpleNamespace(
        k=manifest.k, coverage_k=manifest.coverage_k, dtype=manifest.dtype,
        coverage=manifest.coverage, vocab_size=manifest.vocab_size,
        bytes_per_position_measured=manifest.bytes_per_token_measured,
        n_examples=manifest.n_tokens))
