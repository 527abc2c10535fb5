"""Loading a run configuration: a TOML file plus `section.key=value` overrides, checked.

Loading is strict on purpose: an unknown key or a value of the wrong type is a `ConfigError`
naming the file and the key, because a typo that is silently ignored produces a run that looks
fine and measures something else. Each value is checked against its type in `config.settings`,
then against the tables below (range, choice, not empty), then the keys against each other,
so a value that would fail only after hours of training stops the run before its first stage.
"""

from __future__ import annotations

import dataclasses
import math
import re
import tomllib
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from ..errors import ConfigError
from .report_to import check_report_to
from .settings import (METHODS, CalibrationConfig, DataConfig, DistillConfig, EvalConfig,
                       InstructConfig, ModelConfig, RunConfig, TopKConfig, TrainConfig)


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
    (EvalConfig, "n_boot"): Range(1, MAX_BOOT),  # the metrics resample at least once
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
