"""What the stages of both settings share, one floor below them.

`mc_stages` (the multiple-choice stages) and `instruct_stages` (the instruction-tuning
stages) both build on this module, and `runner` runs what they give: the run `Context`
(where each model lives, the teacher used as given included), the data and model-building
steps, the calibration search, the teacher targets, post-hoc scaling, the one-transaction
store write, and the typed `Setting` that `build_stages` turns into the ordered stage list
(the teacher-knowledge steps both settings share are in `knowledge_steps`). Neither setting
imports the other's module, so there is no import cycle between them
(tests/test_import_cycles.py).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..calibration import transforms as calibrate
from ..data import examples as data
from ..store.paths import default_store_path
from ..store.schema import POSTHOC_KIND, RunRecord
from ..store.writes import open_store
from ..config.settings import CalibrationConfig, RunConfig, posthoc_method
from ..errors import FirstError
from ..atomic_files import write_json_atomic

log = logging.getLogger(__name__)
_WARNED: set[str] = set()  # the data warnings this process has given (see `warn_once`)

SPLITS = ("val", "test", "test_ood")
STUDENT_METHODS = ("student_distill", "first_ls", "first_ts")


def teacher_as_given(cfg: RunConfig) -> bool:
    """`teacher_train.epochs = 0`: the teacher is used as given, never fine-tuned."""
    return cfg.teacher_train.epochs == 0


@dataclass
class Context:
    """What the stages share: the config, the run directory and lazily loaded examples."""

    cfg: RunConfig
    run_dir: Path
    _examples: dict[str, list[data.Example]] | None = None
    config_file: str = "config"  # where cfg came from, named by errors about its keys
    # what a setting loads once per process beside the MC examples (the instruction splits:
    # `instruct_stages.instruct_examples`), by name
    loaded: dict[str, Any] = field(default_factory=dict)

    def path(self, *parts: str) -> Path:
        return self.run_dir.joinpath(*parts)

    def record(self, stage: str) -> dict[str, Any]:
        return json.loads(self.path("stages", f"{stage}.json").read_text(encoding="utf-8"))

    @property
    def examples(self) -> dict[str, list[data.Example]]:
        if self._examples is None:
            files = self.record("data")["files"]
            self._examples = {split: data.load_examples(p, self.cfg.data.fmt)
                              for split, p in files.items()}
            if self.cfg.data.max_train:
                self._examples["train"] = self._examples["train"][: self.cfg.data.max_train]
        return self._examples

    def model_path(self, method: str) -> Path | str:
        """Where a method's model is: its training stage's `final` folder, except the teacher
        used as given (`teacher_train.epochs = 0`), which is `init_path("teacher")` itself
        (a folder, or a Hugging Face id)."""
        if method == "teacher_ft" and teacher_as_given(self.cfg):
            return self.init_path("teacher")
        return self.path("models", method, "final")

    def init_path(self, role: str) -> str:
        """The weights a role starts from: a preset saved in this run, a GGUF / layer-subset
        spec built in this run (`models.build_model`), or the user's spec."""
        spec = getattr(self.cfg.model, role)
        from ..models.builds import build_dir_name, needs_build
        from ..models.presets import is_preset
        if needs_build(spec):
            return str(self.path("models", "built", build_dir_name(spec)))
        return str(self.path("models", f"{role}_init")) if is_preset(spec) else spec


# ---------------------------------------------------------------- shared steps


def stage_teacher_as_given(ctx: Context) -> dict[str, Any]:
    """The `teacher_ft` stage of either setting under `teacher_train.epochs = 0`: nothing
    trains and no weights are copied. The record names the model that top-k, calibration
    and evaluation read (`Context.model_path`) and its vocabulary size (read from its
    config, which also fails here, before any extraction, on a model that is not there)."""
    from transformers import AutoConfig
    where = str(ctx.model_path("teacher_ft"))
    try:
        config = AutoConfig.from_pretrained(where,
                                            trust_remote_code=ctx.cfg.model.trust_remote_code)
    except (OSError, ValueError) as exc:
        raise FirstError(f"model.teacher {ctx.cfg.model.teacher!r}: cannot read the config "
                         f"of {where} ({exc})") from None
    vocab = getattr(config, "vocab_size", None) or config.get_text_config().vocab_size
    return {"model": where, "as_given": True, "vocab_size": int(vocab),
            "note": "teacher_train.epochs = 0: the teacher is used as given (not fine-tuned)"}


def train_config(ctx: Context, method: str):
    """The training section a method's model was trained under (its max_length is the
    longest prompt it saw)."""
    return ctx.cfg.teacher_train if method == "teacher_ft" else ctx.cfg.student_train


