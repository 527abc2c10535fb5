"""A tiny random Llama over the embedded instruction task's words, for per-token tests.

Shared by tests/test_instruct.py and the two-process extraction script, so both build the
same model and examples from the same seed.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from first_core.instruct_data import InstructTemplate, load_instruct
from first_core.instruct_tasks import write_instruct_task
from first_core.models import load_model, train_tokenizer

SHORT = InstructTemplate(with_input="### Instruction:\n{instruction}\n### Input:\n{input}\n"
                                    "### Response:",
                         no_input="### Instruction:\n{instruction}\n### Response:")


def make_examples(folder: Path, n: int = 24, seed: int = 0):
    files = write_instruct_task(folder, seed=seed, n_train=n, n_val=4, n_test=4)
    return load_instruct(files["train"], "alpaca", SHORT)


def make_model(examples, seed: int = 0):
    tokenizer = train_tokenizer([e.prompt + " " + e.response for e in examples])
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=128, tie_word_embeddings=False,
                         pad_token_id=tokenizer.pad_token_id,
                         eos_token_id=tokenizer.eos_token_id)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
        torch.nn.init.normal_(model.lm_head.weight, std=0.4)  # peaked, varied distributions
    return model.eval(), tokenizer


def save_model(examples, out_dir: Path, seed: int = 0) -> Path:
    model, tokenizer = make_model(examples, seed)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir


def load_saved(path: Path):
    return load_model(str(path))
