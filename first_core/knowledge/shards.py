"""Writing a top-k store's Parquet shards, in either layout, and summing them up for the manifest.

Each rank writes `part-r{rank}-{index}.parquet`, `shard_size` rows each (`ShardWriter`), into
the `.NAME.partial` folder; rank 0 then collects every rank's shard list, row and gold counts,
payload bytes and coverage histogram (`collect_shards`) for the manifest.

Columns (`shard_table`), the same names and types as earlier versions wrote:

- answer layout, one row per example: `example_id` (string), `topk_ids` (list<int32>),
  `topk_probs` (list<float16|float32>), `gold_token_id` (int32), `gold_rank_in_topk` (int32:
  column of the gold token, -1 if absent);
- token layout, one row per response token, example by example, position by position:
  `example_id`, `position` (int32, 0-based index of the token within the response),
  `token_id` (int32, the response token itself), `gold_rank_in_topk` (int32),
  `topk_ids` (fixed_size_list<int32>[k]), `topk_probs` (fixed_size_list<float>[k]).

Probabilities are stored *raw* (full-vocabulary softmax, not renormalised, so the dropped
tail mass `1 - sum(row)` stays known) and rounded toward zero (`round_down`).
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import StoreError
from .coverage import CoverageAccumulator
from .manifest import ANSWER, DTYPES, MANIFEST, TARGET_COLUMN

PAYLOAD = ("topk_ids", "topk_probs")  # the columns whose on-disk size is measured


def round_down(values: np.ndarray, np_type: type) -> np.ndarray:
    """`values` cast to `np_type`, rounded toward zero rather than to nearest.

    Stored probabilities then never exceed the teacher's, so a row's sum stays <= 1: to
    nearest, a confident teacher's 0.9998 becomes float16 1.0 and the row sums above 1.
    """
    out = values.astype(np_type)
    up = out.astype(values.dtype) > values
    out[up] = np.nextafter(out[up], np_type(0))
    return out


def probs_array(probs: np.ndarray, dtype: str) -> pa.Array:
    """Stored probabilities `[n, k]` as a flat Arrow array of `dtype`, rounded down
    (`round_down`), so a stored row never sums above the teacher's own."""
    pa_type, np_type = DTYPES[dtype]
    return pa.array(round_down(probs.ravel(), np_type), pa_type)


def shard_table(cols: dict[str, np.ndarray], layout: str, dtype: str) -> pa.Table:
    """One shard of `layout` (module doc) from its rows' columns: `example_id`, `target`
    (the target token), `gold_rank_in_topk`, `topk_ids` and `topk_probs` `[n, k]`, and
    `position` in the token layout."""
    n, k = cols["topk_ids"].shape
    ids = pa.array(cols["topk_ids"].ravel().astype(np.int32))
    probs = probs_array(cols["topk_probs"], dtype)
    example_id = pa.array(cols["example_id"], pa.string())
    target = pa.array(cols["target"].astype(np.int32))
    rank = pa.array(cols["gold_rank_in_topk"].astype(np.int32))
    if layout == ANSWER:  # variable-length lists, as the first version wrote them
        offsets = pa.array(np.arange(0, n * k + 1, k, dtype=np.int32))
        return pa.table({"example_id": example_id,
                         "topk_ids": pa.ListArray.from_arrays(offsets, ids),
                         "topk_probs": pa.ListArray.from_arrays(offsets, probs),
                         TARGET_COLUMN[layout]: target, "gold_rank_in_topk": rank})
    return pa.table({"example_id": example_id,
                     "position": pa.array(cols["position"].astype(np.int32)),
                     TARGET_COLUMN[layout]: target, "gold_rank_in_topk": rank,
                     "topk_ids": pa.FixedSizeListArray.from_arrays(ids, k),
                     "topk_probs": pa.FixedSizeListArray.from_arrays(probs, k)})


class ShardWriter:
    """Buffers rows of named columns and writes them as `part-r{rank}-{index}.parquet`,
    `shard_size` rows each, each shard built by `to_table(columns)`."""

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


def payload_bytes(path: Path) -> int:
    """On-disk (compressed) bytes of the ids and probs column chunks of one shard."""
    meta = pq.read_metadata(path)
    return sum(rg.column(c).total_compressed_size
               for rg in (meta.row_group(i) for i in range(meta.num_row_groups))
               for c in range(rg.num_columns)
               if rg.column(c).path_in_schema.split(".")[0] in PAYLOAD)


def clear_store_dir(path: Path) -> None:
    """Remove an earlier top-k store at `path`; refuse to delete anything else."""
    if not path.exists():
        return
    foreign = [p.name for p in path.iterdir()
               if not (p.name == MANIFEST or p.name.startswith("part-"))]
    if foreign:
        raise StoreError(f"{path}: exists and is not a top-k store (holds {foreign[:5]}); "
                         "choose another output folder")
    shutil.rmtree(path)


def collect_shards(folder: Path, width: int) -> dict[str, Any]:
    """Every rank's coverage stats merged (their files removed), and over the shards: the
    manifest's shard list, the row count, the rows whose gold is in the top-k and the
    payload bytes per row (rank 0, before the manifest is written)."""
    coverage = CoverageAccumulator(width)
    for path in sorted(folder.glob("coverage-r*.npz")):
        coverage.merge(CoverageAccumulator.load(path))
        path.unlink()
    shards = sorted(folder.glob("part-r*.parquet"))
    rows = [pq.read_metadata(p).num_rows for p in shards]
    golds = sum(int(np.count_nonzero(pq.read_table(p, columns=["gold_rank_in_topk"])
                                     .column(0).to_numpy() >= 0)) for p in shards)
    payload = sum(payload_bytes(p) for p in shards)
    n = sum(rows)
    return {"coverage": coverage.summary(), "n_positions": n, "n_gold_in_topk": golds,
            "shards": [{"file": p.name, "rows": r} for p, r in zip(shards, rows)],
            "bytes_per_position_measured": payload / max(n, 1)}
