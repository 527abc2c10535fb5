"""Coverage of the teacher's top-K: streamed while a store is extracted, kept in its manifest,
and turned into the `topk_coverage` table rows.

Both extractions measure, from the same top-`coverage_k` they keep the top-k of, how much
probability mass the K most likely tokens hold (K = 1..coverage_k) without keeping per-row
vectors: a fixed-size histogram per K (`CoverageAccumulator`), so memory does not grow with
the data set, saved per rank and merged by rank 0 into the manifest's `coverage`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from .manifest import DTYPES, Manifest

ID_BYTES = 4  # int32 token ids
FULL_BYTES = 2  # a full-vocabulary distribution is counted in fp16
COVERAGE_BINS = 2000  # histogram resolution of the coverage percentiles (bin means are kept)
PERCENTILES = (10, 50, 90)
_FLUSH_ROWS = 8192  # rows of coverage vectors buffered between histogram updates


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


def coverage_table(manifest: Manifest) -> pd.DataFrame:
    """Rows of the store's `topk_coverage` table (without `run_id`), one per K.

    One position is one row of the store: an example's answer position, or one response
    token. `bytes_per_position` is the payload needed per position: at K = k the measured
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
                         "n_positions": manifest.n_positions,
                         "vocab_size": manifest.vocab_size})
