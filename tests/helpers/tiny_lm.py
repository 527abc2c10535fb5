"""A tiny random Llama + word-level tokenizer + synthetic examples for inference tests.

Shared by test_inference / test_topk / test_evaluate and the two-process extraction script,
so every one of them builds exactly the same model from the same seed.
"""

from __future__ import annotations

import random
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from first_core.data.examples import Example, answer_text, format_prompt
from first_core.models.loading import load_model
from first_core.models.presets import train_tokenizer

WORDS = ("apple river stone cloud green seven table quiet north bright paper glass tiger "
         "music winter orange silver garden window planet").split()


def make_examples(n: int, seed: int = 0, n_options: tuple[int, ...] = (4,)) -> list[Example]:
    """`n` random questions; the number of options is drawn from `n_options` per example."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        m = rng.choice(n_options)
        labels = tuple("ABCDE"[:m])
        out.append(Example(
            id=f"q{i:04d}", question=" ".join(rng.choices(WORDS, k=rng.randint(2, 9))),
            labels=labels, choices=tuple(rng.choice(WORDS) for _ in labels),
            answer=rng.choice(labels), context=None if rng.random() < 0.7 else rng.choice(WORDS)))
    return out


def make_model(examples: list[Example], seed: int = 0):
    """(model, tokenizer): a 2-layer Llama over a tokenizer trained on the examples' text."""
    texts = [format_prompt(ex) + answer_text(lab) for ex in examples for lab in "ABCDE"]
    tokenizer = train_tokenizer(texts)
    return tiny_llama(tokenizer, seed), tokenizer


def tiny_llama(tokenizer, seed: int = 0, **config) -> LlamaForCausalLM:
    """A 2-layer random Llama over `tokenizer`'s vocabulary, the same for the same seed
    (`config`: further LlamaConfig fields)."""
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=128, tie_word_embeddings=False,
                         pad_token_id=tokenizer.pad_token_id, **config)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
        # Larger output weights than the default init give peaked, varied distributions.
        torch.nn.init.normal_(model.lm_head.weight, std=0.4)
    return model.eval()


def save_model(examples: list[Example], out_dir: Path, seed: int = 0,
               make=make_model) -> Path:
    """`make(examples, seed)`'s model and tokenizer saved to `out_dir`."""
    model, tokenizer = make(examples, seed)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir


def load_saved(path: Path):
    return load_model(str(path))


def forbid_full_softmax(monkeypatch, what: str) -> None:
    """Make every softmax (torch, Tensor, functional) fail: `what` formed a [B, V] one."""
    def no_softmax(*args, **kwargs):
        raise AssertionError(f"{what} formed a [B, V] softmax")

    monkeypatch.setattr(torch, "softmax", no_softmax)
    monkeypatch.setattr(torch.Tensor, "softmax", no_softmax)
    monkeypatch.setattr(torch.nn.functional, "softmax", no_softmax)
