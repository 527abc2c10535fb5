"""Is a refactor pure? The same runs at an old commit and now must store the same bits.

Runs the demo's seed 0 (`configs/demo.toml`) and the instruction setting
(`configs/instruct.toml`, seed 0) twice: in a copy of OLD_COMMIT and in a copy of this
checkout as it is (or of `--new COMMIT`), each in its own scratch folder with its own
embedded data, runs and store. Then compares, byte for byte:

- every stored file of each run folder: the teacher's top-k shards and manifests, the chosen
  temperature, every model's weights and every evaluation's predictions, metrics and
  post-hoc fit (what `scripts/cpu_repro_check.py` compares, `stored_files`);
- every row of the DuckDB store: runs (all but `created_at`), predictions, metrics,
  temperature searches, top-k coverage and examples.

Exit 0 when everything is equal, 1 otherwise. An old commit's fingerprints are kept in
`~/.cache/first-lab/refactor_check/` (a commit never changes), so a second check against the
same commit runs only the new side; `--no-cache` runs both.

`--control` makes a deliberate one-ulp change on the new side (every Trainer's learning
rate is moved to the next float32 up, the precision the weights train in, through a
`sitecustomize` on its PYTHONPATH, which touches no project file): the check must then
report DIFF, which shows it can fail. (A float64 ulp is not enough: it vanishes in the first
float32 product, and the check then rightly reports every file identical.)

    python scripts/refactor_check.py 21e4f1d             # about 10 minutes on 2 cores
    python scripts/refactor_check.py 21e4f1d --control   # must print DIFF and exit 1
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import tomllib
from io import BytesIO
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
from cpu_repro_check import stored_files  # noqa: E402  (a sibling script)

CONFIGS = ("configs/demo.toml", "configs/instruct.toml")
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "first-lab" / \
    "refactor_check"
# the store's tables and the columns that order their rows (created_at is a wall-clock time)
TABLES = {
    "runs": "run_id",
    "predictions": "run_id, split, example_id",
    "metrics": "run_id, split, convention, metric",
    "temperature_search": "run_id, kind, value",
    "topk_coverage": "run_id, k",
    "examples": "dataset, split, example_id",
}
CONTROL = """\
# refactor_check --control: one float32 ulp more learning rate in every Trainer (the weights
# are float32: a float64 ulp would vanish in the first float32 product)
import numpy as np
import transformers

_init = transformers.TrainingArguments.__post_init__

def _post_init(self):
    _init(self)
    self.learning_rate = float(np.nextafter(np.float32(self.learning_rate), np.float32(np.inf)))

transformers.TrainingArguments.__post_init__ = _post_init
"""


def git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=ROOT, check=True, capture_output=True,
                          text=True).stdout


def copy_commit(commit: str, dest: Path) -> None:
    """The tree of `commit`, as `git archive` gives it."""
    data = subprocess.run(["git", "archive", commit], cwd=ROOT, check=True,
                          capture_output=True).stdout
    with tarfile.open(fileobj=BytesIO(data)) as tar:
        tar.extractall(dest, filter="data")


def copy_checkout(dest: Path) -> None:
    """This checkout as it is: tracked and untracked files that git does not ignore."""
    names = git("ls-files", "-z", "--cached", "--others", "--exclude-standard").split("\0")
    for name in filter(None, names):
        src = ROOT / name
        if src.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)


def store_rows(store: Path) -> dict[str, str]:
    """sha256 of each table's rows, in a fixed order, as DuckDB prints them."""
    import duckdb

    out = {}
    with duckdb.connect(str(store), read_only=True) as con:
        for table, order in TABLES.items():
            cols = [r[0] for r in con.execute(f"DESCRIBE {table}").fetchall()
                    if r[0] != "created_at"]
            rows = con.execute(f"SELECT {', '.join(cols)} FROM {table} ORDER BY {order}, "
                               f"{', '.join(cols)}").fetchall()
            digest = hashlib.sha256(repr(rows).encode()).hexdigest()
            out[f"store/{table} ({len(rows)} rows)"] = digest
    return out


def run_side(tree: Path, env_extra: dict[str, str]) -> dict[str, str]:
    """Both configs' seed 0 in `tree`; the fingerprints of what they stored."""
    env = {**os.environ, **env_extra}
    out: dict[str, str] = {}
    for config in CONFIGS:
        t0 = time.perf_counter()
        cmd = [sys.executable, "-m", "first_core", "run", "--config", config,
               "--seeds", "0", "--store", "data/first.duckdb"]
        proc = subprocess.run(cmd, cwd=tree, env=env, capture_output=True, text=True)
        if proc.returncode:
            sys.exit(f"{tree.name}: {config} failed (exit {proc.returncode}):\n"
                     f"{proc.stderr[-3000:]}")
        print(f"  {config}: {time.perf_counter() - t0:.0f} s", flush=True)
        name = tomllib.loads((tree / config).read_text())["name"]
        folder = tree / "runs" / name / "seed0"
        out.update({f"{config}: {k}": v for k, v in stored_files(folder).items()})
    out.update(store_rows(tree / "data" / "first.duckdb"))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("old", help="the commit before the refactor")
    ap.add_argument("--new", help="a commit to compare instead of this checkout as it is")
    ap.add_argument("--control", action="store_true",
                    help="one float32 ulp more learning rate on the new side: the check must fail")
    ap.add_argument("--no-cache", action="store_true", help="run the old side again")
    args = ap.parse_args(argv)
    try:
        old = git("rev-parse", "--verify", args.old + "^{commit}").strip()
        new = git("rev-parse", "--verify", args.new + "^{commit}").strip() if args.new \
            else None
    except subprocess.CalledProcessError as exc:
        print(f"error: not a commit of this repository: {exc.stderr.strip()}", file=sys.stderr)
        return 2
    cached = CACHE / f"{old}.json"
    with tempfile.TemporaryDirectory(prefix="refactor_check_") as tmp:
        if cached.exists() and not args.no_cache:
            print(f"old {old[:12]}: fingerprints from {cached}")
            a = json.loads(cached.read_text())
        else:
            print(f"old {old[:12]}: running", flush=True)
            copy_commit(old, Path(tmp, "old"))
            a = run_side(Path(tmp, "old"), {})
            cached.parent.mkdir(parents=True, exist_ok=True)
            cached.write_text(json.dumps(a, indent=1))
        print(f"new {new[:12] if new else 'this checkout'}"
              f"{' (control: learning rate + 1 float32 ulp)' if args.control else ''}: running",
              flush=True)
        tree = Path(tmp, "new")
        copy_commit(new, tree) if new else copy_checkout(tree)
        env = {}
        if args.control:
            (tree / ".control").mkdir()
            (tree / ".control" / "sitecustomize.py").write_text(CONTROL)
            env["PYTHONPATH"] = os.pathsep.join(
                filter(None, [str(tree / ".control"), os.environ.get("PYTHONPATH")]))
        b = run_side(tree, env)
    keys = sorted(a.keys() | b.keys())
    differ = [k for k in keys if a.get(k) != b.get(k)]
    for key in keys:
        print(("DIFF " if key in differ else "SAME ") + key)
    print(f"{len(keys) - len(differ)} of {len(keys)} stored files and tables identical"
          + ("" if differ else f" between {old[:12]} and {new[:12] if new else 'HEAD'}"))
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main())
