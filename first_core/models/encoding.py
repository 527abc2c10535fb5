"""Token sequences with a target span: what training, extraction and evaluation all read.

One idea serves both settings: a sequence is `prompt ids + target ids`, and `Encoded` records
where the targets start. A multiple-choice answer is a target span one token long
(`encode_examples`); an instruction response is the span `response + eos`
(`encode_responses`). The logits that predict target token t sit at t - 1.

The answer contract of the multiple-choice setting lives here too: the prompt (with the
tokenizer's special tokens) followed by exactly one answer-letter token. `answer_token_ids`
enforces it and `encode_examples` builds sequences as `encode(prompt) + [answer_id]`, so the
target can never be the first piece of a letter that the tokenizer splits. Its `prompt_ids`
are what the left-padded last-position forward (`inference.forward`) feeds to extraction and
evaluation, so inference sees exactly the prompts that were trained on.

Instruction pairs are tokenised apart, as Stanford Alpaca does: `encode(prompt)` (with the
tokenizer's special tokens), then `encode(response)` (without) and the eos token, so the
response tokens never depend on the template's last word. Too-long pairs lose response tokens
from the end first (at least one stays), then prompt tokens from the left (after BOS); one
warning counts them. Too-long multiple-choice prompts lose tokens from the left.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..data.examples import DEFAULT_TEMPLATE, Example, PromptTemplate, answer_text, format_prompt
from ..data.instruct_data import InstructExample
from ..errors import ConfigError, FirstError
from .presets import MAX_POSITIONS

log = logging.getLogger(__name__)

ANSWER_CUE = "Answer:"  # how the default template ends; the letter follows it with a space


@dataclass(frozen=True)
class Encoded:
    """`input_ids[i] = prompt ids + target ids`; `target_start[i]` is the index of the first
    target token (the answer token in the multiple-choice setting, the first response token
    in the instruction setting). The logits that predict token t sit at t - 1."""

    input_ids: list[list[int]]
    target_start: list[int]
    example_ids: list[str]

    def __len__(self) -> int:
        return len(self.input_ids)

    def n_targets(self, i: int) -> int:
        return len(self.input_ids[i]) - self.target_start[i]

    def target_counts(self) -> np.ndarray:
        """`n_targets` of every sequence, int64 `[N]`."""
        return np.array([len(s) - r for s, r in zip(self.input_ids, self.target_start)],
                        dtype=np.int64)

    def n_tokens(self) -> int:
        """Target tokens over all sequences."""
        return sum(len(s) - r for s, r in zip(self.input_ids, self.target_start))

    def prompt_ids(self) -> list[list[int]]:
        """The (possibly truncated) prompts alone, for inference on exactly what was trained."""
        return [ids[:start] for ids, start in zip(self.input_ids, self.target_start)]


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


def encode_examples(tokenizer, examples: Sequence[Example],
                    template: PromptTemplate = DEFAULT_TEMPLATE,
                    max_length: int = MAX_POSITIONS) -> Encoded:
    """Tokenise `examples` as `encode(prompt) + [answer_id]`, at most `max_length` tokens: a
    target span one token long, the answer.

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
    return Encoded(input_ids=input_ids, target_start=[len(s) - 1 for s in input_ids],
                   example_ids=[ex.id for ex in examples])


def encode_responses(tokenizer, examples: Sequence[InstructExample],
                     max_length: int) -> Encoded:
    """Tokenise instruction pairs as `prompt + response + eos` (module docstring)."""
    if max_length < 3:
        raise ConfigError(f"max_length: must be >= 3, got {max_length}")
    if not examples:
        raise FirstError("examples: empty, nothing to encode")
    prompts = tokenizer([ex.prompt for ex in examples], add_special_tokens=True)["input_ids"]
    responses = tokenizer([ex.response for ex in examples],
                          add_special_tokens=False)["input_ids"]
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    bos = tokenizer.bos_token_id
    seqs, starts, n_cut = [], [], 0
    for p, r, ex in zip(prompts, responses, examples):
        r = [*r, *eos]
        if not r:
            raise FirstError(f"example {ex.id!r}: the response has no tokens")
        if len(p) + len(r) > max_length:
            n_cut += 1
            r = r[:max(1, max_length - len(p))]
            room = max_length - len(r)
            if len(p) > room:
                keep_bos = bos is not None and p[0] == bos
                p = [bos, *p[len(p) - room + 1:]] if keep_bos else p[len(p) - room:]
        seqs.append([*p, *r])
        starts.append(len(p))
    if n_cut:
        log.warning("%d of %d prompt+response pairs were longer than max_length=%d and were "
                    "cut (response end first, then prompt start)", n_cut, len(examples),
                    max_length)
    return Encoded(seqs, starts, [ex.id for ex in examples])
