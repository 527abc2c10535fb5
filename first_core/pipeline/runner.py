"""The FIRST pipeline as resumable stages: running them (the stages of each setting are in
`mc_stages` and `instruct_stages`, their list in `stage_base.build_stages`).

Each stage writes its outputs under the run directory and, only when they are complete, a
completion record `stages/<stage>.json`. A rerun of the same command skips every stage whose
record exists, so a run killed at any point resumes from the last finished stage (training
stages also resume from their last Trainer checkpoint). `force` redoes a stage and every
stage after it, because later stages consume its outputs.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path
from typing import Any

import pandas as pd

from ..store.connection import open_readonly
from ..store.paths import default_store_path, make_folder
from ..store.reads import load_metrics
from ..store.writes import Store
from ..config.settings import RunConfig, posthoc_method
from ..config.diff import flat_config, flatten
from ..console import StageLine
from ..errors import ConfigError, FirstError
from ..numerics import cpu_kernels_in_use, pin_cpu_kernels
from ..atomic_files import write_json_atomic
from .run_lock import lock_run_dir
from .stage_base import Context, Setting, Stage, build_stages, run_id

log = logging.getLogger(__name__)


# ---------------------------------------------------------------- orchestration


def setting_for(cfg: RunConfig) -> Setting:
    """The setting `[data] kind` names: multiple choice, or instruction tuning."""
    if cfg.data.kind == "instruct":
        from .instruct_stages import INSTRUCTION
        return INSTRUCTION
    from .mc_stages import MULTIPLE_CHOICE
    return MULTIPLE_CHOICE


def stages(cfg: RunConfig) -> list[Stage]:
    """The ordered stages this config needs."""
    return build_stages(cfg, setting_for(cfg))


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


# The first stage that reads each config section: changing a key there makes that stage and
# every later one stale. Keys that only pick the store (or which runs go into it) make just
# the `store` stage stale, which is cheap and replaces its rows, so it is redone by itself.
_AFFECTS = {"seed": "models", "cpu_kernels": "models", "data": "data", "model": "models",
            "teacher_train": "teacher_ft", "topk": "topk", "calibration": "calibrate",
            "student_train": "student_ft", "distill": "student_distill",
            "eval": "eval_teacher_ft", "methods": "store", "store": "store"}
_WHERE = ("name", "runs_dir", "seeds")  # they pick the run directory itself
# where the Trainer logs changes no output: such a change makes nothing stale
_NO_EFFECT = ("teacher_train.report_to", "student_train.report_to")
_ORDER = [st.name for st in stages(RunConfig())]  # every stage, in pipeline order


def affected_stage(key: str, plan: list[str]) -> str | None:
    """The first stage of `plan` that a change of config `key` (dotted) makes stale."""
    if key in _NO_EFFECT:
        return None
    first = _AFFECTS.get(key.split(".", 1)[0], "data")  # an unknown section: assume all
    at = _ORDER.index(first)
    return next((name for name in plan if _ORDER.index(name) >= at), None)


def check_same_config(ctx: Context, plan: list[str], todo: set[str]) -> set[str]:
    """Compare the config with the one the run directory's finished stages were made with.

    A change is refused when it would reach a stage that is done and is not being redone
    (those outputs would be silently reused under the new config); `--force STAGE` redoes
    STAGE onwards, so it allows changes from there on, never before. Returns the stages
    whose leftover outputs are stale (made under the old config) and must be deleted before
    they run; adds `store` to `todo` when only the store's choice of rows changed.
    """
    old_path = ctx.path("config.json")
    if not old_path.exists():
        return set()
    # a key the recorded config lacks came with a later version, whose default is what the
    # older code did (e.g. cpu_kernels = "native")
    old = {**flat_config(RunConfig()),
           **flatten(json.loads(old_path.read_text(encoding="utf-8")))}
    new = flat_config(ctx.cfg)
    changed = sorted(k for k in old.keys() | new.keys()
                     if old.get(k) != new.get(k) and k.split(".", 1)[0] not in _WHERE)
    hit = {k: affected_stage(k, plan) for k in changed}
    if any(name == "store" for name in hit.values()):
        todo.add("store")
    # stages from `redo_from` on are all being (re)done: a change reaching them is safe
    redo_from = next((i for i in range(len(plan)) if set(plan[i:]) <= todo), len(plan))
    blocked = {k: name for k, name in hit.items()
               if name is not None and plan.index(name) < redo_from}
    if blocked:
        first = min(blocked.values(), key=plan.index)
        listed = ", ".join(f"{k} (affects {name})" for k, name in blocked.items())
        raise ConfigError(
            f"{ctx.run_dir} was made with another config (changed: {listed}); its finished "
            f"stages would be reused. Use another `name`, or --force {first} to redo the "
            "first stage the change affects and everything after it")
    starts = [plan.index(name) for name in hit.values() if name is not None]
    return set(plan[min(starts):]) & todo if starts else set()


def preflight(ctx: Context, todo: set[str]) -> None:
    """What can be known before the first stage: a writable run directory, a usable store
    (when the store stage is to run: opened for writing, schema and tables checked),
    local model paths that exist, fp16 only with a GPU, and, when the models were built
    earlier, every k against their vocabulary (`model_checks`). Without this a bad store or
    a model path typo surfaces only after all the training."""
    from ..models.checks import check_machine, check_models
    from ..models.loading import check_model_spec
    for role in ("teacher", "student"):
        check_model_spec(getattr(ctx.cfg.model, role), f"model.{role}")
    check_machine(ctx.cfg, ctx.config_file)
    if "models" not in todo:  # built earlier: a k changed since is checked now, not at its stage
        check_models(ctx.cfg, {r: ctx.init_path(r) for r in ("teacher", "student")},
                     ctx.config_file)
    _probe_writable(ctx.run_dir, f"run directory {ctx.run_dir}")
    path = default_store_path(ctx.cfg.store)
    if "store" not in todo:  # nothing will be written to it; the summary reads it read-only
        return
    if path.exists():  # open for writing: checks the lock, the schema and every table
        Store(path)
        from .names import check_run_name
        if (why := check_run_name(path, ctx.cfg.name)) is not None:
            raise FirstError(why)
    else:  # made at the store stage; a run that fails before then leaves no empty store
        make_folder(path.parent, f"store {path}")
        _probe_writable(path.parent, f"store {path}: its folder")


def _probe_writable(folder: Path, what: str) -> None:
    """Write and delete a small file in `folder`: permissions, read-only mounts, full disks."""
    probe = folder / f".write-test-{os.getpid()}"
    try:
        probe.write_bytes(b"ok")
    except OSError as exc:
        raise FirstError(f"{what} is not writable ({exc.strerror or exc})") from None
    finally:  # a full disk creates the file and then refuses its bytes: never leave it
        with suppress(OSError):
            probe.unlink(missing_ok=True)


def _together(state, fn: Callable[[], Any], share: bool = False) -> Any:
    """Run `fn` on this rank, then make every rank agree: if any rank raised, all raise.

    Without this, an error on rank 0 alone (a stage only it runs, a check only it makes)
    leaves the others waiting at the next barrier until the launcher's timeout. The gather
    is also the barrier between steps. `share`: every rank returns rank 0's result."""
    error = result = None
    try:
        result = fn()
    except Exception as exc:  # noqa: BLE001 - re-raised below, on every rank
        error = exc
    if state.num_processes > 1:
        import torch.distributed as dist
        said: list[Any] = [None] * state.num_processes
        dist.all_gather_object(said, (None if error is None else str(error),
                                      result if share else None))
        failed = [(rank, text) for rank, (text, _) in enumerate(said) if text is not None]
        if failed and error is None:
            rank, text = failed[0]
            raise FirstError(f"rank {rank} failed, so every rank stops: {text}")
        if share and error is None:
            result = said[0][1]
    if error is not None:
        raise error
    return result