def teacher_vocab_size(ctx: Context) -> int:
    """The vocabulary size of this run's teacher, which its stored top-k must match."""
    if teacher_as_given(ctx.cfg):
        return int(ctx.record("teacher_ft")["vocab_size"])
    config = Path(ctx.model_path("teacher_ft")) / "config.json"
    return int(json.loads(config.read_text(encoding="utf-8"))["vocab_size"])


def stage_mc_data(ctx: Context) -> dict[str, Any]:
    """Write the embedded task (if asked) and validate every split before training anything."""
    d = ctx.cfg.data
    root = Path(d.dir)
    if d.embedded:
        from ..data.tasks import write_task
        files = write_task(root, seed=d.seed, n_train=d.n_train, n_val=d.n_val,
                           n_test=d.n_test, n_ood=d.n_ood)
        files = {k: str(v) for k, v in files.items()}
    else:
        files = {s: str(root / getattr(d, s)) for s in ("train", *SPLITS)}
        if d.hf_dataset:  # fetched into those files first, then read like them
            data.write_hf_splits(d.hf_dataset, [(getattr(d, f"hf_{s}"), f) for s, f in
                                                files.items() if getattr(d, f"hf_{s}")],
                                 d.hf_subset)
    problems = [p for f in files.values() for p in data.check_file(f, d.fmt)]
    if problems:
        shown = "\n".join(str(p) for p in problems[:20])
        more = f"\n... and {len(problems) - 20} more" if len(problems) > 20 else ""
        raise FirstError(f"the data has {len(problems)} problem(s):\n{shown}{more}")
    splits = {s: data.load_examples(f, d.fmt) for s, f in files.items()}
    leakage = data.check_leakage(splits, files)
    if leakage:
        warn_once(leakage)
    counts = {s: len(exs) for s, exs in splits.items()}
    return {"files": files, "counts": counts, "dataset_hash": dataset_hash(files),
            "overlap_with_train": data.split_overlap(splits)}


def warn_once(message: str) -> None:
    """Log a warning the first time this process meets it: each seed checks the same data
    again, and the three-seed demo said the same leakage line three times."""
    if message not in _WARNED:
        _WARNED.add(message)
        log.warning("%s", message)


def dataset_hash(files: dict[str, str]) -> str:
    """Content hash of every split file: the top-k store is refused for other data."""
    h = hashlib.sha256()
    for split in sorted(files):
        h.update(split.encode())
        h.update(Path(files[split]).read_bytes())
    return h.hexdigest()[:16]


def build_models(ctx: Context, texts: list[str]) -> dict[str, Any]:
    """`stage_models` of either setting: presets get a tokenizer trained on `texts`."""
    from ..models.builds import build_model, needs_build
    from ..models.presets import build_preset, is_preset
    built = {}
    for role in ("teacher", "student"):
        spec = getattr(ctx.cfg.model, role)
        if is_preset(spec):
            built[role] = str(build_preset(spec, texts, ctx.path("models", f"{role}_init"),
                                           seed=ctx.cfg.seed))
        elif needs_build(spec):
            built[role] = str(build_model(spec, ctx.path("models", "built")))
    from ..models.checks import check_models
    check_models(ctx.cfg, {r: ctx.init_path(r) for r in ("teacher", "student")},
                 ctx.config_file, texts)
    return {"built": built}


def load_for(ctx: Context, path: str | Path):
    """(model, tokenizer) from `path` with the run's `[model]` settings."""
    from ..models.loading import load_model
    m = ctx.cfg.model
    return load_model(str(path), trust_remote_code=m.trust_remote_code, dtype=m.dtype)


def finetune_stage(ctx: Context, method: str, sft: Callable[..., Path],
                   train_examples: Any) -> dict[str, Any]:
    """Supervised fine-tuning of the teacher (`teacher_ft`) or of the 'fine-tuned student'
    baseline, in either setting: `sft` is the setting's trainer (`training.sft.finetune` or
    `finetune_responses`), called as sft(model, tokenizer, train_examples, out_dir, train_cfg,
    seed=, section=)."""
    role = "teacher" if method == "teacher_ft" else "student"
    model, tok = load_for(ctx, ctx.init_path(role))
    out = sft(model, tok, train_examples, ctx.path("models", method), train_config(ctx, method),
              seed=ctx.cfg.seed, section=f"{role}_train")
    return {"model": str(out)}


