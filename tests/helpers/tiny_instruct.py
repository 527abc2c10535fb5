"""A tiny random Llama over the embedded instruction task's words, for per-token tests.

Shared by tests/test_instruct.py and the two-process extraction script, so both build the
same model and examples from the same seed.
"""

from __future__ import annotations

from pathlib import Path

from first_core.data.instruct_data import InstructTemplate, load_instruct
from first_core.data.instruct_tasks import write_instruct_task
from first_core.models.presets import train_tokenizer
from helpers import tiny_lm
from helpers.tiny_lm import load_saved, tiny_llama  # noqa: F401 (load_saved: for the scripts)

SHORT = InstructTemplate(with_input="### Instruction:\n{instruction}\n### Input:\n{input}\n"
                                    "### Response:",
                         no_input="### Instruction:\n{instruction}\n### Response:")


def make_examples(folder: Path, n: int = 24, seed: int = 0):
    files = write_instruct_task(folder, seed=seed, n_train=n, n_val=4, n_test=4)
    return load_instruct(files["train"], "alpaca", SHORT)


def make_model(examples, seed: int = 0):
    tokenizer = train_tokenizer([e.prompt + " " + e.response for e in examples])
    return tiny_llama(tokenizer, seed, eos_token_id=tokenizer.eos_token_id), tokenizer


def save_model(examples, out_dir: Path, seed: int = 0) -> Path:
    return tiny_lm.save_model(examples, out_dir, seed, make=make_model)