def run(cfg: RunConfig, force: str | None = None,
        echo: Callable[[str], None] = print, config_file: str = "config") -> pd.DataFrame:
    """Run (or resume) every stage, then return the Table-1 summary from the store.

    Under `accelerate launch` / `torchrun` every rank runs this: training and extraction
    stages on all ranks (the `Trainer` and the extractor split the work), every other stage
    and every completion record on rank 0 alone; after each step the ranks agree, so an
    error on any rank stops all of them.

    Before the first stage rank 0 locks the run directory, checks the config against the
    one its outputs were made with, and checks the store and the model paths. The config is
    recorded (`config.json`) once a stage has finished under it, or once the outputs a
    config change made stale are deleted, never before: a run that fails first never blocks
    the corrected command, and a resume never reuses a checkpoint of another config.
    """
    pin_cpu_kernels(cfg.cpu_kernels)  # a no-op when the command line did it already
    state = process_state()
    main = state.is_main_process
    say = echo if main else (lambda _: None)
    ctx = Context(cfg, cfg.run_dir, config_file=config_file)
    plan = stages(cfg)
    names = [st.name for st in plan]
    if force is not None and force not in names:
        raise ConfigError(f"--force {force}: unknown stage; stages: {names}")
    forced = set(names[names.index(force):]) if force else set()
    lock = None

    def prepare() -> tuple[set[str], set[str]]:
        """Rank 0: lock, check, clear what is to be redone; returns the stages to run."""
        nonlocal lock
        make_folder(ctx.run_dir, f"run directory {ctx.run_dir}")
        lock = lock_run_dir(ctx.run_dir)
        todo = {name for name in names
                if name in forced or not ctx.path("stages", f"{name}.json").exists()}
        if todo - {"store"}:  # the store holds every stage's outputs: a stage that runs now
            todo.add("store")  # (e.g. one a later version added to a finished run) reaches it
        from .names import check_run_folder, lacks_runs
        if (why := check_run_folder(ctx.run_dir)) is not None:
            raise FirstError(why)
        stale = check_same_config(ctx, names, todo)
        stored = [run_id(cfg, x) for m in cfg.methods for x in (m, posthoc_method(m))]
        if "store" not in todo and lacks_runs(default_store_path(cfg.store), stored):
            say(f"store {default_store_path(cfg.store)} lacks this run's rows (deleted "
                "or replaced since): the store stage runs again")
            todo.add("store")
        preflight(ctx, todo)
        for name in todo:  # all first: a forced run that fails must not leave later stages done
            ctx.path("stages", f"{name}.json").unlink(missing_ok=True)
        for st in plan:  # outputs of forced stages, and those made under the old config
            if st.name in forced | stale:
                for rel in st.outputs:
                    _remove(ctx.path(rel))
        if stale:  # what is left on disk now agrees with this config (a resume must see it)
            write_json_atomic(ctx.path("config.json"), cfg.to_dict())
        return todo

    try:
        todo = _together(state, prepare if main else lambda: None, share=True)
        recorded = False
        for i, st in enumerate(plan, 1):
            done = ctx.path("stages", f"{st.name}.json")
            if st.name not in todo:
                say(StageLine(i, len(plan), st.name, "skipped"))
                continue
            say(StageLine(i, len(plan), st.name, "start"))

            def work(st: Stage = st, done: Path = done) -> None:
                nonlocal recorded
                t0 = time.perf_counter()
                if st.every_rank or main:
                    result = st.fn(ctx)
                    result["seconds"] = round(time.perf_counter() - t0, 2)
                    result["cpu_kernels"] = cpu_kernels_in_use()
                    if main:
                        write_json_atomic(done, result)
                        if not recorded:  # the outputs now on disk were made under this config
                            write_json_atomic(ctx.path("config.json"), cfg.to_dict())
                            recorded = True
                        say(StageLine(i, len(plan), st.name, "done", result["seconds"]))

            _together(state, work)
        if not main:
            return pd.DataFrame()
        return summary(default_store_path(cfg.store), cfg)
    finally:
        if lock is not None:
            lock.release()