def search_calibration(c: CalibrationConfig, val: Any, test: Any,
                       train_probs: np.ndarray) -> dict[str, dict[str, Any]]:
    """c ("TS", by `[calibration] strategy`: grid = lowest ECE, or nll) and the smoothing
    delta ("LS") on the validation top-k (`probs`, `gold_rank`), each grid's ECE also on
    test: calibration.json's content. Shared by both settings."""
    # a delta above some training row's top-1 would make that target negative, so the LS
    # search only considers deltas that every training row can take
    train = calibrate.temperature_scale(train_probs, 1.0, mode="renorm")
    ls_limit = float(train.max(axis=1).min())
    result = {}

    def choose(*args, **kwargs):  # `[calibration] strategy`: grid (lowest ECE) or nll
        return calibrate.choose_temperature(*args, strategy=c.strategy, **kwargs)

    for kind, search, grid in (("TS", choose, c.temperature_grid),
                               ("LS", calibrate.search_label_smoothing, c.smoothing_grid)):
        kwargs = {"grid": np.asarray(grid)} if grid is not None else {}
        res = search(val.probs, val.gold_rank, n_bins=c.n_bins, **kwargs)
        if kind == "LS" and res.best > ls_limit:
            res = search(val.probs, val.gold_rank, n_bins=c.n_bins,
                         grid=res.grid[res.grid <= ls_limit])
        ece_test = calibrate.evaluate_grid(res, test.probs, test.gold_rank, n_bins=c.n_bins)
        result[kind] = {"best": float(res.best), "grid": res.grid.tolist(),
                        "ece_val": res.ece.tolist(), "ece_test": np.asarray(ece_test).tolist()}
    return result


def student_targets(ctx: Context, method: str) -> tuple[str, float | None, float | None]:
    """(mode, c, delta) of the teacher targets a distilled student is trained on."""
    cal = ctx.record("calibrate")
    return {"student_distill": ("renorm", None, None),
            "first_ls": ("ls", None, cal["delta"]),
            "first_ts": ("first", cal["c"], None)}[method]


def run_posthoc(ctx: Context, method: str, collect: Callable[[Any, Any], Any],
                evaluate: Callable[..., dict[str, Any]]) -> dict[str, Any]:
    """The `posthoc_<method>` stage of either setting (`first_core.calibration.posthoc`): the
    method's model, its validation logits (`collect(model, tokenizer)`: a `posthoc.HeldLogits`), T
    fitted on them by NLL, then the setting's `evaluate(ctx, method, out, temperature=T,
    model=...)` into `eval/<method>+ts/` beside `fit.json`. The record: the fit without its
    curve."""
    from ..calibration.posthoc import fit_posthoc
    model, tok = load_for(ctx, ctx.model_path(method))
    fit = fit_posthoc(collect(model, tok), n_bins=ctx.cfg.eval.n_bins)
    out = ctx.path("eval", posthoc_method(method))
    record = evaluate(ctx, method, out, temperature=fit.temperature, model=(model, tok))
    write_json_atomic(out / "fit.json", fit.to_dict())
    return {**record, **{k: v for k, v in fit.to_dict().items()
                         if k not in ("grid", "ece_grid")}}


def run_id(cfg: RunConfig, method: str) -> str:
    return f"{cfg.name}/{method}/seed{cfg.seed}"


