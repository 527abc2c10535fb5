"""One pipeline name, one kind of run: a `run`, an `import` and the demo's coverage step never
share a name in a store or a run folder.

The store groups runs by their `pipeline` name. A `run` named like an earlier import (or
like the demo's `<name>-smollm2-coverage`) would otherwise land in that pipeline beside
rows of another kind, show up as `NAME [config A]` / `[config B]`, and make the next
re-import refuse the name; the demo's coverage step would overwrite a pipeline's run
folder (its top-k and `config.json`), after which every rerun of that pipeline fails with
"made with another config". The importer refuses a name that holds the project's own runs
(`store_imports`); these checks are the other two directions.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from ..store.connection import open_readonly
from ..store.reads import list_runs
from ..store.schema import IMPORTED_METHOD, PRETRAINED_METHOD
from ..config.settings import RUN_METHODS
from ..errors import FirstError

# the kinds of run besides the pipeline's own trained methods, and who writes them
FOREIGN = {IMPORTED_METHOD: "imported predictions (`import --name`)",
           PRETRAINED_METHOD: "a pretrained model's top-k coverage (the demo's "
                                    "coverage step)"}


def other_runs(path: Path, pipeline: str, allowed: Iterable[str]) -> list[str]:
    """The methods of pipeline `pipeline`'s runs in the store at `path` that are not in
    `allowed` (empty when the store does not exist yet)."""
    if not path.exists():
        return []
    allowed = set(allowed)
    with open_readonly(path) as con:
        runs = list_runs(con)
    methods = runs.loc[runs["pipeline"] == pipeline, "method"]
    return sorted({str(m) for m in methods if m not in allowed})


def check_run_name(path: Path, pipeline: str) -> str | None:
    """Why a `run` named `pipeline` must not write into the store at `path`, or None."""
    found = other_runs(path, pipeline, set(RUN_METHODS))
    if not found:
        return None
    kinds = "; ".join(FOREIGN.get(m, f"runs of method {m!r}") for m in found)
    return (f"store {path}: pipeline {pipeline!r} already holds {kinds}; its runs would be "
            "mixed with this run's. Use another `name` (or `--set name=...`)")


def coverage_conflict(run_dir: Path, pipeline: str, store_path: Path) -> str | None:
    """Why the demo's coverage step must not write pipeline `pipeline` (run folder
    `run_dir`), or None: the folder is another pipeline's, or the store holds runs of
    another kind under that name."""
    config = run_dir / "config.json"
    kind = None
    if config.exists():
        try:
            kind = json.loads(config.read_text(encoding="utf-8")).get("kind")
        except (OSError, ValueError, AttributeError):
            kind = "unreadable"
    if (run_dir / "stages").exists() or (config.exists() and kind != "pretrained_coverage"):
        return (f"{run_dir} is the run folder of a pipeline named {pipeline!r}, which this "
                "step would overwrite; give the demo another `name`, or that pipeline")
    found = other_runs(store_path, pipeline, {PRETRAINED_METHOD})
    if found:
        return (f"store {store_path}: pipeline {pipeline!r} already holds runs of another "
                f"kind ({found}); give the demo another `name`")
    return None


def lacks_runs(path: Path, run_ids: Iterable[str]) -> bool:
    """True when the store at `path` is missing, or lacks one of `run_ids`: a finished run
    whose store was deleted or replaced since must store its rows again, not skip the
    store stage as "done earlier" and then find nothing to report."""
    if not path.exists():
        return True
    try:
        with open_readonly(path) as con:
            have = set(list_runs(con)["run_id"])
    except FirstError:  # busy or unreadable: the checks before the store stage say why
        return False
    return not set(run_ids) <= have


def check_run_folder(run_dir: Path) -> str | None:
    """Why a `run` must not use `run_dir`, or None: it is the demo's coverage step's folder
    (its config.json says so), whose config no pipeline's can match."""
    try:
        kind = json.loads((run_dir / "config.json").read_text(encoding="utf-8")).get("kind")
    except (OSError, ValueError, AttributeError):
        return None
    if kind != "pretrained_coverage":
        return None
    return (f"{run_dir} is the folder of the demo's pretrained-model coverage step, not of a "
            "pipeline run; use another `name`")
