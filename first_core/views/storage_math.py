"""The Top-k coverage page's arithmetic: what storing top-K costs against the full
distribution, in the paper's units."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd


DTYPE_BYTES: dict[str, int] = {"float32": 4, "float16 / bfloat16": 2, "int8": 1}


def disk_usage(ks: Sequence[int] | np.ndarray, n_positions: float, vocab_size: int,
               prob_bytes: int, id_bytes: int = 4) -> pd.DataFrame:
    """Bytes to store top-K (ids + probabilities) versus the full distribution, per K.

    Uncompressed arithmetic, so a user can redo the paper's "terabytes vs gigabytes"
    comparison: full = positions x vocabulary x bytes; top-K = positions x K x (id + prob).
    """
    for name, value in (("n_positions", n_positions), ("vocab_size", vocab_size),
                        ("prob_bytes", prob_bytes), ("id_bytes", id_bytes)):
        if not value > 0:
            raise ValueError(f"{name}: must be positive, got {value!r}")
    ks = np.asarray(ks, dtype=np.float64)
    return pd.DataFrame({"k": ks.astype(int),
                         "topk_bytes": n_positions * ks * (id_bytes + prob_bytes),
                         "full_bytes": np.full(len(ks), float(n_positions) * vocab_size
                                               * prob_bytes)})


def human_bytes(n: float) -> str:
    """1.2e12 -> '1.2 TB' (decimal units, as the paper uses)."""
    units = ("B", "kB", "MB", "GB", "TB", "PB", "EB")
    power = int(np.clip(np.floor(np.log10(max(abs(n), 1)) / 3), 0, len(units) - 1))
    return f"{n / 1000 ** power:.3g} {units[power]}"
