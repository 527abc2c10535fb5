from __future__ import annotations

from pathlib import Path

import pytest

from first_core.config.settings import RunConfig
from first_core.config.loading import load_config
from first_core.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", ["demo", "tiny", "llama-csqa.example"])
def test_shipped_configs_load(name: str) -> None:
    cfg = load_config(ROOT / "configs" / f"{name}.toml")
    assert isinstance(cfg, RunConfig)
    assert cfg.topk.k == 5


def test_defaults_without_file() -> None:
    cfg = load_config()
    assert cfg == RunConfig()


def test_unknown_key_names_file_and_key(tmp_path: Path) -> None:
    f = tmp_path / "c.toml"
    f.write_text("[teacher_train]\nepoch = 3\n")
    with pytest.raises(ConfigError, match=r"c\.toml.*teacher_train.*epoch"):
        load_config(f)


def test_unknown_section(tmp_path: Path) -> None:
    f = tmp_path / "c.toml"
    f.write_text("[teachr]\nepochs = 3\n")
    with pytest.raises(ConfigError, match="teachr"):
        load_config(f)


@pytest.mark.parametrize("text, key", [
    ('[topk]\nk = "five"\n', "topk.k"),
    ("[teacher_train]\nbf16 = 1\n", "teacher_train.bf16"),
    ("seed = true\n", "seed"),
    ('[teacher_train]\nloss_on = "all"\n', "teacher_train.loss_on"),
    ("[data]\nn_train = 1.5\n", "data.n_train"),
    ("teacher_train = 3\n", "teacher_train"),
])
def test_wrong_types_name_the_key(tmp_path: Path, text: str, key: str) -> None:
    f = tmp_path / "c.toml"
    f.write_text(text)
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(f)


def test_int_accepted_for_float() -> None:
    cfg = load_config(overrides=["teacher_train.learning_rate=1"])
    assert cfg.teacher_train.learning_rate == 1.0
    assert isinstance(cfg.teacher_train.learning_rate, float)


def test_overrides_parse_toml_values_and_bare_strings() -> None:
    cfg = load_config(overrides=["topk.k=10", "model.teacher=meta-llama/Llama-2-7b-hf",
                                 "calibration.temperature_grid=[0.2, 0.3]"])
    assert cfg.topk.k == 10
    assert cfg.model.teacher == "meta-llama/Llama-2-7b-hf"
    assert cfg.calibration.temperature_grid == [0.2, 0.3]


