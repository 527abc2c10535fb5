"""The bootstrap's resampling engine, shared by every interval (`metrics.bootstrap_interval`,
`selective_metrics.bootstrap_intervals`): a metric written as per-group sums of per-example
values (`Decomposed`) is scored on n_boot resamples of the examples without a Python loop over
them, and the same seed and n draw the same resamples for every metric."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ..errors import ConfigError

_BOOT_CELLS = 1 << 22  # resampled indices held at once (n_resamples_in_chunk * n)


@dataclass(frozen=True)
class Decomposed:
    """A metric written as per-group sums of per-example values, so that every bootstrap
    resample costs one gather and one `bincount` per value column."""

    groups: np.ndarray  # group (bin) of each example
    n_groups: int
    values: np.ndarray  # m x n per-example values
    finish: Callable[[np.ndarray, int], np.ndarray]  # (B, n_groups, m) sums, n -> (B,)


def check_bootstrap(n_boot, level) -> tuple[float, float]:
    """Validate the bootstrap settings; the interval's two quantiles."""
    if isinstance(n_boot, bool) or not isinstance(n_boot, (int, np.integer)) or n_boot < 1:
        raise ConfigError(f"n_boot: expected an integer >= 1, got {n_boot!r}")
    if not 0 < level < 1:
        raise ConfigError(f"level: expected a value in (0, 1), got {level!r}")
    return (1 - level) / 2, (1 + level) / 2


def resample_stats(d: Decomposed, n_boot: int, seed: int) -> np.ndarray:
    """`d.finish` of n_boot resamples of the examples, stacked on the first axis.

    Resamples are drawn as an (n_boot, n) index array in chunks of bounded size, each scored
    with one gather and one `bincount` per value, never a loop over examples. The same seed
    and n draw the same resamples for every metric (ECE, AUROC, ... side by side).
    """
    n = d.values.shape[1]
    rng = np.random.default_rng(seed)
    chunk = max(1, _BOOT_CELLS // n)  # depends on n only, so the stream is seed-determined
    stats = []
    for start in range(0, n_boot, chunk):
        b = min(chunk, n_boot - start)
        idx = rng.integers(0, n, size=(b, n))
        keys = (d.groups[idx] + (np.arange(b) * d.n_groups)[:, None]).ravel()
        sums = np.stack([np.bincount(keys, weights=v[idx].ravel(), minlength=b * d.n_groups)
                         for v in d.values], axis=-1).reshape(b, d.n_groups, -1)
        stats.append(d.finish(sums, n))
    return np.concatenate(stats)
