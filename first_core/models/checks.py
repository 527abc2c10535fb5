"""Config checks that need the machine or the models, made before any training.

`load_config` checks every key on its own; what it cannot know is the models' vocabulary
(`topk.k` must fit the teacher's, `eval.topk` every evaluated model's)
and whether the machine has a CUDA GPU (`fp16`). The models stage runs
`check_models` once it has built or found the models, and the preflight of every run
`check_machine` (and `check_models` when the models are already there), so such a value
stops the run before the first training stage with a message naming the config file and the
key, not at the stage that uses it, hours later. `check_models` also checks what the model
folders themselves must hold: whole files (`model_files`), enough positions for each
`max_length`, and, for distillation, one tokenizer shared by teacher and student.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from ..config.settings import RunConfig
from ..errors import ConfigError, FirstError

DISTILLED = ("student_distill", "first_ls", "first_ts")


def _text_config(path: str, trust_remote_code: bool = False):
    """The (text) config of the model at `path` (a folder or hub id); None when it cannot
    be read here (the stage that loads the model then says why)."""
    from transformers import AutoConfig
    try:
        config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError):
        return None
    return config.get_text_config() if hasattr(config, "get_text_config") else config


def vocab_size(path: str, trust_remote_code: bool = False) -> int | None:
    """The vocabulary (rows of the output layer) of the model at `path` from its config
    alone; None when that config cannot be read here."""
    size = getattr(_text_config(path, trust_remote_code), "vocab_size", None)
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
        train = getattr(cfg, f"{role}_train")
        if train.epochs == 0:  # the teacher used as given: nothing trains, fp16 is unused
            continue
        if roles[role] and train.fp16 and not cuda:
            raise ConfigError(f"{where}: {role}_train.fp16: needs a CUDA GPU and this machine "
                              "has none; use bf16 = true or float32 (both false) on CPU")


def check_models(cfg: RunConfig, paths: Mapping[str, str], where: str,
                 texts: Sequence[str] = ()) -> None:
    """Everything about the models that can be known before training: k against the
    vocabularies (`check_vocabulary`), each local model folder whole (`model_files`),
    `max_length` within each model's positions, and, when a student is distilled, one
    tokenizer for teacher and student (`check_same_tokenizer`, with `texts` as the sample
    whose encodings must agree). Run by the `models` stage and, when the models were built
    earlier, before the first stage of a rerun."""
    from .files import check_model_files
    check_vocabulary(cfg, paths, where)
    roles = _trained_roles(cfg)
    distilled = bool(set(cfg.methods) & set(DISTILLED))
    tokenizers = {}
    for role in ("teacher", "student"):
        if not roles[role]:
            continue
        what = f"model.{role} {getattr(cfg.model, role)!r}"
        if Path(paths[role]).is_dir():
            tokenizers[role] = check_model_files(paths[role], what, cfg.model.trust_remote_code)
        check_positions(cfg, role, paths[role], where)
    if distilled and len(tokenizers) == 2:  # hub ids: compared by the stages that load them
        check_same_tokenizer(cfg, tokenizers["teacher"], tokenizers["student"],
                             vocab_size(paths["student"], cfg.model.trust_remote_code), texts)


def check_positions(cfg: RunConfig, role: str, path: str, where: str) -> None:
    """`<role>_train.max_length` (the length every stage of that model cuts prompts to:
    training, top-k, evaluation) must fit the model's `max_position_embeddings`: past it a
    learned position table fails with an IndexError and a rotary one runs on, silently, past
    the length it was trained for."""
    positions = getattr(_text_config(path, cfg.model.trust_remote_code),
                        "max_position_embeddings", None)
    length = getattr(cfg, f"{role}_train").max_length
    if isinstance(positions, int) and positions > 0 and length > positions:
        raise ConfigError(f"{where}: {role}_train.max_length: {length} is longer than the "
                          f"{role} {getattr(cfg.model, role)!r} can read "
                          f"(max_position_embeddings = {positions}); it can be at most "
                          f"{positions}")


def check_same_tokenizer(cfg: RunConfig, teacher, student, student_rows: int | None,
                         texts: Sequence[str] = (), n_sample: int = 200) -> None:
    """Distillation hands the teacher's top-k token *ids* to the student, so an id must
    name the same token for both. Refused, naming the first ids that differ:

    - any id both tokenizers have that maps to another token string (a Llama-2 teacher and a
      Mistral student have the same 32,000-token size and different tokens at many ids);
    - a teacher token the student's output layer has no row for;
    - the first `n_sample` of `texts` (the training prompts with their answers) encoding
      differently (the same vocabulary split by other rules).

    Comparing the full id -> token maps costs a dictionary pass over the vocabulary (well
    under a second for 150k tokens), far less than one training step."""
    names = (f"model.teacher {cfg.model.teacher!r}", f"model.student {cfg.model.student!r}")
    t_of = {i: tok for tok, i in teacher.get_vocab().items()}
    s_of = {i: tok for tok, i in student.get_vocab().items()}
    shared = sorted(t_of.keys() & s_of.keys())
    differ = [i for i in shared if t_of[i] != s_of[i]]
    why = None
    if differ:
        shown = ", ".join(f"id {i} is {t_of[i]!r} for the teacher and {s_of[i]!r} for the "
                          f"student" for i in differ[:3])
        more = f" (and {len(differ) - 3} more ids)" if len(differ) > 3 else ""
        why = f"{shown}{more}"
    elif student_rows is not None and t_of and max(t_of) >= student_rows:
        why = (f"the teacher's tokenizer has ids up to {max(t_of)} and the student's output "
               f"layer only {student_rows} rows")
    else:
        for text in list(texts)[:n_sample]:
            a, b = teacher(text)["input_ids"], student(text)["input_ids"]
            if a != b:
                why = (f"they encode the training text {text[:80]!r} differently "
                       f"({a[:12]} ... against {b[:12]} ...)")
                break
    if why is not None:
        raise FirstError(f"{names[1]} and {names[0]} do not share one tokenizer: {why}. "
                         "Distillation passes token ids from teacher to student, so both must "
                         "use the same vocabulary (e.g. a teacher and a student of one model "
                         "family)")
