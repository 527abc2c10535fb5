"""Latency of the Reliability page's temperature slider at 1M stored predictions.

Times `first_core.views.rescaling.calibration_view` (exactly what the page calls on every slider move:
re-scale the stored probabilities, then accuracy, ECE, MCE, Brier, NLL, trust and the
reliability bins) and compares it with a naive baseline measured in the same run: the same
numbers computed row by row in Python (the way a first dashboard prototype would loop),
timed on a subsample and scaled linearly to the full size. Target: <= 100 ms per move.

Then the panel's "acting on the confidence" part (`views.selective.selective_view` on the
re-scaled confidences: one sort, AUROC, AURC, the deferral threshold and the plotted curve),
against a per-item Python loop in the same run (scaled linearly from a subsample, which
flatters the n log n baseline), and the radix sort it uses against `np.sort`:

    RATIO risk_coverage_ms[1M] = ...  (target <= 100 ms)  PASS|MISS

    python benchmarks/bench_dashboard.py [--quick] [--n 1000000] [--naive-n 20000]
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

from benchmarks._common import print_machine, report  # noqa: E402
from first_core.views import plots  # noqa: E402
from first_core.kernels.sort import sort_nonnegative  # noqa: E402
from first_core.views import rescaling, run_arrays, selective  # noqa: E402

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


def naive_selective(conf: np.ndarray, ok: np.ndarray, t: float) -> dict[str, float]:
    """AUROC, AURC and the threshold's counts, one item at a time (sorted pairs, tie groups
    found by comparing neighbours)."""
    pairs = sorted(zip(conf.tolist(), ok.tolist()), reverse=True)
    n, n_right = len(pairs), int(sum(ok.tolist()))
    n_wrong = n - n_right
    answered = wrong = 0
    aurc = twice_auc = 0.0
    answered_t = wrong_t = 0
    i = 0
    while i < n:
        j, group_wrong = i, 0
        while j < n and pairs[j][0] == pairs[i][0]:
            group_wrong += not pairs[j][1]
            j += 1
        group_right = (j - i) - group_wrong
        answered, wrong = j, wrong + group_wrong
        aurc += (j - i) * wrong / answered
        twice_auc += group_right * (2 * (n_wrong - wrong) + group_wrong)
        if pairs[i][0] >= t:
            answered_t, wrong_t = answered, wrong
        i = j
    return {"auroc": twice_auc / (2 * n_right * n_wrong), "aurc": aurc / n,
            "answered": answered_t, "wrong": wrong_t}


def selective_section(arrays: run_arrays.PredictionArrays, n: int, naive_n: int,
                      repeats: int) -> None:
    """The risk-coverage curve and threshold at n predictions: RATIO lines."""
    label = "1M" if n == 1_000_000 else f"{n // 1000}k"
    scaled = {c: rescaling.rescale(arrays, c, "logit", "paper") for c in (0.5, 2.0)}
    selective.selective_view(scaled[0.5].confidence[:100], scaled[0.5].correct[:100], 0.5)
    ms = max(best_ms(lambda: selective.selective_view(s.confidence, s.correct, 0.5), repeats)
             for s in scaled.values())
    conf, ok = scaled[0.5].confidence, scaled[0.5].correct
    view = selective.selective_view(conf[:naive_n], ok[:naive_n], 0.5)
    slow = naive_selective(conf[:naive_n], ok[:naive_n], 0.5)
    assert abs(view.auroc - slow["auroc"]) < 1e-12 and abs(view.aurc - slow["aurc"]) < 1e-12
    assert (view.at.answered, view.at.wrong) == (slow["answered"], slow["wrong"])
    naive_ms = best_ms(lambda: naive_selective(conf[:naive_n], ok[:naive_n], 0.5), 1) \
        * n / naive_n
    print(f"acting on the confidence at n = {n:,} (sort, AUROC, AURC, threshold, "
          f"{selective.PLOT_POINTS}-point curve), slowest of two temperatures: {ms:.1f} ms; "
          f"naive per-item Python {naive_ms:,.0f} ms (measured on {naive_n:,}, scaled)")
    report(f"risk_coverage_ms[{label}]", ms, "<= 100 ms", ms <= 100.0, unit="")
    report(f"naive_loop/risk_coverage[{label}]", naive_ms / ms)
    keys = (conf.view(np.int64) << 1) | ok
    numpy_ms, radix_ms = (best_ms(lambda: fn(keys), repeats) for fn in (np.sort, sort_nonnegative))
    report(f"np_sort/radix_sort[{label}]", numpy_ms / radix_ms)


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
    parser.add_argument("--quick", action="store_true",
                        help="100k predictions, 2k naive rows: checks that it runs")
    args = parser.parse_args()
    if args.quick:
        args.n, args.naive_n = 100_000, 2_000
    print_machine("bench_dashboard: the Reliability page's slider path")
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
    scaled = rescaling.rescale(arrays, 0.5, "logit", "option")
    conf, ok = (a[:selective.BOOT_MAX_N] for a in (scaled.confidence, scaled.correct))
    ms = best_ms(lambda: selective.selective_view(conf, ok, 0.5), 3)
    print(f"AUROC and AURC cards with their bootstrap intervals at their largest "
          f"n = {selective.BOOT_MAX_N:,}: {ms:.1f} ms")
    selective_section(arrays, args.n, args.naive_n, 3)
    return 0


if __name__ == "__main__":
    sys.exit(main())
