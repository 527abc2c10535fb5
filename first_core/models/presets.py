"""The embedded presets `tiny-teacher` / `tiny-student`: a tokenizer trained on the task text
plus a small `LlamaConfig` model, built once into the run directory.

`build_preset` writes them with `save_pretrained` (through `pretrained.publish`), so later
stages cannot tell them from a downloaded model and load them the one way every model is
loaded. The tokenizer is word level: every number and answer letter is one token.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch

from ..errors import ConfigError, FirstError
from .pretrained import publish

SPECIALS = {"pad_token": "<pad>", "unk_token": "<unk>", "bos_token": "<s>", "eos_token": "</s>"}

# Llama shapes of the embedded presets: the teacher is ~8x the student's non-embedding size,
# both small enough to train on two CPU cores in minutes.
PRESETS: dict[str, dict[str, int]] = {
    "tiny-teacher": dict(hidden_size=128, intermediate_size=352, num_hidden_layers=4,
                         num_attention_heads=4, num_key_value_heads=4),
    "tiny-student": dict(hidden_size=64, intermediate_size=176, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2),
}
MAX_POSITIONS = 512  # the presets' positions, and every encoding's default max_length


def is_preset(spec: str | os.PathLike[str]) -> bool:
    """True when `spec` names a built-in preset rather than a hub id or a path."""
    return str(spec) in PRESETS


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
    return publish(model, tokenizer, Path(out_dir))
