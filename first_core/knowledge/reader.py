"""Reading a top-k store of either layout: its shards checked one by one (`iter_shards`), or
the whole store as arrays (`load_topk`), refused when made for another teacher, data set or
vocabulary, and with the float16 rows of earlier versions repaired (`fit_rounding`).

Stores written by earlier versions are read as they are: the bytes did not change.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ..errors import StoreError
from .manifest import MANIFEST, TARGET_COLUMN, TOKENS, Manifest, check_expected, read_manifest
from .shards import PAYLOAD


@dataclass(frozen=True)
class TopK:
    """A loaded top-k store: row i is target `positions[i]` of example `example_ids[i]`."""

    ids: np.ndarray  # int32 [N, k], most likely first
    probs: np.ndarray  # float64 [N, k], raw (rows may sum to < 1)
    example_ids: np.ndarray  # str [N]
    gold_ids: np.ndarray  # int32 [N]: the target token (the answer's, or the response token)
    gold_rank: np.ndarray  # int64 [N]: column of the target token in `ids`, -1 if absent
    # int32 [N]: index of the target within the response; all 0 in the answer layout (an
    # answer is a response one token long)
    positions: np.ndarray
    manifest: Manifest


def iter_shards(store_dir: str | os.PathLike[str], manifest: Manifest | None = None,
                columns: Sequence[str] | None = None, layout: str | None = None
                ) -> Iterator[pa.Table]:
    """Yield each shard (its `columns`, default all) as an Arrow table in row order, checking
    it against the manifest (read here unless given, refused unless of `layout` if given)."""
    folder = Path(store_dir)
    manifest = manifest or read_manifest(folder, layout)
    for shard in manifest.shards:
        path = folder / shard["file"]
        try:
            table = pq.read_table(path, columns=list(columns) if columns else None)
        except FileNotFoundError:
            raise StoreError(f"{path}: shard listed in the manifest is missing") from None
        except (pa.ArrowException, OSError) as exc:
            raise StoreError(f"{path}: unreadable Parquet shard (truncated or corrupt?): "
                             f"{exc}") from None
        if table.num_rows != shard["rows"]:
            raise StoreError(f"{path}: {table.num_rows} rows, the manifest says {shard['rows']}")
        for col in PAYLOAD:
            if col not in table.column_names:
                continue
            lengths = pc.list_value_length(table.column(col))
            if table.num_rows and pc.any(pc.not_equal(lengths, manifest.k)).as_py():
                raise StoreError(f"{path}: column {col} has rows whose length is not "
                                 f"k={manifest.k}")
        yield table


# A float16 entry x is off by at most x * 2**-11 (half a unit in the last place), so rounded
# to nearest a row summing to <= 1 can sum to at most 1 + 2**-11 (plus a few subnormal ulps).
_F16_OVERSHOOT = 2.0 ** -11 + 2.0 ** -20


def fit_rounding(probs: np.ndarray, manifest: Manifest, folder: Path) -> np.ndarray:
    """Rows of a float16 store written by round-to-nearest (before `shards.round_down`) can
    sum a hair above 1; scale those back to 1. A larger excess is not rounding: refuse it."""
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


def load_topk(store_dir: str | os.PathLike[str], expect_vocab_size: int | None = None,
              expect_dataset_hash: str | None = None, expect_teacher: str | None = None,
              layout: str | None = None) -> TopK:
    """Read a whole store into arrays, refusing one made for another teacher or data set (or,
    with `layout`, one of the other layout)."""
    folder = Path(store_dir)
    manifest = read_manifest(folder, layout)
    check_expected(manifest, folder / MANIFEST, vocab_size=expect_vocab_size,
                   dataset_hash=expect_dataset_hash, teacher=expect_teacher)
    tables = list(iter_shards(folder, manifest))
    table = pa.concat_tables(tables) if tables else None
    n = table.num_rows if table is not None else 0
    if n != manifest.n_positions:
        raise StoreError(f"{folder}: shards hold {n} rows, the manifest says "
                         f"{manifest.n_positions}")
    k = manifest.k

    def flat(col: str, np_type: type) -> np.ndarray:
        values = pc.list_flatten(table.column(col)).to_numpy()
        return values.astype(np_type).reshape(n, k)

    probs = fit_rounding(flat("topk_probs", np.float64), manifest, folder)
    positions = (table.column("position").to_numpy().astype(np.int32)
                 if manifest.layout == TOKENS else np.zeros(n, dtype=np.int32))
    return TopK(ids=flat("topk_ids", np.int32), probs=probs,
                example_ids=table.column("example_id").to_numpy(zero_copy_only=False),
                gold_ids=table.column(TARGET_COLUMN[manifest.layout]).to_numpy()
                .astype(np.int32),
                gold_rank=table.column("gold_rank_in_topk").to_numpy().astype(np.int64),
                positions=positions, manifest=manifest)