@pytest.mark.parametrize("override, match", [
    ("topk.k=0", "topk.k"),
    ("distill.student_side='transformed'", "student_side"),
    ("methods=['teacher_ft', 'magic']", "magic"),
    ("student_train.epochs=0", "student_train.epochs: must be > 0"),
    ("teacher_train.epochs=-1", "teacher_train.epochs: must be >= 0"),
    ("noequals", "section.key=value"),
    ("cpu_kernels='avx512'", "cpu_kernels"),
])
def test_bad_values(override: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        load_config(overrides=[override])


def test_missing_and_invalid_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[data\n")
    with pytest.raises(ConfigError, match="bad.toml: not valid TOML"):
        load_config(bad)


def test_hash_is_stable_and_sensitive() -> None:
    a, b = load_config(), load_config()
    assert a.hash() == b.hash()
    assert load_config(overrides=["seed=1"]).hash() != a.hash()


# issue 10: every value that would fail (or mislead) only after training is refused at load
@pytest.mark.parametrize("override, message", [
    ("teacher_train.learning_rate=nan", "teacher_train.learning_rate: must be a finite number"),
    ("student_train.learning_rate=inf", "student_train.learning_rate: must be a finite number"),
    ("teacher_train.epochs=-inf", "teacher_train.epochs: must be a finite number"),
    ("distill.ce_weight=nan", "distill.ce_weight: must be a finite number"),
    ("calibration.temperature_grid=[nan, 0.3]",
     r"calibration.temperature_grid\[0\]: must be a finite number, got nan"),
    ("calibration.smoothing_grid=[0.1, inf]",
     r"calibration.smoothing_grid\[1\]: must be a finite number"),
    ("teacher_train.batch_size=0", "teacher_train.batch_size: must be >= 1, got 0"),
    ("student_train.batch_size=0", "student_train.batch_size: must be >= 1"),
    ("topk.batch_size=0", "topk.batch_size: must be >= 1"),
    ("eval.batch_size=0", "eval.batch_size: must be >= 1"),
    ("seed=-1", r"seed: must be in \[0, 4294967295\], got -1"),
    ("seed=4294967296", r"seed: must be in \[0, 4294967295\]"),
    ("data.seed=-1", r"data.seed: must be in \[0, 4294967295\]"),
    ("seeds=[0, 4294967296]", r"seeds: expected distinct integers in \[0, 4294967295\]"),
    ("calibration.n_bins=0", r"calibration.n_bins: must be in \[1, 10000\], got 0"),
    ("eval.n_bins=0", r"eval.n_bins: must be in \[1, 10000\]"),
    ("eval.n_boot=0", r"eval.n_boot: must be in \[1, 100000\]"),
    ("topk.shard_size=0", "topk.shard_size: must be >= 1"),
    ("teacher_train.warmup_ratio=-0.1", r"teacher_train.warmup_ratio: must be in \[0, 1\)"),
    ("student_train.warmup_ratio=1.0", r"student_train.warmup_ratio: must be in \[0, 1\)"),
    ("teacher_train.gradient_accumulation_steps=0",
     "teacher_train.gradient_accumulation_steps: must be >= 1"),
    ("data.n_train=0", "data.n_train: must be >= 1"),
    ("data.max_train=0", "data.max_train: must be >= 1"),
    ("distill.ce_weight=-1", r"distill.ce_weight: must be in \[0, 1\]"),
    ("name='../../x'", "name: '../../x' is not a plain folder name"),
    ("name='a/b'", "name: 'a/b' is not a plain folder name"),
    ("name='..'", "name: '..' is not a plain folder name"),
    ("name=''", "name: '' is not a plain folder name"),
    ("methods=[]", "methods: expected a non-empty list"),
    ("methods=['teacher_ft', 'teacher_ft']", "methods: expected a non-empty list without repeats"),
])
def test_out_of_range_values_name_file_section_and_key(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=r"tiny\.toml: " + message):
        load_config(ROOT / "configs" / "tiny.toml", [override])


@pytest.mark.parametrize("override", ["seed=0", "seed=4294967295", "teacher_train.warmup_ratio=0",
                                      "eval.n_boot=1", "name='run-2.b_c'", "data.max_train=1",
                                      "methods=['student_ft']"])
def test_edge_values_inside_the_range_are_accepted(override: str) -> None:
    load_config(ROOT / "configs" / "tiny.toml", [override])


def test_loss_on_must_match_the_setting() -> None:
    """The instruction setting trains on response tokens, the MC setting on the answer."""
    with pytest.raises(ConfigError, match='data.kind = "instruct" trains with loss_on = '
                                          '"response"'):
        load_config(None, ["data.kind=instruct"])
    with pytest.raises(ConfigError, match='data.kind = "mc"'):
        load_config(None, ["teacher_train.loss_on=response"])
    cfg = load_config(None, ["data.kind=instruct", "teacher_train.loss_on=response",
                             "student_train.loss_on=response"])
    assert cfg.data.kind == "instruct" and cfg.instruct.mc_split == "test"


def test_seeds_give_one_config_and_run_directory_per_seed() -> None:
    one = load_config(ROOT / "configs" / "tiny.toml")
    assert one.per_seed() == [one] and one.run_dir.name == "tiny"
    cfg = load_config(ROOT / "configs" / "tiny.toml", ["seeds=[2, 0]"])
    runs = cfg.per_seed()
    assert [r.seed for r in runs] == [2, 0]
    assert [r.run_dir.relative_to(cfg.runs_dir).as_posix() for r in runs] == [
        "tiny/seed2", "tiny/seed0"]
    assert {r.data.seed for r in runs} == {cfg.data.seed}  # one data set for every seed
    with pytest.raises(ConfigError, match="seeds"):
        load_config(ROOT / "configs" / "tiny.toml", ["seeds=[1, 1]"])


# issue 23 item 7: every key range-checked at load (the caps are far above real use)
@pytest.mark.parametrize("override, message", [
    ("distill.ce_weight=1.5", r"distill.ce_weight: must be in \[0, 1\], got 1.5"),
    ("eval.topk=1001", r"eval.topk: must be in \[1, 1000\], got 1001"),
    ("topk.k=0", r"topk.k: must be in \[1, 1000\], got 0"),
    ("topk.coverage_k=10001", r"topk.coverage_k: must be in \[1, 10000\]"),
    ("eval.n_bins=10001", r"eval.n_bins: must be in \[1, 10000\]"),
    ("eval.n_boot=100001", r"eval.n_boot: must be in \[1, 100000\]"),
    ("instruct.n_val=0", "instruct.n_val: must be >= 1"),
    ("model.dtype='int8'", r"model.dtype: expected one of \('float32', 'bfloat16', 'float16'\)"),
    ("data.fmt='csv'", r"data.fmt: expected one of \('auto', 'csqa', 'boolq', 'jsonl'\)"),
    ("model.teacher=''", "model.teacher: must not be empty"),
    ("runs_dir=' '", "runs_dir: must not be empty"),
    ("store=''", "store: must not be empty"),
    ("data.train=''", "data.train: must not be empty"),
    ("teacher_train.weight_decay=1000",
     r"teacher_train.weight_decay: learning_rate \* weight_decay must be < 1"),
])
def test_every_key_is_checked_at_load(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=r"tiny\.toml: " + message):
        load_config(ROOT / "configs" / "tiny.toml", [override])


def test_fp16_and_bf16_together_are_refused_at_load() -> None:
    with pytest.raises(ConfigError, match="student_train.fp16 and student_train.bf16: choose"):
        load_config(None, ["student_train.fp16=true", "student_train.bf16=true"])


@pytest.mark.parametrize("override", ["distill.ce_weight=1", "eval.topk=1000", "topk.k=1000",
                                      "eval.n_boot=100000", "model.dtype='bfloat16'",
                                      "data.fmt='boolq'", "teacher_train.weight_decay=0.1"])
def test_values_at_the_edge_of_the_new_checks_are_accepted(override: str) -> None:
    extra = ["topk.coverage_k=1000"] if override == "topk.k=1000" else []
    load_config(None, [override, *extra])


def test_the_choice_lists_agree_with_the_modules_that_read_them() -> None:
    from first_core.config import loading, settings as config
    from first_core.data import examples as data
    from first_core.models import pretrained as models

    assert set(loading._CHOICES[config.DataConfig, "fmt"]) == set(data.FORMATS)
    assert set(loading._CHOICES[config.ModelConfig, "dtype"]) == set(models.DTYPES)
