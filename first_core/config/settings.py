"""The run configuration's schema: one frozen dataclass per TOML section, with its defaults.

Every key a config file or a `--set section.key=value` override may hold is a field here, typed;
`config.loading` reads a file into these dataclasses and checks each value against its type and
range. The full resolved config is stored with every run (`RunConfig.to_dict`, `hash`), and the
method names the store uses (`METHODS`, `RUN_METHODS`) are defined here with the `methods` key.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal


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
