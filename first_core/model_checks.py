"""Config checks that need the machine or the models, made before any training.

`load_config` checks every key on its own; what it cannot know is the models' vocabulary
(`topk.k` must fit the teacher's, `eval.topk` every evaluated model's)
and whether the machine has a CUDA GPU (`fp16`). The models stage runs
`check_vocabulary` once it has built or found the models, and the preflight of every run
`check_machine` (and `check_vocabulary` when the models are already there), so such a value
stops the run before the first training stage with a message naming the config file and the
key, not at the stage that uses it, hours later.
"""

from __future__ import annotations

from collections.abc import Mapping

from .config import RunConfig
from .errors import ConfigError

DISTILLED = ("student_distill", "first_ls", "first_ts")


def vocab_size(path: str, trust_remote_code: bool = False) -> int | None:
    """The vocabulary (rows of the output layer) of the model at `path` (a folder or hub id)
    from its config alone; None when that config cannot be read here (the stage that loads
    the model then says why)."""
    from transformers import AutoConfig
    try:
        config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError):
        return None
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    size = getattr(text, "vocab_size", None)
    return int(size) if isinstance(size, int) and size > 0 else None


def _trained_roles(cfg: RunConfig) -> dict[str, bool]:
    """Which models this run trains or evaluates: the teacher (for its own row or as the
    source of the top-k), the student (student_ft or a distilled student)."""
    methods = set(cfg.methods)
    return {"teacher": bool(methods & {"teacher_ft", *DISTILLED}),
            "student": bool(methods & {"student_ft", *DISTILLED})}


def check_vocabulary(cfg: RunConfig, paths: Mapping[str, str], where: str) -> None:
    """Refuse a k larger than the vocabulary of the model it applies to. `paths` maps
    "teacher" / "student" to the model each starts from; `where` is the config file."""
    roles = _trained_roles(cfg)
    distilled = bool(set(cfg.methods) & set(DISTILLED))
    # topk.coverage_k is not checked: coverage at K >= the vocabulary is all of it (the demo's
    # top-100 statistics of a 47-token teacher), so the statistics clip there
    checks = [("topk.k", cfg.topk.k, "teacher", distilled),
              ("eval.topk", cfg.eval.topk, "teacher", "teacher_ft" in cfg.methods),
              ("eval.topk", cfg.eval.topk, "student", roles["student"])]
    sizes: dict[str, int | None] = {}
    for key, k, role, used in checks:
        if not used:
            continue
        if role not in sizes:
            sizes[role] = vocab_size(paths[role], cfg.model.trust_remote_code)
        size = sizes[role]
        if size is not None and k > size:
            raise ConfigError(f"{where}: {key}: {k} is larger than the {role}'s vocabulary "
                              f"({size} tokens) of {getattr(cfg.model, role)!r}; it can be "
                              f"at most {size}")


def check_machine(cfg: RunConfig, where: str, cuda: bool | None = None) -> None:
    """fp16 training needs a CUDA GPU (the Trainer refuses it on CPU at the training stage)."""
    if cuda is None:
        import torch
        cuda = torch.cuda.is_available()
    roles = _trained_roles(cfg)
    for role in ("teacher", "student"):
        if roles[role] and getattr(cfg, f"{role}_train").fp16 and not cuda:
            raise ConfigError(f"{where}: {role}_train.fp16: needs a CUDA GPU and this machine "
                              "has none; use bf16 = true or float32 (both false) on CPU")
