"""Every benchmark runs end to end in `--quick` mode and prints its ratio lines.

Behaviour only: exit status 0, the machine banner, and each expected `RATIO` line with a
finite number and a verdict. Timings on a shared CI machine are noise, so PASS/MISS is not
asserted (except for the store size, which is deterministic).
"""

from __future__ import annotations

import functools
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"
LINE = re.compile(r"^RATIO (?P<name>\S+(?: \S+)*?) = (?P<value>\S+?)(?: B| MiB| s|x)?"
                  r"(?:  \(target [^)]*\))?  (?P<verdict>PASS|MISS|INFO)$", re.M)

EXPECTED = {
    "bench_store.py": ["store_top5_fp16_bytes_per_position@32k", "full_fp16/top5_fp16@32k",
                       "full_fp16/top5_fp16@128k", "measured_full/top5 at the same N",
                       "store_top5_fp16_bytes_per_token@32k"],
    "bench_extract.py": ["extract_throughput/forward_throughput[tiny-teacher]",
                         "extract_throughput/forward_throughput[llama-h256-L4-V32k]",
                         "torch_topk_logsumexp/top_logits[V=32k]",
                         "top_logits_time/forward_time[V=32k]"],
    "bench_distill_step.py": ["first_step/sft_answer_step[tiny presets]",
                              "online_kd_step/sft_answer_step[tiny presets]",
                              "first_step/sft_answer_step[llama V=32k]"],
    "bench_memory.py": ["peak_rss_extract[10x/1x]", "peak_rss_distill[10x/1x]",
                        "peak_rss_extract_tokens[10x/1x]", "peak_rss_distill_tokens[10x/1x]"],
    "bench_calibration.py": ["torchmetrics_loop/grid_search[200T]",
                             "grid_search_seconds[200T x 100000]", "posthoc_fit_ms[100000]",
                             "ece_grid_best_c/posthoc_fit[100000]",
                             "torchmetrics_ece/ece[1000000]"],
    "bench_scaling.py": [f"loglog_slope[{s}]" for s in ("ece", "grid_search", "slider", "extract")],
    "bench_lmeval_import.py": ["lmeval_import_s[3x150]", "lmeval_import_cpu_s[3x150]"],
    "bench_pages.py": ["examples_read_before/after", "examples_rows_read",
                       "reliability_arrays_before/after"],
    "bench_cpu_kernels.py": [f"{c}_over_native[{m}]" for c in ("pinned", "pinned_onednn")
                             for m in ("tiny", "tiny-student", "llama-h576-L6-V49k")]
                            + ["demo_wall_s"],
    "bench_dashboard.py": ["risk_coverage_ms[100k]", "naive_loop/risk_coverage[100k]",
                           "np_sort/radix_sort[100k]"],
}


@functools.cache
def run_quick(script: str) -> dict[str, tuple[float, str]]:
    """{name: (value, verdict)} of the RATIO lines of one `--quick` run (run once per session),
    started from outside the repository to prove the script finds `first_core` itself."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONDONTWRITEBYTECODE": "1"}
    proc = subprocess.run([sys.executable, str(BENCH / script), "--quick"],
                          cwd=ROOT.parent, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"{script} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    assert "# machine:" in proc.stdout and "torch" in proc.stdout
    return {m["name"]: (float(m["value"]), m["verdict"]) for m in LINE.finditer(proc.stdout)}


@pytest.mark.parametrize("script", sorted(EXPECTED))
def test_benchmark_prints_its_ratios(script: str) -> None:
    lines = run_quick(script)
    missing = [name for name in EXPECTED[script] if name not in lines]
    assert not missing, f"{script}: no RATIO line for {missing}; got {sorted(lines)}"
    for name, (value, _) in lines.items():
        assert math.isfinite(value), f"{script}: {name} = {value}"
    for name in EXPECTED[script]:  # sizes, times and their ratios: positive
        if name.startswith("loglog_slope"):  # at --quick sizes a flat series is noise, and a
            continue  # slope near 0 may come out either side of it on a loaded machine
        assert lines[name][0] > 0, f"{script}: {name} = {lines[name][0]}"


def test_store_ratio_is_consistent_with_bytes_per_position() -> None:
    """Full fp16 at 32k is 64000 B a position: the ratio line must be 64000 / bytes-per-position
    (an independent check of the arithmetic), and top-5 fp16 fits in 5 x (4 + 2) = 30 B."""
    lines = run_quick("bench_store.py")
    bpp, verdict = lines["store_top5_fp16_bytes_per_position@32k"]
    ratio, _ = lines["full_fp16/top5_fp16@32k"]
    assert ratio == pytest.approx(2 * 32_000 / bpp, rel=1e-3)
    assert 0 < bpp <= 30 and verdict == "PASS"



GPU_LINES = [f"{name}[{setting}, llama-tiny]" for name, setting in (
    ("extract_throughput/forward_throughput", "answer"),
    ("extract_topk_host_throughput/forward_throughput", "answer"),
    ("predict_throughput/forward_throughput", "answer"),
    ("extract_token_throughput/forward_throughput", "tokens"),
    ("token_eval_throughput/forward_throughput", "tokens"))]


def _bench_gpu(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONDONTWRITEBYTECODE": "1"}
    return subprocess.run([sys.executable, str(BENCH / "bench_gpu.py"), *args], cwd=ROOT.parent,
                          env=env, capture_output=True, text=True, timeout=600, check=False)


def test_gpu_benchmark_skips_without_cuda() -> None:
    """Without CUDA, `bench_gpu.py` prints one SKIP line and exits 0 (so `first_core bench`
    passes on a CPU machine)."""
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present: bench_gpu.py would run for minutes")
    proc = _bench_gpu()
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("SKIP bench_gpu: no CUDA device"), lines


def test_gpu_benchmark_code_runs_on_the_cpu_with_a_tiny_teacher() -> None:
    """The GPU benchmark's own code (teacher made in bf16 on the device, every contender,
    the device path of each stage, the result lines), run on the CPU with a tiny shape."""
    proc = _bench_gpu("--device", "cpu", "--models", "tiny", "--quick")
    assert proc.returncode == 0, f"{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    assert "# machine:" in proc.stdout and "# MISS" not in proc.stdout
    lines = {m["name"]: float(m["value"]) for m in LINE.finditer(proc.stdout)}
    missing = [name for name in GPU_LINES if name not in lines]
    assert not missing, f"no RATIO line for {missing}; got {sorted(lines)}"
    assert all(math.isfinite(lines[n]) and lines[n] > 0 for n in GPU_LINES), lines
