"""Does a pinned run (`cpu_kernels = "avx2"`) store the same bits on another CPU?

Runs one seed of a config twice from this checkout, in two scratch folders, the second
time on a simulated other CPU: every library on the pipeline's path is told, through its own
CPU-feature switch, that the machine has no AVX-512 (numpy's runtime dispatch, numba's host
target, MKL's and oneDNN's instruction sets). Then it compares, byte for byte, what each run
stored: the teacher's top-k files, the chosen temperature, every model's weights and every
evaluation's predictions and metrics. Exit 0 when all are equal, 1 otherwise.

`--control` also unpins MKL in the second run (MKL_CBWR=AUTO, MKL's default on every CPU),
the state before numerics.py pinned its COMPATIBLE branch: the check must then report DIFF,
which shows it can fail.

    python scripts/cpu_repro_check.py                      # demo, seed 0 (about 3 minutes)
    python scripts/cpu_repro_check.py --control            # the same with MKL unpinned: DIFF

One machine can only simulate: what MKL does on another vendor's CPU is not something a
switch can show (on AMD it ignores MKL_ENABLE_INSTRUCTIONS), which is why the pin uses the
branch MKL documents as the same on every x86 CPU (first_core/numerics.py).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run as `python scripts/cpu_repro_check.py` from anywhere
COMPARED = ("topk", "calibration.json", "models", "eval")


def no_avx512_env() -> dict[str, str]:
    """The libraries' own switches for a CPU without AVX-512 (numpy's names vary by version:
    every dispatch target above AVX2 is turned off)."""
    from numpy._core._multiarray_umath import __cpu_dispatch__

    above_avx2 = [t for t in __cpu_dispatch__ if "AVX512" in t or t == "X86_V4"]
    env = {"NUMBA_CPU_NAME": "haswell", "MKL_ENABLE_INSTRUCTIONS": "AVX2",
           "ONEDNN_MAX_CPU_ISA": "AVX2"}
    if above_avx2:
        env["NPY_DISABLE_CPU_FEATURES"] = " ".join(above_avx2)
    return env


def run_seed(config: Path, seed: int, work: Path, extra_env: dict[str, str],
             embedded: bool) -> Path:
    """One seed of `config` with its runs and store under `work` (and, for the `embedded`
    task, its own copy of the data); returns the seed folder."""
    env = {**os.environ, **extra_env}
    cmd = [sys.executable, "-m", "first_core", "run", "--config", str(config),
           "--seeds", str(seed), "--store", str(work / "first.duckdb"),
           "--set", f'runs_dir="{work / "runs"}"']
    if embedded:
        cmd += ["--set", f'data.dir="{work / "data"}"']
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if proc.returncode:
        sys.exit(f"the run failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    (folder,) = (work / "runs").glob(f"*/seed{seed}")
    return folder


def fingerprint(path: Path) -> str:
    """sha256 of the file; of a JSON record without `config_hash`, which covers the run's
    folders (each run has its own by construction)."""
    data = path.read_bytes()
    if path.suffix == ".json":
        record = json.loads(data)
        record.pop("config_hash", None)
        data = json.dumps(record, sort_keys=True).encode()
    return hashlib.sha256(data).hexdigest()


def stored_files(folder: Path) -> dict[str, str]:
    """Fingerprint of each compared file (weights only under models/: checkpoints hold
    timings)."""
    out = {}
    for name in COMPARED:
        top = folder / name
        for path in sorted(top.rglob("*") if top.is_dir() else [top]):
            if not path.is_file() or (name == "models" and path.suffix != ".safetensors"):
                continue
            out[str(path.relative_to(folder))] = fingerprint(path)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", type=Path, default=ROOT / "configs" / "demo.toml")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--control", action="store_true",
                    help="unpin MKL in the second run: the check must then fail")
    args = ap.parse_args(argv)
    from first_core.config.loading import load_config
    from first_core.errors import FirstError

    config = args.config.resolve()
    try:  # a missing, folder or non-TOML --config: one line, as the CLI says it
        embedded = load_config(config).data.embedded
    except FirstError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    other_cpu = no_avx512_env()
    if args.control:
        other_cpu["MKL_CBWR"] = "AUTO,STRICT"
    with tempfile.TemporaryDirectory(prefix="cpu_repro_") as tmp:
        print(f"run 1: {config.name}, seed {args.seed}, this CPU", flush=True)
        a = stored_files(run_seed(config, args.seed, Path(tmp, "a"), {}, embedded))
        print("run 2: the same on a simulated CPU: "
              + " ".join(f"{k}={v}" for k, v in other_cpu.items()), flush=True)
        b = stored_files(run_seed(config, args.seed, Path(tmp, "b"), other_cpu, embedded))
    differ = sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))
    for key in sorted(a.keys() | b.keys()):
        print(("DIFF " if key in differ else "SAME ") + key)
    print(f"{len(a) - len(differ)} of {len(a | b)} stored files identical"
          + ("" if differ else ": the run does not depend on the simulated CPU"))
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main())
