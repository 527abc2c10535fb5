"""Which CPU kernels torch uses, so that a run's numbers can be the same on every x86 CPU.

Training the tiny models is deterministic on one machine, but not across machines: torch
(ATen), MKL and oneDNN each pick their kernels by the CPU, and different kernels add in
different orders, so the last bits of a gradient differ and, after a few thousand steps, the
second digit of a metric.

`cpu_kernels = "avx2"` (the embedded configs, whose figures the README quotes) pins each
library through its own documented switch: ATen's and oneDNN's AVX2 kernels, which every
x86-64 machine of the last decade has, and MKL's *compatible* path (MKL_CBWR=COMPATIBLE,
SSE2 code, slower for large matrices), because MKL honours its AVX2 branch on Intel CPUs
only: on AMD it reports `CNR:AUTO` (MKL_VERBOSE=1) for MKL_CBWR=AVX2 and picks its own
kernels by CPU generation. Measured: with MKL_CBWR=AVX2 the demo printed the same rows on an
Intel Xeon and an AMD Zen 3 (AVX2), but other distillation rows on AMD Zen 4 and Zen 5
(AVX-512). COMPATIBLE is the branch MKL documents as giving the same
results on Intel and compatible processors, and it reports `CNR:COMPATIBLE` on AMD.

The default, "native", lets every library use the best the CPU offers (the faster choice
for your own models). Pinning works through environment variables the libraries read once,
when their first kernel runs: the command line pins before torch is imported; a process that
has already run torch code keeps what it has (with a warning). Same thread count assumed: a
parallel reduction's order depends on it too.
"""

from __future__ import annotations

import logging
import os
import platform
import sys

log = logging.getLogger(__name__)

# the libraries' documented switches: ATen's dispatch, MKL's Conditional Numerical
# Reproducibility (COMPATIBLE: the one branch MKL honours on every vendor's CPU; STRICT:
# bitwise, also for the functions CNR alone leaves free), oneDNN's ISA
AVX2_ENV = {"ATEN_CPU_CAPABILITY": "avx2", "MKL_CBWR": "COMPATIBLE,STRICT",
            "ONEDNN_MAX_CPU_ISA": "AVX2"}


def _has_avx2() -> bool:
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return False
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            return any(line.startswith("flags") and "avx2" in line.split() for line in f)
    except OSError:
        return False


def pin_cpu_kernels(setting: str) -> bool:
    """Apply `cpu_kernels` (validated by the config: "native" or "avx2") to this process.

    Returns whether the AVX2 kernels are pinned. A variable the user already set is kept.
    """
    if setting == "native":
        return False
    if not _has_avx2():
        log.warning("cpu_kernels = %r: this CPU (%s) has no AVX2; torch uses its native "
                    "kernels, so the numbers may differ in the last digits from the README's",
                    setting, platform.machine())
        return False
    missing = {k: v for k, v in AVX2_ENV.items() if os.environ.get(k) != v}
    if missing and "torch" in sys.modules:
        log.warning("cpu_kernels = %r: torch was imported before the run started, so its CPU "
                    "kernels may be fixed already (run from the command line to pin them); "
                    "the numbers may differ in the last digits from the README's", setting)
    for key, value in missing.items():
        os.environ.setdefault(key, value)
    return all(os.environ[k] == v for k, v in AVX2_ENV.items())


def cpu_kernels_in_use() -> str:
    """What this process runs on, for a run's records: ATen's capability and MKL's path."""
    import torch

    return (f"{torch.backends.cpu.get_cpu_capability()}"
            f" (MKL_CBWR={os.environ.get('MKL_CBWR', 'unset')})")
