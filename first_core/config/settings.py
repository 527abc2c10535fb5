"""Run configuration: dataclasses loaded from a TOML file plus `section.key=value` overrides.

Loading is strict on purpose: an unknown key or a value of the wrong type is a `ConfigError`
naming the file and the key, because a typo that is silently ignored produces a run that looks
fine and measures something else. The full resolved config is stored with every run.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ..errors import ConfigError
from .report_to import check_report_to

METHODS = ("teacher_ft", "student_ft", "student_distill", "first_ls", "first_ts")
POSTHOC_SUFFIX = "+ts"  # a method's model after post-hoc temperature scaling (posthoc.py)
# what `runs.method` holds for a pipeline's own runs: each method, then its post-hoc row
RUN_METHODS = tuple(name for m in METHODS for name in (m, m + POSTHOC_SUFFIX))


def posthoc_method(method: str) -> str:
    """The store's method name of `method`'s model after post-hoc temperature scaling."""
    return method + POSTHOC_SUFFIX


@dataclass(frozen=True)
class DataConfig:
    """Where the examples come from. `embedded = true` writes the built-in task first."""

    embedded: bool = True
    train: str = "train.jsonl"
    val: str = "val.jsonl"
    test: str = "test.jsonl"
    test_ood: str = "test_ood.jsonl"
    fmt: str = "auto"
    dir: str = "data/embedded"
    n_train: int = 4000
    n_val: int = 500
    n_test: int = 1000
    n_ood: int = 1000
    max_train: int | None = None
    seed: int = 0  # the embedded task's seed: the data stay fixed across training seeds
    # a Hugging Face data set by name (needs `datasets`, and internet unless it is a local
    # folder; embedded = false): each split named by hf_<split> is written to its file under
    # `dir` first (dir/train etc.), then read like any file; a split set to "" stays your file
    hf_dataset: str | None = None
    hf_subset: str | None = None
    hf_train: str = "train"
    hf_val: str = "validation"
    hf_test: str = "test"
    hf_test_ood: str = ""
    # "mc": the multiple-choice setting; "instruct": the paper's instruction-tuning setting
    # ([instruct] section; the files above are then the multiple-choice OOD test)
    kind: Literal["mc", "instruct"] = "mc"


@dataclass(frozen=True)
class InstructConfig:
    """The instruction-tuning setting (`data.kind = "instruct"`,
    first_core/pipeline/instruct_stages.py).

    `with_input` / `no_input` are the Alpaca prompt templates (Stanford Alpaca's by default),
    `mc_prompt` the multiple-choice prompt of the OOD test (placeholders as in data.py's
    PromptTemplate), in the same layout so only the task is new to the model.
    """

    embedded: bool = True
    dir: str = "data/embedded/instruct"
    train: str = "instruct_train.jsonl"
    val: str = "instruct_val.jsonl"
    test: str = "instruct_test.jsonl"
    fmt: Literal["auto", "alpaca", "prompt_response"] = "auto"
    n_train: int = 4000
    n_val: int = 500
    n_test: int = 500
    with_input: str | None = None  # None = Stanford Alpaca's template
    no_input: str | None = None
    mc_prompt: str | None = None   # None = the Alpaca no-input layout around the question
    mc_split: Literal["test", "test_ood"] = "test"  # which [data] split is the OOD test


@dataclass(frozen=True)
class ModelConfig:
    """A preset name (`tiny-teacher`, `tiny-student`), a Hugging Face id, or a local path."""

    teacher: str = "tiny-teacher"
    student: str = "tiny-student"
    trust_remote_code: bool = False
    dtype: str = "float32"


@dataclass(frozen=True)
class TrainConfig:
    """Hugging Face `Trainer` settings shared by teacher SFT, student SFT and distillation.

    `epochs = 0` is allowed for the teacher only: the teacher is then used as given (no
    fine-tuning; top-k, calibration and evaluation read the model `[model] teacher` names)."""

    epochs: float = 3.0
    batch_size: int = 32
    learning_rate: float = 1e-3
    weight_decay: float = 0.0
    warmup_ratio: float = 0.05
    gradient_accumulation_steps: int = 1
    loss_on: Literal["answer", "sequence", "response"] = "answer"  # response: instruct setting
    max_length: int = 256
    bf16: bool = False
    fp16: bool = False
    gradient_checkpointing: bool = False
    save_steps: int = 200
    # where the Trainer logs (HF `TrainingArguments.report_to`): "none", "all", an integration
    # ("tensorboard", "wandb", ...) or a list of them; checked at load
    # (first_core/config/report_to.py)
    report_to: str | list[str] = "none"


@dataclass(frozen=True)
class TopKConfig:
    k: int = 5
    coverage_k: int = 100
    dtype: Literal["float16", "float32"] = "float32"
    shard_size: int = 50_000
    batch_size: int = 64


@dataclass(frozen=True)
class CalibrationConfig:
    """Grid searches on the validation split (None = the paper's default grids)."""

    n_bins: int = 10
    temperature_grid: list[float] | None = None
    smoothing_grid: list[float] | None = None
    strategy: Literal["grid", "nll"] = "grid"  # c by lowest ECE, or by NLL (Guo et al.)


@dataclass(frozen=True)
class DistillConfig:
    # how the student is read at the teacher's ids: "full" (its full-vocabulary probabilities,
    # the FIRST loss) or "renorm" (renormalised over the ids, the official code's option)
    student_side: Literal["full", "renorm"] = "full"
    ce_weight: float = 0.0  # mixing weight of the cross-entropy on the gold token


@dataclass(frozen=True)
class EvalConfig:
    batch_size: int = 64
    n_bins: int = 10
    n_boot: int = 1000
    topk: int = 5


@dataclass(frozen=True)
class RunConfig:
    name: str = "demo"
    seed: int = 0
    # several training seeds of one pipeline (None: just `seed`); each seed runs in
    # runs_dir/name/seed<N> and the report averages them
    seeds: list[int] | None = None
    runs_dir: str = "runs"
    store: str | None = None  # None = $FIRST_STORE, else data/first.duckdb
    # "avx2": ATen and oneDNN pinned to AVX2 and MKL to its COMPATIBLE branch, the same
    # numbers on every x86 CPU (first_core/numerics.py); "native": the CPU's fastest kernels
    cpu_kernels: Literal["native", "avx2"] = "native"
    methods: list[str] = field(default_factory=lambda: list(METHODS))
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    teacher_train: TrainConfig = field(default_factory=TrainConfig)
    student_train: TrainConfig = field(default_factory=TrainConfig)
    topk: TopKConfig = field(default_factory=TopKConfig)
    calibration: CalibrationConfig = field(default_factory=CalibrationConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    instruct: InstructConfig = field(default_factory=InstructConfig)

    @property
    def run_dir(self) -> Path:
        root = Path(self.runs_dir) / self.name
        return root if self.seeds is None else root / f"seed{self.seed}"

    def per_seed(self) -> list[RunConfig]:
        """One config per training seed (`seeds`, else just this one)."""
        if self.seeds is None:
            return [self]
        return [dataclasses.replace(self, seed=s) for s in self.seeds]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def hash(self) -> str:
        """Stable short hash of the whole config, recorded in manifests and the store."""
        blob = json.dumps(self.to_dict(), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


@dataclass(frozen=True)
class Range:
    """An allowed interval for one numeric key; `str` is how the error message says it."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def __contains__(self, v: float) -> bool:
        if self.low is not None and (v <= self.low if self.low_open else v < self.low):
            return False
        return self.high is None or (v < self.high if self.high_open else v <= self.high)

    def __str__(self) -> str:
        if self.high is None:
            return f"{'>' if self.low_open else '>='} {self.low}"
        return (f"in {'(' if self.low_open else '['}{self.low}, {self.high}"
                f"{')' if self.high_open else ']'}")


_POSITIVE, _AT_LEAST_1, _NON_NEGATIVE = Range(0, low_open=True), Range(1), Range(0)
MAX_SEED = 2**32 - 1  # numpy's seed range; torch accepts it too
# Sanity caps, far above any real use, on keys whose cost grows with the value: a typo such
# as `eval.topk = 100000` or `n_bins = 1e9` would otherwise run out of memory (or time) only
# at the stage that uses it, after the training. k against the model's vocabulary is
# checked once the models stage knows it (`vocab_check.py`).
MAX_TOPK = 1000           # topk.k, eval.topk: top-k kept per position / per prediction
MAX_COVERAGE_K = 10_000   # topk.coverage_k: points of the coverage curve
MAX_BINS = 10_000         # calibration.n_bins, eval.n_bins
MAX_BOOT = 100_000        # eval.n_boot: bootstrap resamples per metric

# Range of every numeric key, checked while the config loads so that a value that would only
# fail (or silently misbehave) after hours of training stops the run before its first stage.
_LIMITS: dict[tuple[type, str], Range] = {
    (RunConfig, "seed"): Range(0, MAX_SEED),
    (DataConfig, "seed"): Range(0, MAX_SEED),
    **{(DataConfig, k): _AT_LEAST_1 for k in ("n_train", "n_val", "n_test", "n_ood",
                                              "max_train")},
    (TrainConfig, "epochs"): _NON_NEGATIVE,  # 0: the teacher as given (student: checked below)
    (TrainConfig, "batch_size"): _AT_LEAST_1,
    (TrainConfig, "learning_rate"): _POSITIVE,
    (TrainConfig, "weight_decay"): _NON_NEGATIVE,
    (TrainConfig, "warmup_ratio"): Range(0, 1, high_open=True),  # HF reads >= 1 as steps
    (TrainConfig, "gradient_accumulation_steps"): _AT_LEAST_1,
    (TrainConfig, "max_length"): Range(3),
    (TrainConfig, "save_steps"): _AT_LEAST_1,
    (TopKConfig, "k"): Range(1, MAX_TOPK),
    (TopKConfig, "coverage_k"): Range(1, MAX_COVERAGE_K),
    (TopKConfig, "shard_size"): _AT_LEAST_1,
    (TopKConfig, "batch_size"): _AT_LEAST_1,
    (CalibrationConfig, "n_bins"): Range(1, MAX_BINS),
    (DistillConfig, "ce_weight"): Range(0, 1),  # (1 - w) * KL + w * CE
    (EvalConfig, "batch_size"): _AT_LEAST_1,
    (EvalConfig, "n_bins"): Range(1, MAX_BINS),
    (EvalConfig, "n_boot"): Range(0, MAX_BOOT),
    (EvalConfig, "topk"): Range(1, MAX_TOPK),
    **{(InstructConfig, k): _AT_LEAST_1 for k in ("n_train", "n_val", "n_test")},
}

# Keys typed `str` whose value must be one of a fixed set (the modules that read them hold
# the same lists: data.FORMATS, models.pretrained.DTYPES; tests/test_config.py checks they agree).
_CHOICES: dict[tuple[type, str], tuple[str, ...]] = {
    (DataConfig, "fmt"): ("auto", "csqa", "boolq", "jsonl"),
    (ModelConfig, "dtype"): ("float32", "bfloat16", "float16"),
}

# Keys naming a file, folder or model: an empty string would silently mean "here" or nothing.
_NOT_EMPTY = {(RunConfig, "runs_dir"), (RunConfig, "store"), (ModelConfig, "teacher"),
              (ModelConfig, "student"), (DataConfig, "hf_dataset"),
              *((DataConfig, k) for k in ("train", "val", "test", "test_ood", "dir")),
              *((InstructConfig, k) for k in ("dir", "train", "val", "test"))}


def _check_value(cls: type, key: str, value: Any, where: str) -> None:
    """The table-driven checks of one (already type-checked) value: range, choice, empty."""
    if value is None:
        return
    limit = _LIMITS.get((cls, key))
    if limit is not None and value not in limit:
        raise ConfigError(f"{where}: must be {limit}, got {value}")
    choices = _CHOICES.get((cls, key))
    if choices is not None and value not in choices:
        raise ConfigError(f"{where}: expected one of {choices}, got {value!r}")
    if (cls, key) in _NOT_EMPTY and not value.strip():
        raise ConfigError(f"{where}: must not be empty")


def _check_together(cfg: RunConfig, where: str) -> None:
    """Checks across keys of one section that no single key's range can express."""
    for name in ("teacher_train", "student_train"):
        t = getattr(cfg, name)
        if t.fp16 and t.bf16:
            raise ConfigError(f"{where}: {name}.fp16 and {name}.bf16: choose one")
        # decoupled weight decay multiplies the weights by (1 - learning_rate * weight_decay)
        # each step: at >= 1 they are wiped out or flip sign
        if t.learning_rate * t.weight_decay >= 1:
            raise ConfigError(f"{where}: {name}.weight_decay: learning_rate * weight_decay must "
                              f"be < 1 (each step scales the weights by 1 - their product), "
                              f"got {t.learning_rate:g} * {t.weight_decay:g}")

# `name` becomes a folder under `runs_dir` that `--force` deletes from: one plain name only
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")


def _check_type(value: Any, tp: Any, where: str) -> Any:
    """Return `value` converted to `tp` where lossless (int -> float), else raise."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        if len(options) == 1:  # `X | None`: X's own message says more than the union's
            return _check_type(value, options[0], where)
        for arg in options:
            try:
                return _check_type(value, arg, where)
            except ConfigError:
                continue
        raise ConfigError(f"{where}: expected {tp}, got {value!r}")
    if origin is Literal:
        if value not in typing.get_args(tp):
            raise ConfigError(f"{where}: expected one of {typing.get_args(tp)}, got {value!r}")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        (item,) = typing.get_args(tp)
        return [_check_type(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{where}: must be a finite number, got {value}")
    if tp is bool and not isinstance(value, bool):
        raise ConfigError(f"{where}: expected true or false, got {value!r}")
    if tp is int and isinstance(value, bool):
        raise ConfigError(f"{where}: expected an integer, got {value!r}")
    if isinstance(tp, type) and not isinstance(value, tp):
        raise ConfigError(f"{where}: expected {tp.__name__}, got {value!r}")
    return value


def _build(cls: type, raw: dict[str, Any], where: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - names)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; known: {sorted(names)}")
    kwargs = {}
    for key, value in raw.items():
        tp = hints[key]
        here = f"{where}.{key}" if where else key
        if dataclasses.is_dataclass(tp):
            if not isinstance(value, dict):
                raise ConfigError(f"{here}: expected a table, got {value!r}")
            kwargs[key] = _build(tp, value, here)
        else:
            kwargs[key] = _check_type(value, tp, here)
            _check_value(cls, key, kwargs[key], here)
    return cls(**kwargs)


def _parse_override(text: str) -> tuple[list[str], Any]:
    """`teacher_train.epochs=2` -> (["teacher_train", "epochs"], 2), values parsed as TOML."""
    if "=" not in text:
        raise ConfigError(f"override {text!r}: expected section.key=value")
    key, raw = text.split("=", 1)
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw  # a bare string such as a model id
    except RecursionError:
        raise ConfigError(f"override {key!r}: the value is nested too deeply to be a config "
                          "value") from None
    return key.strip().split("."), value


def load_config(path: str | Path | None = None, overrides: list[str] = ()) -> RunConfig:
    """Load a TOML config (or the defaults) and apply `section.key=value` overrides."""
    raw: dict[str, Any] = {}
    where = "config"
    if path is not None:
        where = str(path)
        try:
            # utf-8-sig: a byte-order mark (Windows editors write one) is not a TOML statement
            raw = tomllib.loads(Path(path).read_text(encoding="utf-8-sig"))
        except FileNotFoundError:
            raise ConfigError(f"{path}: config file not found") from None
        except IsADirectoryError:
            raise ConfigError(f"{path}: a folder, not a config file (give a .toml file, "
                              "e.g. configs/demo.toml)") from None
        except OSError as exc:  # permissions, a name too long, an I/O error
            raise ConfigError(f"{path}: cannot read the config file "
                              f"({exc.strerror or exc})") from None
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{path}: not valid TOML: {exc}") from None
        except RecursionError:  # tomllib parses nested arrays and tables recursively
            raise ConfigError(f"{path}: not valid TOML: nested too deeply to be a config"
                              ) from None
    for text in overrides:
        keys, value = _parse_override(text)
        node = raw
        for k in keys[:-1]:
            node = node.setdefault(k, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {text!r}: {k} is not a section")
        node[keys[-1]] = value
    try:
        cfg = _build(RunConfig, raw, "")
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    except RecursionError:  # a value nested deeper than any key's type allows
        raise ConfigError(f"{where}: a value is nested too deeply to be a config value"
                          ) from None
    if cfg.seeds is not None and (not cfg.seeds or len(set(cfg.seeds)) != len(cfg.seeds)
                                  or min(cfg.seeds) < 0 or max(cfg.seeds) > MAX_SEED):
        raise ConfigError(f"{where}: seeds: expected distinct integers in [0, {MAX_SEED}], "
                          f"got {cfg.seeds}")
    bad = sorted(set(cfg.methods) - set(METHODS))
    if bad:
        raise ConfigError(f"{where}: methods: unknown {bad}; known: {list(METHODS)}")
    if not cfg.methods or len(set(cfg.methods)) != len(cfg.methods):
        raise ConfigError(f"{where}: methods: expected a non-empty list without repeats, "
                          f"got {cfg.methods}")
    if not _NAME.fullmatch(cfg.name):
        raise ConfigError(f"{where}: name: {cfg.name!r} is not a plain folder name (letters, "
                          "digits, '.', '_', '-'; no '/' or '..'; at most 100 characters)")
    if cfg.data.hf_dataset is not None and cfg.data.embedded:
        raise ConfigError(f"{where}: data.hf_dataset: set data.embedded = false to read "
                          f"{cfg.data.hf_dataset!r} instead of the embedded task")
    if cfg.topk.coverage_k < cfg.topk.k:
        raise ConfigError(f"{where}: topk.coverage_k must be >= topk.k")
    if cfg.student_train.epochs == 0:
        raise ConfigError(f"{where}: student_train.epochs: must be > 0 (only the teacher can be "
                          "used as given, with teacher_train.epochs = 0), got 0")
    for name in ("teacher_train", "student_train"):
        try:
            check_report_to(getattr(cfg, name).report_to, f"{name}.report_to")
        except ConfigError as exc:
            raise ConfigError(f"{where}: {exc}") from None
    _check_together(cfg, where)
    for name in ("teacher_train", "student_train"):  # the two settings train different tokens
        on, kind = getattr(cfg, name).loss_on, cfg.data.kind
        if (on == "response") != (kind == "instruct"):
            want = '"response"' if kind == "instruct" else '"answer" or "sequence"'
            raise ConfigError(f"{where}: {name}.loss_on: data.kind = \"{kind}\" trains with "
                              f"loss_on = {want}, got {on!r}")
    grids = (("temperature_grid", cfg.calibration.temperature_grid, lambda v: v > 0, "> 0"),
             ("smoothing_grid", cfg.calibration.smoothing_grid, lambda v: 0 <= v < 1, "in [0, 1)"))
    for key, grid, ok, what in grids:
        if grid is not None and not any(ok(v) for v in grid):
            raise ConfigError(f"{where}: calibration.{key}: no valid value (each must be {what}),"
                              f" got {grid}")
    return cfg
