"""Calibration core: a 200-temperature grid search and ECE at scale, against torchmetrics.

    python benchmarks/bench_calibration.py --threads 2 [--quick] [--n 1000000] [--k 5]

Seconds are printed as plain lines, the ratios as `RATIO` lines (see _common.py). Measured in
one run, with the same number of threads on both sides (torch's intra-op threads
and our grid-search thread pool, `--threads`):
- `search_temperature` over 200 temperatures (first mode) on N x k raw top-k rows, N = 1M
  (target <= 1.5 s on 2 cores; the compiled kernel is warmed up first), and the ratio to a
  loop that rescales the rows in torch and calls torchmetrics' `binary_calibration_error`
  once per temperature (target >= 20x). To keep the
  run short the loop times `--tm-temps` of the 200 temperatures on the same N rows and is
  scaled to 200 (its cost per temperature is constant); the output says so.
- the dashboard's post-hoc fit (`views.rescaling.fit_temperature`, T by validation NLL) on
  N stored predictions (target <= 1 s at 1M), beside its "best c" ECE search over the
  slider's values on the same arrays.
- ECE of 10 x N predictions: ours and torchmetrics'.
"""

from __future__ import annotations

import dataclasses
import statistics
import time

import numpy as np
from _common import interleaved_medians, parse_args, print_machine, report

from first_core.calibration import transforms as calibrate
from first_core.metrics.binning import expected_calibration_error


def topk_data(n: int, k: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Raw top-k rows like a teacher's (sorted, tail dropped) and gold columns (or -1)."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(n, k + 20)) * 2.5
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    p = -np.sort(-p, axis=1)
    gold = (p.cumsum(axis=1) < rng.random((n, 1))).sum(axis=1)  # sampled from the teacher
    return np.ascontiguousarray(p[:, :k]), np.where(gold < k, gold, -1)


def torchmetrics_loop(p, labels, grid: np.ndarray) -> list[float]:
    """The baseline: rescale in torch, then torchmetrics' calibration error, per temperature."""
    import torch
    from torchmetrics.functional.classification import binary_calibration_error

    out = []
    for c in grid:
        conf, pred = torch.softmax(p / float(c), dim=1).max(dim=1)
        out.append(float(binary_calibration_error(conf, (pred == labels).long(), n_bins=10)))
    return out


def stored_predictions(n: int, seed: int = 2):
    """`PredictionArrays` like a store's split: four answer letters' raw probabilities from
    over-confident logits, the gold sampled from a softer distribution, a top-5."""
    from first_core.views.run_arrays import PredictionArrays

    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, 4)) * 3.0
    soft = np.exp(z / 2.5 - z.max(axis=1, keepdims=True) / 2.5)
    gold = (soft.cumsum(axis=1) / soft.sum(axis=1, keepdims=True) < rng.random((n, 1))).sum(1)
    options = np.exp(z - z.max(axis=1, keepdims=True))
    options *= 0.97 / options.sum(axis=1, keepdims=True)
    top = np.hstack([-np.sort(-options, axis=1), np.full((n, 1), 0.01)])
    return PredictionArrays(topk_probs=top, correct=options.argmax(axis=1) == gold,
                            option_probs=options, gold_option=gold.clip(max=3))


def posthoc_fit(n: int, repeats: int = 3) -> None:
    """The dashboard's "fit c on validation (NLL)" on n stored predictions, from arrays loaded
    but never scaled (the centred scores are computed inside the timing, as on a first
    click), beside the page's "best c" ECE search over the slider's values on such arrays."""
    from first_core.views import rescaling

    stored = stored_predictions(n)

    def fresh():  # the same rows, validated again, with no cached centred scores
        return dataclasses.replace(stored)

    rescaling.fit_temperature(stored_predictions(1000), "logit")  # load the compiled kernel
    times: dict[str, list[float]] = {"fit": [], "grid": []}
    out: dict[str, float] = {}
    for _ in range(repeats):  # interleaved, so a change of load hits both alike
        for name, run in (("fit", lambda a: rescaling.fit_temperature(a, "logit")),
                          ("grid", lambda a: rescaling.best_temperature(a, "logit", "option"))):
            arrays = fresh()
            start = time.perf_counter()
            value = run(arrays)
            times[name].append(time.perf_counter() - start)
            out[name] = value
    fit_s, grid_s = (statistics.median(times[k]) for k in ("fit", "grid"))
    print(f"post-hoc fit on {n:,} stored predictions: T = {out['fit']:.4f} in "
          f"{1000 * fit_s:.0f} ms; the ECE search over the slider's "
          f"{len(rescaling.TEMPERATURE_GRID)} values: best c = {out['grid']:g} in "
          f"{1000 * grid_s:.0f} ms")
    at_1m = n == 1_000_000
    report(f"posthoc_fit_ms[{n}]", 1000 * fit_s, "<= 1000 ms at N = 1M" if at_1m else "",
           fit_s <= 1.0 if at_1m else None, unit="")
    report(f"ece_grid_best_c/posthoc_fit[{n}]", grid_s / fit_s)


