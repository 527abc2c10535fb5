"""Latency of the Reliability page's temperature slider at 1M stored predictions.

Times `first_core.views.rescaling.calibration_view` (exactly what the page calls on every slider move:
re-scale the stored probabilities, then accuracy, ECE, MCE, Brier, NLL, trust and the
reliability bins) and compares it with a naive baseline measured in the same run: the same
numbers computed row by row in Python (the way a first dashboard prototype would loop),
timed on a subsample and scaled linearly to the full size. Target: <= 100 ms per move.

    python benchmarks/bench_dashboard.py [--n 1000000] [--naive-n 20000]
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from first_core import plots
from first_core.views import rescaling, run_arrays# noqa: E402

TARGET_MS = 100.0


def synthetic_arrays(n: int, k: int = 5, m: int = 4, seed: int = 0) -> run_arrays.PredictionArrays:
    """Predictions shaped like the store's: raw top-k (descending) and raw option probs."""
    rng = np.random.default_rng(seed)
    full = rng.dirichlet(np.ones(m + 6), n)
    mass = rng.uniform(0.5, 1.0, (n, 1))
    option = full[:, :m] / full[:, :m].sum(1, keepdims=True) * mass
    topk = -np.sort(-np.hstack([option, full[:, m:] * (1 - mass)]), axis=1)[:, :k]
    gold = np.where(rng.random(n) < 0.7, option.argmax(1), rng.integers(0, m, n))
    return run_arrays.PredictionArrays(topk, gold == option.argmax(1), option, gold)


def naive_view(a: run_arrays.PredictionArrays, c: float, n_bins: int) -> dict[str, float]:
    """The same cards (classic scaling, option convention), one example at a time."""
    conf, ok, brier, nll = [], [], 0.0, 0.0
    for probs, gold in zip(a.option_probs, a.gold_option):
        top = max(math.log(p) for p in probs)
        w = [math.exp((math.log(p) - top) / c) for p in probs]
        q = [x / sum(w) for x in w]
        best = max(range(len(q)), key=q.__getitem__)
        conf.append(q[best])
        ok.append(best == gold)
        brier += sum((x - (j == gold)) ** 2 for j, x in enumerate(q))
        nll -= math.log(max(q[gold], sys.float_info.epsilon))  # floored as metrics does
    sums, counts, hits = [0.0] * n_bins, [0] * n_bins, [0] * n_bins
    for p, y in zip(conf, ok):
        b = min(max(math.ceil(p * n_bins) - 1, 0), n_bins - 1)
        sums[b] += p
        counts[b] += 1
        hits[b] += y
    n = len(conf)
    ece = sum(abs(hits[b] - sums[b]) / n for b in range(n_bins) if counts[b])
    return {"ece": ece, "accuracy": sum(ok) / n, "brier": brier / n, "nll": nll / n}


def best_ms(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1000 * min(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--naive-n", type=int, default=20_000)
    args = parser.parse_args()
    arrays = synthetic_arrays(args.n)
    cs = [0.3, 0.5, 1.0, 2.0]
    print(f"slider recompute at n = {args.n:,} predictions (k = 5 top-k, 4 options), "
          f"interval resamples at this n: {rescaling.interval_resamples(args.n)}; "
          f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f} (other jobs slow "
          "every figure alike; compare the ratio)")
    t0 = time.perf_counter()
    rescaling.calibration_view(arrays, 0.5, "first", "paper")
    print(f"  first move after loading: {1000 * (time.perf_counter() - t0):.1f} ms "
          "(includes the per-mode cache of the c-independent scores)")
    worst = 0.0
    for mode, convention in (("logit", "option"), ("first", "paper"), ("logit", "paper")):
        ms = max(best_ms(lambda: rescaling.calibration_view(arrays, c, mode, convention), 3)
                 for c in cs)
        worst = max(worst, ms)
        print(f"  {mode:5s} / {convention:6s}: {ms:7.1f} ms per slider move (worst c, best of 3)")
    ms = max(best_ms(lambda: rescaling.calibration_view(arrays, c, "logit", "option",
                                                    strategy="quantile"), 3) for c in cs)
    worst = max(worst, ms)
    print(f"  equal-mass bins    : {ms:7.1f} ms")

    sub = run_arrays.PredictionArrays(arrays.topk_probs[:args.naive_n], arrays.correct[:args.naive_n],
                                 arrays.option_probs[:args.naive_n],
                                 arrays.gold_option[:args.naive_n])
    fast = rescaling.calibration_view(sub, 0.5, "logit", "option", n_boot=0).cards
    slow = naive_view(sub, 0.5, 10)
    for key, value in slow.items():  # the baseline computes the same numbers
        assert abs(fast[key] - value) < 1e-9, (key, fast[key], value)
    naive_ms = best_ms(lambda: naive_view(sub, 0.5, 10), 1) * args.n / args.naive_n
    print(f"naive per-row Python baseline: {naive_ms:,.0f} ms at n = {args.n:,} "
          f"(measured on {args.naive_n:,} rows, scaled linearly)")
    print(f"speed-up vs naive: {naive_ms / worst:,.0f}x; slowest slider move {worst:.1f} ms "
          f"(target <= {TARGET_MS:.0f} ms: {'met' if worst <= TARGET_MS else 'NOT met'})")

    def panel():  # what one Reliability panel computes per move since issue 12
        scaled = rescaling.rescale(arrays, 0.5, "logit", "paper")
        view = rescaling.summarize(scaled)
        smooth = rescaling.smooth_calibration(scaled.confidence, scaled.correct)
        return plots.reliability_figure(view.bins, smooth=smooth.curve).to_dict()

    panel()
    ms = best_ms(panel, 3)
    print(f"whole panel per move (cards + SmoothECE on {rescaling.SMOOTH_MAX_N:,} sampled rows + "
          f"figure): {ms:.1f} ms")

    boot_n = rescaling.BOOT_MAX_N
    boot = run_arrays.PredictionArrays(arrays.topk_probs[:boot_n], arrays.correct[:boot_n],
                                  arrays.option_probs[:boot_n], arrays.gold_option[:boot_n])
    ms = best_ms(lambda: rescaling.calibration_view(boot, 0.5, "logit", "option"), 3)
    print(f"with the ECE bootstrap interval ({rescaling.BOOT_RESAMPLES} resamples) at its largest "
          f"n = {boot_n:,}: {ms:.1f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