def write_store(ctx: Context, coverage: Callable[[], pd.DataFrame],
                examples: pd.DataFrame) -> dict[str, Any]:
    """Write every table of a pipeline to DuckDB in one transaction: all or nothing. Shared by
    both settings; `coverage()` gives the teacher's `topk_coverage` rows (without `run_id`),
    asked for only when student methods ran (only they need top-k and calibration).

    Everything is read and checked first, so the store is locked only for the inserts."""
    cfg = ctx.cfg
    path = default_store_path(cfg.store)
    teacher_run = run_id(cfg, "teacher_ft")
    runs = []
    for method in cfg.methods:
        mode, c, delta = (student_targets(ctx, method) if method in STUDENT_METHODS
                          else (None, None, None))
        spec = cfg.model.teacher if method == "teacher_ft" else cfg.model.student
        record = RunRecord(
            run_id=run_id(cfg, method), method=method, model=spec,
            dataset=ctx.record("data")["dataset_hash"], seed=cfg.seed, temperature=c,
            smoothing=delta, config=cfg.to_dict(), pipeline=cfg.name)
        ev = ctx.path("eval", method)
        runs.append((record, pd.read_parquet(ev / "predictions.parquet"),
                     pd.read_parquet(ev / "metrics.parquet")))
    posthoc = []  # every trained model after post-hoc temperature scaling, beside its own row
    for record, _, _ in list(runs):
        method = posthoc_method(record.method)
        ev = ctx.path("eval", method)
        fit = json.loads((ev / "fit.json").read_text(encoding="utf-8"))
        ts = dataclasses.replace(record, run_id=run_id(cfg, method), method=method,
                                 temperature=fit["temperature"], smoothing=None)
        runs.append((ts, pd.read_parquet(ev / "predictions.parquet"),
                     pd.read_parquet(ev / "metrics.parquet")))
        posthoc.append(pd.DataFrame({
            "run_id": ts.run_id, "kind": POSTHOC_KIND, "value": fit["grid"],
            "ece_val": fit["ece_grid"], "ece_test": np.nan,
            "chosen": np.asarray(fit["grid"]) == fit["temperature"]}))
    search = covered = None
    if any(m in cfg.methods for m in STUDENT_METHODS):  # only they need top-k and calibration
        cal = json.loads(ctx.path("calibration.json").read_text(encoding="utf-8"))
        search = pd.DataFrame([{"run_id": teacher_run, "kind": kind, "value": v, "ece_val": a,
                                "ece_test": b, "chosen": v == res["best"]}
                               for kind, res in cal.items()
                               for v, a, b in zip(res["grid"], res["ece_val"], res["ece_test"])])
        covered = coverage().assign(run_id=teacher_run)
    with open_store(path) as st, st.batch():
        for record, predictions, metrics in runs:
            st.write_run(record, predictions, metrics)
        if posthoc:
            st.write_temperature_search(pd.concat(posthoc, ignore_index=True))
        if search is not None:
            st.write_temperature_search(search)
            st.write_topk_coverage(covered)
        st.write_examples(examples)
    return {"store": str(path)}


# ---------------------------------------------------------------- the stage list


@dataclass(frozen=True)
class Stage:
    name: str
    fn: Callable[[Context], dict[str, Any]]
    outputs: tuple[str, ...] = ()  # paths under the run dir that `force` deletes first
    every_rank: bool = False  # training and extraction run on every rank; the rest on rank 0


@dataclass(frozen=True)
class Setting:
    """One setting's stage functions: what `build_stages` makes the stage list of.

    The multiple-choice setting (`mc_stages.MULTIPLE_CHOICE`) and the instruction setting
    (`instruct_stages.INSTRUCTION`) each give one; `runner.setting_for(cfg)` picks it by
    `[data] kind`. A stage taking a method trains or evaluates that method's model."""

    name: str
    data: Callable[[Context], dict[str, Any]]
    models: Callable[[Context], dict[str, Any]]
    finetune: Callable[[Context, str], dict[str, Any]]
    topk: Callable[[Context], dict[str, Any]]
    calibrate: Callable[[Context], dict[str, Any]]
    distill: Callable[[Context, str], dict[str, Any]]
    evaluate: Callable[[Context, str], dict[str, Any]]
    posthoc: Callable[[Context, str], dict[str, Any]]
    store: Callable[[Context], dict[str, Any]]


def build_stages(cfg: RunConfig, setting: Setting) -> list[Stage]:
    """The ordered stages `cfg.methods` need, made of one setting's stage functions."""
    methods, s = cfg.methods, setting
    out = [Stage("data", s.data),
           Stage("models", s.models, ("models/teacher_init", "models/student_init"))]
    if any(m in methods for m in ("teacher_ft", *STUDENT_METHODS)):
        given = teacher_as_given(cfg)  # then nothing trains: a record on rank 0 is all
        out.append(Stage("teacher_ft", stage_teacher_as_given if given
                         else lambda c: s.finetune(c, "teacher_ft"),
                         ("models/teacher_ft",), every_rank=not given))
    if any(m in methods for m in STUDENT_METHODS):
        out += [Stage("topk", s.topk, ("topk",), every_rank=True),
                Stage("calibrate", s.calibrate, ("calibration.json",))]
    if "student_ft" in methods:
        out.append(Stage("student_ft", lambda c: s.finetune(c, "student_ft"),
                         ("models/student_ft",), every_rank=True))
    out += [Stage(m, lambda c, m=m: s.distill(c, m), (f"models/{m}",), every_rank=True)
            for m in STUDENT_METHODS if m in methods]
    out += [Stage(f"eval_{m}", lambda c, m=m: s.evaluate(c, m), (f"eval/{m}",))
            for m in methods]
    out += [Stage(f"posthoc_{m}", lambda c, m=m: s.posthoc(c, m),
                  (f"eval/{posthoc_method(m)}",)) for m in methods]
    out.append(Stage("store", s.store))
    return out
