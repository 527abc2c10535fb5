"""Loading models safely, building the embedded presets, and the answer-token contract.

Every model, preset or real, goes through one path: `from_pretrained` on a directory or a hub
id, safetensors only (no pickle from user paths), `trust_remote_code` off unless asked. The
presets `tiny-teacher` / `tiny-student` are built once into the run directory with
`save_pretrained` (a word-level tokenizer trained on the task text plus a small `LlamaConfig`
model), so later stages cannot tell them from a downloaded model.

Training and inference share one answer contract: the prompt (with the tokenizer's special
tokens) followed by exactly one answer-letter token. `answer_token_ids` enforces it and
`encode_examples` builds sequences as `encode(prompt) + [answer_id]`, so the target can never
be the first piece of a letter that the tokenizer splits.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from .data import DEFAULT_TEMPLATE, Example, PromptTemplate, answer_text, format_prompt
from .errors import ConfigError, FirstError

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

def _check_local_dir(path: Path) -> None:
    """Fail before `from_pretrained` with a message that says what the directory lacks."""
    names = {p.name for p in path.iterdir()}
    missing = []
    if "config.json" not in names:
        missing.append("config.json")
    if not {"model.safetensors", "model.safetensors.index.json"} & names:
        pickled = sorted(n for n in names if n.endswith((".bin", ".pt", ".pth", ".ckpt")))
        hint = (f" (found only pickle weights {pickled}, which are refused for safety; convert "
                "them to safetensors)" if pickled else "")
        missing.append(f"weights: model.safetensors or model.safetensors.index.json{hint}")
    if not {"tokenizer.json", "tokenizer_config.json", "tokenizer.model"} & names:
        missing.append("a tokenizer (tokenizer.json / tokenizer_config.json)")
    if missing:
        raise FirstError(f"model directory {path}: missing " + "; ".join(missing))


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
    nothing is there, instead of after the stages before the first load."""
    local = not is_preset(spec) and _looks_like_path(str(spec))
    if local and not Path(spec).expanduser().exists():
        raise ConfigError(f"{where}: model path {spec!r} does not exist (a preset "
                          f"{sorted(PRESETS)}, a Hugging Face id `org/name` or a local folder)")


def load_model(spec: str | os.PathLike[str], *, trust_remote_code: bool = False,
               dtype: str = "float32", device: str | torch.device | None = None):
    """Load `(model, tokenizer)` from a local directory or a Hugging Face hub id.

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
    path = Path(spec).expanduser()
    if not path.exists() and _looks_like_path(str(spec)):
        raise FirstError(f"model path {path}: no such directory")
    if path.exists():
        if not path.is_dir():
            raise FirstError(f"model path {path}: expected a directory saved with "
                             "save_pretrained, got a file")
        _check_local_dir(path)
    if trust_remote_code:
        log.warning("trust_remote_code is on for %s: its Python code will run on this machine",
                    spec)
    kwargs = dict(trust_remote_code=trust_remote_code)
    try:
        source = str(path) if path.exists() else str(spec)
        tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
        model = AutoModelForCausalLM.from_pretrained(source, dtype=DTYPES[dtype],
                                                     use_safetensors=True, **kwargs)
    except OSError as exc:
        raise FirstError(f"model {spec}: cannot load it ({exc})") from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.config.pad_token_id = tokenizer.pad_token_id
    return model.to(pick_device(device)), tokenizer


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
    out = Path(out_dir)
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
    return out


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