def main() -> None:
    args = parse_args(__doc__, n=(int, 1_000_000, "predictions (rows)"),
                      k=(int, 5, "top-k columns"), temps=(int, 200, "grid size"),
                      tm_temps=(int, 6, "temperatures timed in the torchmetrics loop"))
    import torch
    from torchmetrics.functional.classification import binary_calibration_error

    if args.quick:
        args.n, args.tm_temps = 100_000, 3
    calibrate.THREADS = args.threads
    print_machine(f"bench_calibration: N = {args.n:,}, k = {args.k}, {args.temps} temperatures, "
                  f"{args.threads} thread(s) on both sides")

    p, labels = topk_data(args.n, args.k)
    pt, lt = torch.from_numpy(p), torch.from_numpy(labels)
    grid = np.linspace(0.05, 2.0, args.temps)
    sub = grid[np.linspace(0, len(grid) - 1, args.tm_temps).round().astype(int)]
    out: dict[str, object] = {}
    calibrate.search_temperature(p[:5000], labels[:5000], grid=grid)  # compile / load the kernel
    times = interleaved_medians({
        "ours": lambda: out.update(ours=calibrate.search_temperature(p, labels, grid=grid)),
        "torchmetrics": lambda: out.update(tm=torchmetrics_loop(pt, lt, sub))},
        repeats=2, warmup=0)
    result = out["ours"]
    t_tm = times["torchmetrics"] * len(grid) / len(sub)
    diff = np.abs(np.asarray(out["tm"]) - result.ece[np.searchsorted(result.grid, sub)]).max()
    print(f"grid search: ours {times['ours']:.3f} s (best c = {result.best:.3f}, "
          f"ECE {result.best_ece:.4f}); torchmetrics loop {times['torchmetrics']:.3f} s for "
          f"{len(sub)} temperatures, scaled x{len(grid) / len(sub):g} to {t_tm:.2f} s; "
          f"max |ECE difference| on those temperatures {diff:.1e} (bin-edge convention)")
    cpu = time.process_time()  # all threads' CPU seconds: what a shared machine cannot steal
    calibrate.search_temperature(p, labels, grid=grid)
    print(f"grid search CPU time (all threads, one more run): {time.process_time() - cpu:.3f} s")
    at_1m = args.n == 1_000_000
    report(f"grid_search_seconds[{args.temps}T x {args.n}]", times["ours"],
           "<= 1.5 s at N = 1M" if at_1m else "", times["ours"] <= 1.5 if at_1m else None,
           unit=" s")
    report(f"torchmetrics_loop/grid_search[{args.temps}T]", t_tm / times["ours"], ">= 20x",
           t_tm / times["ours"] >= 20)

    posthoc_fit(args.n)

    big = 10 * args.n
    rng = np.random.default_rng(1)
    conf = rng.random(big)
    correct = rng.random(big) < conf ** 1.3
    ct, ok = torch.from_numpy(conf), torch.from_numpy(correct).long()
    start = time.perf_counter()
    ece = expected_calibration_error(conf, correct)
    t_ece = time.perf_counter() - start
    start = time.perf_counter()
    tm_ece = float(binary_calibration_error(ct, ok, n_bins=10))
    t_tm_ece = time.perf_counter() - start
    print(f"ECE of {big:,} predictions: ours {t_ece:.3f} s ({ece:.5f}), torchmetrics "
          f"{t_tm_ece:.3f} s ({tm_ece:.5f})")
    report(f"torchmetrics_ece/ece[{big}]", t_tm_ece / t_ece)


if __name__ == "__main__":
    main()
