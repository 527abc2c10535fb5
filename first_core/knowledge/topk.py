"""Concentrated knowledge: the teacher's top-k at the answer position, as a sharded store.

`extract_topk` runs the teacher over the examples once and writes, per example, the top-k
token ids (int32) and their *raw* full-vocabulary softmax probabilities (float16 or float32,
not renormalised, so the dropped tail mass `1 - sum(row)` stays known; computed as
exp(logit - logsumexp) from the top-k of the logits, never as a [B, V] softmax) as Parquet
shards plus `manifest.json`. The same pass (the same `topk` call) measures the
top-`coverage_k` cumulative coverage (how much probability mass the K most likely tokens hold,
K = 1..coverage_k) without keeping per-example vectors: a fixed-size histogram per K, so
memory does not grow with the data set.

Layout of a store directory::

    manifest.json                  written last: the stage is done when it exists
    part-r000-00000.parquet ...    rank 000's shards, `shard_size` rows each

Columns: `example_id` (string), `topk_ids` (list<int32>), `topk_probs` (list<float16|float32>),
`gold_token_id` (int32), `gold_rank_in_topk` (int32: column of the gold token, -1 if absent).

Multi-process: launched with `accelerate launch` (or torchrun), every rank takes a contiguous
slice of the examples (`PartialState.split_between_processes`), writes its own shards and its
coverage histogram, and rank 0 merges them into the manifest after a barrier. Shards are listed
rank by rank, so reading them back gives the single-process row order. Ranks must share the
output folder's file system. A plain `python` launch is simply one rank.

Everything is written into a `.NAME.partial` sibling folder that is renamed to `out_dir` only
when complete, so a killed run never leaves a store that looks finished.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import MISSING, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch

from ..data import examples as data
from ..errors import StoreError
from ..inference.forward import PromptIds, answer_top, vocab_size
from ..metrics.scores import topk_labels
from ..models.encoding import label_token_ids
from ..models.presets import MAX_POSITIONS
from .extraction import DTYPES, check_extraction, start_partial

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
ID_BYTES = 4  # int32 token ids
FULL_BYTES = 2  # a full-vocabulary distribution is counted in fp16
COVERAGE_BINS = 2000  # histogram resolution of the coverage percentiles (bin means are kept)
PERCENTILES = (10, 50, 90)
_FLUSH_ROWS = 8192  # rows of coverage vectors buffered between histogram updates
_PAYLOAD = ("topk_ids", "topk_probs")  # the columns whose on-disk size is measured


@dataclass(frozen=True)
class Manifest:
    """What a top-k store holds and where it came from (`manifest.json`)."""

    k: int
    coverage_k: int
    vocab_size: int
    dtype: str
    teacher: str
    dataset_hash: str  # the caller's data-set hash, else `examples_hash`
    examples_hash: str  # content hash of the examples and the prompt template
    config_hash: str
    n_examples: int
    n_gold_in_topk: int
    n_processes: int
    shards: list[dict[str, Any]]  # [{"file": name, "rows": n}] in row order
    coverage: dict[str, list[float]]  # mean / p10 / p50 / p90 for K = 1..coverage_k
    bytes_per_position_measured: float  # topk_ids + topk_probs on disk / n_examples
    template: dict[str, str] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)  # the rest of `manifest_info`
    schema_version: int = SCHEMA_VERSION

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any], where: str | Path) -> Manifest:
        version = raw.get("schema_version")
        if not isinstance(version, int):
            raise StoreError(f"{where}: schema_version is missing or not an integer")
        if version > SCHEMA_VERSION:
            raise StoreError(f"{where}: written by a newer first-lab (top-k schema version "
                             f"{version}; this one reads up to {SCHEMA_VERSION}); upgrade")
        fields = dataclasses.fields(cls)
        missing = [f.name for f in fields if f.name not in raw and f.default is MISSING
                   and f.default_factory is MISSING]
        if missing:
            raise StoreError(f"{where}: manifest lacks field(s) {missing}")
        names = {f.name for f in fields}
        return cls(**{n: raw[n] for n in names if n in raw})


@dataclass(frozen=True)
class TopK:
    """A loaded top-k store: row i belongs to `example_ids[i]`."""

    ids: np.ndarray  # int32 [N, k], most likely first
    probs: np.ndarray  # float64 [N, k], raw (rows may sum to < 1)
    example_ids: np.ndarray  # str [N]
    gold_ids: np.ndarray  # int32 [N]
    gold_rank: np.ndarray  # int64 [N]: column of the gold token in `ids`, -1 if absent
    manifest: Manifest


def examples_hash(examples: Sequence[data.Example],
                  template: data.PromptTemplate = data.DEFAULT_TEMPLATE) -> str:
    """Content hash of the examples *and* the prompt template: both decide the prompts."""
    names = [f.name for f in dataclasses.fields(data.Example)]
    rows = [dataclasses.asdict(template)] + [[getattr(e, n) for n in names] for e in examples]
    return hashlib.sha256(json.dumps(rows).encode()).hexdigest()[:16]


# ------------------------------------------------------------------------ coverage stats

class CoverageAccumulator:
    """Streaming stats of the cumulative top-K mass, K = 1..width, mergeable across ranks.

    Per K it keeps the sum (for the exact mean) and a histogram of `COVERAGE_BINS` equal-width
    bins with the sum of the values in each bin. A percentile is the mean of the values in the
    bin holding the order statistic `floor(q * (n - 1))` (numpy's `method="lower"`), so it is
    exact when those values are equal and otherwise within one bin width (1 / COVERAGE_BINS).
    """

    def __init__(self, width: int) -> None:
        self.width = width
        self.n = 0
        self.total = np.zeros(width)
        self.counts = np.zeros((width, COVERAGE_BINS), dtype=np.int64)
        self.sums = np.zeros((width, COVERAGE_BINS))
        self._pending: list[np.ndarray] = []
        self._pending_rows = 0

    def add(self, top_probs: np.ndarray) -> None:
        """Add a batch of sorted top-`width` probabilities `[B, width]`.

        Batches are binned `_FLUSH_ROWS` rows at a time: one `bincount` over the whole
        histogram per flush instead of per batch keeps the stats off the extraction's
        critical path, and the buffer is bounded.
        """
        self._pending.append(np.asarray(top_probs))
        self._pending_rows += len(top_probs)
        if self._pending_rows >= _FLUSH_ROWS:
            self._flush()

    def _flush(self) -> None:
        if not self._pending:
            return
        cum = np.clip(np.cumsum(np.concatenate(self._pending), axis=1, dtype=np.float64),
                      0.0, 1.0)
        self._pending, self._pending_rows = [], 0
        bins = np.minimum((cum * COVERAGE_BINS).astype(np.int64), COVERAGE_BINS - 1)
        flat = (bins + COVERAGE_BINS * np.arange(self.width)).ravel()
        size = self.width * COVERAGE_BINS
        self.counts += np.bincount(flat, minlength=size).reshape(self.counts.shape)
        self.sums += np.bincount(flat, weights=cum.ravel(), minlength=size).reshape(
            self.sums.shape)
        self.total += cum.sum(axis=0)
        self.n += len(cum)

    def merge(self, other: CoverageAccumulator) -> None:
        self._flush()
        other._flush()
        self.n += other.n
        self.total += other.total
        self.counts += other.counts
        self.sums += other.sums

    def save(self, path: Path) -> None:
        self._flush()
        np.savez(path, n=self.n, total=self.total, counts=self.counts, sums=self.sums)

    @classmethod
    def load(cls, path: Path) -> CoverageAccumulator:
        with np.load(path, allow_pickle=False) as z:
            acc = cls(len(z["total"]))
            acc.n, acc.total, acc.counts, acc.sums = int(z["n"]), z["total"], z["counts"], z["sums"]
        return acc

    def summary(self) -> dict[str, list[float]]:
        """{"mean": [...], "p10": [...], ...}, one value per K (NaN when empty)."""
        self._flush()
        if self.n == 0:
            nan = [float("nan")] * self.width
            return {"mean": nan, **{f"p{q}": nan for q in PERCENTILES}}
        out = {"mean": (self.total / self.n).tolist()}
        below = self.counts.cumsum(axis=1)
        rows = np.arange(self.width)
        for q in PERCENTILES:
            rank = int(np.floor(q / 100 * (self.n - 1)))
            b = (below > rank).argmax(axis=1)
            out[f"p{q}"] = (self.sums[rows, b] / self.counts[rows, b]).tolist()
        return out


# ------------------------------------------------------------------------------ writing

class ShardWriter:
    """Buffers rows of named columns and writes them as `part-r{rank}-{index}.parquet`,
    `shard_size` rows each, each shard built by `to_table(columns)`. Shared by both stores."""

    def __init__(self, folder: Path, rank: int, shard_size: int,
                 to_table: Callable[[dict[str, np.ndarray]], pa.Table]) -> None:
        self.folder, self.rank, self.shard_size, self.to_table = folder, rank, shard_size, to_table
        self.parts: list[dict[str, np.ndarray]] = []
        self.buffered = 0
        self.index = 0

    def add(self, **columns: np.ndarray) -> None:
        self.parts.append(columns)
        self.buffered += len(next(iter(columns.values())))
        while self.buffered >= self.shard_size:
            self._write(self.shard_size)

    def close(self) -> None:
        if self.buffered:
            self._write(self.buffered)

    def _write(self, n: int) -> None:
        """Write the first `n` buffered rows as the next shard; keep the rest buffered."""
        cols = {key: np.concatenate([p[key] for p in self.parts]) for key in self.parts[0]}
        self.parts = [{key: v[n:] for key, v in cols.items()}]
        self.buffered -= n
        table = self.to_table({key: v[:n] for key, v in cols.items()})
        pq.write_table(table, self.folder / f"part-r{self.rank:03d}-{self.index:05d}.parquet")
        self.index += 1


def probs_array(probs: np.ndarray, dtype: str) -> pa.Array:
    """Stored probabilities `[n, k]` as a flat Arrow array of `dtype`, rounded down
    (`round_down`), so a stored row never sums above the teacher's own."""
    pa_type, np_type = DTYPES[dtype]
    return pa.array(round_down(probs.ravel(), np_type), pa_type)


def _answer_table(cols: dict[str, np.ndarray], dtype: str) -> pa.Table:
    n, k = cols["topk_ids"].shape
    offsets = pa.array(np.arange(0, n * k + 1, k, dtype=np.int32))
    return pa.table({
        "example_id": pa.array(cols["example_id"], pa.string()),
        "topk_ids": pa.ListArray.from_arrays(offsets, pa.array(
            cols["topk_ids"].ravel().astype(np.int32))),
        "topk_probs": pa.ListArray.from_arrays(offsets, probs_array(cols["topk_probs"], dtype)),
        "gold_token_id": pa.array(cols["gold_token_id"].astype(np.int32)),
        "gold_rank_in_topk": pa.array(cols["gold_rank_in_topk"].astype(np.int32)),
    })


def _payload_bytes(path: Path) -> int:
    """On-disk (compressed) bytes of the ids and probs column chunks of one shard."""
    meta = pq.read_metadata(path)
    return sum(rg.column(c).total_compressed_size
               for rg in (meta.row_group(i) for i in range(meta.num_row_groups))
               for c in range(rg.num_columns)
               if rg.column(c).path_in_schema.split(".")[0] in _PAYLOAD)


def _clear_store_dir(path: Path) -> None:
    """Remove an earlier top-k store at `path`; refuse to delete anything else."""
    if not path.exists():
        return
    foreign = [p.name for p in path.iterdir()
               if not (p.name == MANIFEST or p.name.startswith("part-"))]
    if foreign:
        raise StoreError(f"{path}: exists and is not a top-k store (holds {foreign[:5]}); "
                         "choose another output folder")
    shutil.rmtree(path)


def extract_topk(model: torch.nn.Module, tokenizer, examples: Sequence[data.Example],
                 out_dir: str | os.PathLike[str], *, k: int = 5, coverage_k: int = 100,
                 dtype: str = "float32", shard_size: int = 50_000, batch_size: int = 64,
                 template: data.PromptTemplate = data.DEFAULT_TEMPLATE,
                 max_length: int = MAX_POSITIONS, manifest_info: Mapping[str, Any] | None = None,
                 progress: bool | None = None, on_device: bool | None = None) -> Manifest:
    """Write the teacher's top-k store for `examples` to `out_dir` and return its manifest.

    `manifest_info` may hold `teacher`, `dataset_hash` and `config_hash` (checked again by
    `load_topk`); any other keys are kept under `info`. `coverage_k` is capped at the
    vocabulary size. An existing store at `out_dir` is replaced. `on_device`: where the top-k
    is taken (`inference.answer_top`; default: on the model's device off the CPU, by the
    compiled kernel on it).
    """
    vocab = vocab_size(model)
    width = check_extraction(k=k, coverage_k=coverage_k, dtype=dtype, shard_size=shard_size,
                             examples=examples, vocab=vocab)
    letter_ids = label_token_ids(tokenizer, examples)
    out = Path(out_dir)
    state, tmp = start_partial(model, out)

    with state.split_between_processes(list(examples)) as mine:
        writer = ShardWriter(tmp, state.process_index, shard_size,
                             lambda cols: _answer_table(cols, dtype))
        coverage = CoverageAccumulator(width)
        gold = np.array([letter_ids[ex.answer] for ex in mine], dtype=np.int64)
        prompts = PromptIds(tokenizer, mine, template, max_length)
        # the top-`width` once per batch: the kept top-k and the coverage statistics both
        # come from it, and no [B, V] softmax is formed (logit_reduce.top_logits)
        for start, top_p, top_i, _ in answer_top(model, tokenizer, prompts, width, batch_size,
                                                 progress,
                                                 desc=f"top-{k} (rank {state.process_index})",
                                                 on_device=on_device):
            top_p, top_i = top_p.numpy(), top_i.numpy()
            ids, g = top_i[:, :k].copy(), gold[start:start + len(top_i)]
            coverage.add(top_p)
            writer.add(example_id=np.array([ex.id for ex in mine[start:start + len(ids)]],
                                           dtype=object),
                       topk_ids=ids, topk_probs=top_p[:, :k].copy(), gold_token_id=g,
                       gold_rank_in_topk=topk_labels(ids, g))
        writer.close()
        coverage.save(tmp / f"coverage-r{state.process_index:03d}.npz")
    state.wait_for_everyone()

    if state.is_main_process:
        info = dict(manifest_info or {})
        ex_hash = examples_hash(examples, template)
        manifest = _merge(tmp, k=k, width=width, vocab=vocab, dtype=dtype,
                          teacher=str(info.pop("teacher", "")),
                          dataset_hash=str(info.pop("dataset_hash", "") or ex_hash),
                          examples_hash=ex_hash, config_hash=str(info.pop("config_hash", "")),
                          template=dataclasses.asdict(template), info=info,
                          n_processes=state.num_processes)
        if manifest.n_examples != len(examples):
            raise StoreError(f"{tmp}: shards hold {manifest.n_examples} rows, "
                             f"expected {len(examples)}")
        _clear_store_dir(out)
        os.replace(tmp, out)
    state.wait_for_everyone()
    return read_manifest(out)


def _collect_shards(folder: Path, width: int):
    """Every rank's coverage stats merged (their files removed), and over the shards: the
    manifest's shard list, the row count, the rows whose gold is in the top-k and the
    payload bytes. Shared by both extractions' manifests."""
    coverage = CoverageAccumulator(width)
    for path in sorted(folder.glob("coverage-r*.npz")):
        coverage.merge(CoverageAccumulator.load(path))
        path.unlink()
    shards = sorted(folder.glob("part-r*.parquet"))
    rows = [pq.read_metadata(p).num_rows for p in shards]
    golds = sum(int(np.count_nonzero(pq.read_table(p, columns=["gold_rank_in_topk"])
                                     .column(0).to_numpy() >= 0)) for p in shards)
    payload = sum(_payload_bytes(p) for p in shards)
    listed = [{"file": p.name, "rows": r} for p, r in zip(shards, rows)]
    return coverage, listed, sum(rows), golds, payload


def _merge(folder: Path, *, k: int, width: int, vocab: int, dtype: str, **meta: Any) -> Manifest:
    """Combine every rank's coverage stats and shard list into the manifest (rank 0)."""
    coverage, listed, n, golds, payload = _collect_shards(folder, width)
    manifest = Manifest(k=k, coverage_k=width, vocab_size=vocab, dtype=dtype,
                        n_examples=n, n_gold_in_topk=golds, shards=listed,
                        coverage=coverage.summary(),
                        bytes_per_position_measured=payload / n,
                        **meta)
    write_manifest(folder, manifest)
    return manifest


def write_manifest(folder: Path, manifest: Any) -> None:
    """`manifest.json` of a manifest dataclass; both stores write it last."""
    (folder / MANIFEST).write_text(json.dumps(dataclasses.asdict(manifest), indent=2,
                                              sort_keys=True), encoding="utf-8")


# ------------------------------------------------------------------------------ reading

def manifest_json(store_dir: str | os.PathLike[str]) -> tuple[Path, dict[str, Any]]:
    """(path, JSON object) of a store's manifest; `StoreError` when missing or unreadable.
    Shared by both stores' readers."""
    path = Path(store_dir) / MANIFEST
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise StoreError(f"{path}: no top-k manifest; the top-k stage has not finished "
                         "(rerun it)") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise StoreError(f"{path}: unreadable manifest: {exc}") from None
    if not isinstance(raw, dict):
        raise StoreError(f"{path}: manifest is not a JSON object")
    return path, raw


def read_manifest(store_dir: str | os.PathLike[str]) -> Manifest:
    """The manifest of a finished store; `StoreError` when missing, unreadable or too new."""
    path, raw = manifest_json(store_dir)
    return Manifest.from_dict(raw, path)


def _check_expected(manifest: Manifest, where: Path, **expected: Any) -> None:
    for name, want in expected.items():
        have = getattr(manifest, name)
        if want is not None and have != want:
            raise StoreError(f"{where}: {name} mismatch: the store has {have!r}, expected "
                             f"{want!r}; re-extract the top-k for this teacher and data set")


def round_down(values: np.ndarray, np_type: type) -> np.ndarray:
    """`values` cast to `np_type`, rounded toward zero rather than to nearest.

    Stored probabilities then never exceed the teacher's, so a row's sum stays <= 1: to
    nearest, a confident teacher's 0.9998 becomes float16 1.0 and the row sums above 1.
    """
    out = values.astype(np_type)
    up = out.astype(values.dtype) > values
    out[up] = np.nextafter(out[up], np_type(0))
    return out


# A float16 entry x is off by at most x * 2**-11 (half a unit in the last place), so rounded
# to nearest a row summing to <= 1 can sum to at most 1 + 2**-11 (plus a few subnormal ulps).
_F16_OVERSHOOT = 2.0 ** -11 + 2.0 ** -20


def _fit_rounding(probs: np.ndarray, manifest: Manifest, folder: Path) -> np.ndarray:
    """Rows of a float16 store written by round-to-nearest (before `round_down`) can sum a
    hair above 1; scale those back to 1. A larger excess is not rounding: refuse it."""
    if manifest.dtype != "float16" or probs.size == 0:
        return probs
    sums = probs.sum(axis=1)
    over = sums > 1.0
    if not over.any():
        return probs
    if sums.max() > 1.0 + _F16_OVERSHOOT:
        row = int(sums.argmax())
        raise StoreError(f"{folder}: top-k row {row} sums to {sums[row]:.6f} > 1, more than "
                         "float16 rounding explains; the store is corrupt, re-extract it")
    probs = probs.copy()
    probs[over] /= sums[over, None]
    return probs


def iter_shards(store_dir: str | os.PathLike[str], manifest: Manifest | None = None
                ) -> Iterator[pa.Table]:
    """Yield each shard as an Arrow table in row order, checking it against the manifest."""
    folder = Path(store_dir)
    manifest = manifest or read_manifest(folder)
    for shard in manifest.shards:
        path = folder / shard["file"]
        try:
            table = pq.read_table(path)
        except FileNotFoundError:
            raise StoreError(f"{path}: shard listed in the manifest is missing") from None
        except (pa.ArrowException, OSError) as exc:
            raise StoreError(f"{path}: unreadable Parquet shard (truncated or corrupt?): "
                             f"{exc}") from None
        if table.num_rows != shard["rows"]:
            raise StoreError(f"{path}: {table.num_rows} rows, the manifest says {shard['rows']}")
        for col in _PAYLOAD:
            lengths = pc.list_value_length(table.column(col))
            if table.num_rows and pc.any(pc.not_equal(lengths, manifest.k)).as_py():
                raise StoreError(f"{path}: column {col} has rows whose length is not "
                                 f"k={manifest.k}")
        yield table


def load_topk(store_dir: str | os.PathLike[str], expect_vocab_size: int | None = None,
              expect_dataset_hash: str | None = None, expect_teacher: str | None = None) -> TopK:
    """Read a whole store into arrays, refusing one made for another teacher or data set."""
    folder = Path(store_dir)
    manifest = read_manifest(folder)
    _check_expected(manifest, folder / MANIFEST, vocab_size=expect_vocab_size,
                    dataset_hash=expect_dataset_hash, teacher=expect_teacher)
    tables = list(iter_shards(folder, manifest))
    table = pa.concat_tables(tables) if tables else None
    n = table.num_rows if table is not None else 0
    if n != manifest.n_examples:
        raise StoreError(f"{folder}: shards hold {n} rows, the manifest says "
                         f"{manifest.n_examples}")
    k = manifest.k

    def flat(col: str, np_type: type) -> np.ndarray:
        values = pc.list_flatten(table.column(col)).to_numpy()
        return values.astype(np_type).reshape(n, k)

    probs = _fit_rounding(flat("topk_probs", np.float64), manifest, folder)
    return TopK(ids=flat("topk_ids", np.int32), probs=probs,
                example_ids=table.column("example_id").to_numpy(zero_copy_only=False),
                gold_ids=table.column("gold_token_id").to_numpy().astype(np.int32),
                gold_rank=table.column("gold_rank_in_topk").to_numpy().astype(np.int64),
                manifest=manifest)


def coverage_table(manifest: Manifest) -> pd.DataFrame:
    """Rows of the store's `topk_coverage` table (without `run_id`), one per K.

    `bytes_per_position` is the payload needed per answer position: at K = k the measured
    on-disk size of the `topk_ids` + `topk_probs` column chunks (compressed Parquet, list
    overhead included) divided by the number of positions; at any other K the formula
    K * (4 + b) bytes, with 4-byte int32 ids and b = 2 (float16) or 4 (float32) bytes per
    probability. `full_bytes_per_position` = 2 * vocab_size (a full fp16 distribution).
    """
    ks = np.arange(1, manifest.coverage_k + 1)
    item = np.dtype(DTYPES[manifest.dtype][1]).itemsize
    nbytes = (ks * (ID_BYTES + item)).astype(np.float64)
    if manifest.k <= manifest.coverage_k:
        nbytes[manifest.k - 1] = manifest.bytes_per_position_measured
    return pd.DataFrame({"k": ks, **{c: manifest.coverage[c] for c in
                                     ("mean", *(f"p{q}" for q in PERCENTILES))},
                         "bytes_per_position": nbytes,
                         "full_bytes_per_position": float(FULL_BYTES * manifest.vocab_size),
                         "n_positions": manifest.n_examples,
                         "vocab_size": manifest.vocab_size})