def process_state():
    """This process's place in a launch (accelerate's `PartialState`, a singleton).

    cpu=True: a CPU launch under torchrun becomes one gloo group instead of N lone ranks.
    Every caller must come through here: the first `PartialState(...)` of a process fixes
    its settings, so a bare `PartialState()` elsewhere would leave each rank thinking it is
    the main process (and every rank would then take the run directory's lock).
    """
    import torch
    from accelerate import PartialState
    return PartialState(cpu=not torch.cuda.is_available())


def summary(path: Path, cfg: RunConfig, convention: str = "paper") -> pd.DataFrame:
    """Table 1 of the paper for this run: Acc / ECE / Trust per method, in-domain and OOD."""
    with open_readonly(path) as con:
        m = load_metrics(con, [run_id(cfg, x) for x in cfg.methods])
    m = m[(m.convention == convention) & m.metric.isin(["accuracy", "ece", "trust"])
          & m.split.isin(["test", "test_ood"])]
    runs = {run_id(cfg, x): x for x in cfg.methods}
    m = m.assign(method=m.run_id.map(runs), value=100 * m.value)
    table = m.pivot_table(index="method", columns=["split", "metric"], values="value")
    table = table.reindex([x for x in cfg.methods if x in table.index])
    table.columns = [f"{'ID' if s == 'test' else 'OOD'} {k}" for s, k in table.columns]
    order = [f"{d} {k}" for d in ("ID", "OOD") for k in ("accuracy", "ece", "trust")]
    return table[[c for c in order if c in table.columns]].round(1)
