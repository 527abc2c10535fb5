"""How each cost grows with the work: ECE, the grid search, the slider and top-k extraction.

    python benchmarks/bench_scaling.py [--quick] [--threads 2] [--max-n 10000000]
                                       [--extract-sizes 1000,3000,10000]

Series, each timed at N = 1e4, 1e5, 1e6 and 1e7 (a point is skipped, and says so, when its
estimated memory exceeds half of what the machine has available):

- `ece`: `expected_calibration_error` of N confidences (10 uniform bins);
- `grid_search`: `calibrate.search_temperature` over 20 temperatures (FIRST mode) on N raw
  top-5 rows (the cost per temperature is the same as in bench_calibration's 200);
- `slider`: `rescaling.calibration_view` (FIRST transform, paper convention, no bootstrap) on N
  stored predictions: one move of the dashboard's slider, its per-mode cache built before;
- `extract`: `topk.extract_topk` with the tiny preset teacher on N examples. A forward costs
  milliseconds per example on a CPU, so this series uses `--extract-sizes` instead.

Every series runs in its own fresh process, points in increasing N, so the process's peak RSS
(`ru_maxrss`) after a point is that point's peak (data included). Each time is the best of 3
runs (fewer once a point has taken 20 s; extraction: best of 2 within 60 s). The log-log slope
is the least-squares slope of log(seconds) against log(N) over the points: 1 is linear, the
target is <= 1.1. Fixed costs make small points
relatively dear, which can only lower the slope; the series table shows the raw points.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _common import parse_args, print_machine, report

TARGET = 1.1
SIZES = (10_000, 100_000, 1_000_000, 10_000_000)
QUICK_SIZES = (2_000, 8_000, 32_000)
SERIES = ("ece", "grid_search", "slider", "extract")
BYTES_PER_ROW = {"ece": 60, "grid_search": 150, "slider": 700}  # measured peaks, rounded up
GRID = np.linspace(0.05, 2.0, 20)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def available_mb() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) / 1024
    return float("inf")


def topk_rows(n: int, k: int = 5, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Raw top-k rows (sorted, tail dropped) and gold columns, lean enough for N = 1e7."""
    rng = np.random.default_rng(seed)
    p = rng.dirichlet(np.full(k + 1, 0.5), n)[:, :k]
    p = -np.sort(-p, axis=1)
    gold = (np.cumsum(p, axis=1) < rng.random((n, 1))).sum(axis=1)
    return p, np.where(gold < k, gold, -1)


def best_of(fn, repeats: int = 3, budget_s: float = 20.0) -> float:
    """Best of `repeats` runs, fewer once they have taken `budget_s` (the largest points)."""
    times: list[float] = []
    while len(times) < repeats and sum(times) < budget_s:
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def child(series: str, sizes: list[int], threads: int) -> None:
    """Time one series in this fresh process, one JSON line per point."""
    from first_core.calibration import transforms as calibrate

    calibrate.THREADS = threads
    if series == "extract":
        return extract_child(sizes)
    from first_core.metrics.binning import expected_calibration_error
    from first_core.views import rescaling, run_arrays

    for n in sizes:
        need = BYTES_PER_ROW[series] * n / 2**20
        if need > available_mb() / 2:
            print(json.dumps({"n": n, "skipped": f"needs ~{need:,.0f} MiB"}), flush=True)
            continue
        rng = np.random.default_rng(n)
        if series == "ece":
            conf = rng.random(n)
            correct = rng.random(n) < conf
            expected_calibration_error(conf[:1000], correct[:1000])  # compile / load
            sec = best_of(lambda: expected_calibration_error(conf, correct))
        elif series == "grid_search":
            p, labels = topk_rows(n)
            calibrate.search_temperature(p[:1000], labels[:1000], grid=GRID)
            sec = best_of(lambda: calibrate.search_temperature(p, labels, grid=GRID))
        else:
            p, _ = topk_rows(n, k=4)
            option = p / p.sum(axis=1, keepdims=True) * 0.9
            gold = rng.integers(0, 4, n)
            arrays = run_arrays.PredictionArrays(p, gold == 0, option, gold)
            rescaling.calibration_view(arrays, 0.5, "first", "paper", n_boot=0)  # the cache
            sec = best_of(lambda: rescaling.calibration_view(arrays, 0.3, "first", "paper",
                                                         n_boot=0))
        print(json.dumps({"n": n, "seconds": sec, "peak_mb": peak_rss_mb()}), flush=True)


def extract_child(sizes: list[int]) -> None:
    from _common import tiny_setup

    from first_core.models.loading import load_model
    from first_core.knowledge.answer_topk import extract_topk

    with tempfile.TemporaryDirectory(prefix="bench_scaling-") as tmp:
        setup = tiny_setup(Path(tmp), n_train=max(sizes), roles=("teacher",))
        model, tok = load_model(setup.teacher_dir, device="cpu")
        extract_topk(model, tok, setup.train[:64], Path(tmp) / "warm", progress=False)
        for n in sizes:
            sec = best_of(lambda: extract_topk(model, tok, setup.train[:n], Path(tmp) / "s",
                                               k=5, coverage_k=100, dtype="float16",
                                               progress=False), 2, budget_s=60.0)
            print(json.dumps({"n": n, "seconds": sec, "peak_mb": peak_rss_mb()}), flush=True)


def run_series(series: str, sizes: list[int], threads: int) -> list[dict]:
    cmd = [sys.executable, __file__, "--threads", str(threads), "--child", series,
           "--sizes", ",".join(map(str, sizes))]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{series} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]


def slope(points: list[dict]) -> float | None:
    timed = [p for p in points if "seconds" in p]
    if len(timed) < 2:
        return None
    return float(np.polyfit(np.log([p["n"] for p in timed]),
                            np.log([p["seconds"] for p in timed]), 1)[0])


def main() -> None:
    args = parse_args(__doc__, max_n=(int, 10_000_000, "largest N of the array series"),
                      extract_sizes=(str, "1000,3000,10000", "N of the extraction series"),
                      child=(str, None, "internal: run one series"),
                      sizes=(str, None, "internal"))
    if args.child:
        child(args.child, [int(s) for s in args.sizes.split(",")], args.threads)
        return
    sizes = list(QUICK_SIZES if args.quick else [n for n in SIZES if n <= args.max_n])
    extract_sizes = [32, 64, 128] if args.quick else [int(s) for s in
                                                       args.extract_sizes.split(",")]
    print_machine(f"bench_scaling: cost against N (array series N = {sizes}, extraction "
                  f"N = {extract_sizes}), {args.threads} thread(s), fresh process per series")
    results = {s: run_series(s, extract_sizes if s == "extract" else sizes, args.threads)
               for s in SERIES}
    print(f"\n{'series':>12} {'N':>10} {'seconds':>10} {'ns / item':>10} {'peak RSS MiB':>13}")
    for series, points in results.items():
        for p in points:
            if "seconds" in p:
                print(f"{series:>12} {p['n']:>10} {p['seconds']:>10.4f} "
                      f"{1e9 * p['seconds'] / p['n']:>10.1f} {p['peak_mb']:>13.1f}")
            else:
                print(f"{series:>12} {p['n']:>10}   skipped: {p['skipped']}")
    print()
    for series, points in results.items():
        s = slope(points)
        if s is not None:
            report(f"loglog_slope[{series}]", s, f"<= {TARGET}", s <= TARGET, unit="")


if __name__ == "__main__":
    main()
