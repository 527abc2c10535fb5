"""Batched forward passes that return the logits at the answer position.

One implementation shared by top-k extraction (`topk.py`) and evaluation (`evaluate.py`), so
the teacher's stored distribution and the evaluated one come from the same position with the
same padding. The answer position is the last prompt token: its logits predict the answer
letter (the prompt ends with `Answer:`, the target is `" A"`).

Batches are *left*-padded with explicit position ids (what `generate()` does), so every row's
last token sits in the last column and the model only has to project that one position to the
vocabulary (`logits_to_keep=1`): a batch never materialises a `B x T x V` logits tensor. Rows
are padded independently of each other, so a row's logits equal those of an unbatched forward
(checked in tests). Prompts are tokenised one batch at a time, so memory does not grow with the
number of prompts.

The next batch is tokenised on a background thread while the current one runs through the
model only when a core is free for it (`spare_cpu`: the model is on an accelerator, or torch
uses fewer threads than the process may run on), so a consumer of `answer_logits` must not use
the tokenizer inside its loop. When torch's own threads already fill every core, a background
thread only stalls them (each parallel region waits for its slowest thread), so it tokenises
inline instead. `answer_top` adds the top-k of each batch, which on a free core runs beside
the next batch's forward pass in the same way.
"""

from __future__ import annotations

import inspect
import os
import sys
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor

import torch
from tqdm.auto import tqdm

from .data import DEFAULT_TEMPLATE, Example, PromptTemplate
from .models import MAX_POSITIONS, encode_examples

COMPILED_MIN_VOCAB = 2048  # below this torch.topk + logsumexp are faster than the kernel

Prompts = Sequence[str] | Sequence[Sequence[int]]


class PromptIds(Sequence[list[int]]):
    """The prompt token ids of `examples`, encoded lazily one slice at a time.

    Encoding goes through `models.encode_examples`, so inference sees exactly the prompts
    that training saw (same special tokens, same left truncation at `max_length`), and only
    the batch being run is held as token ids.
    """

    def __init__(self, tokenizer, examples: Sequence[Example],
                 template: PromptTemplate = DEFAULT_TEMPLATE, max_length: int = MAX_POSITIONS):
        self.tokenizer, self.examples = tokenizer, examples
        self.template, self.max_length = template, max_length

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index):
        if not isinstance(index, slice):
            return self[index:index + 1 or None][0]
        chunk = self.examples[index]
        return (encode_examples(self.tokenizer, chunk, self.template, self.max_length)
                .prompt_ids() if chunk else [])


def model_device(model: torch.nn.Module) -> torch.device:
    """The device of the model's first parameter (where its inputs must go)."""
    return next(model.parameters()).device


def vocab_size(model: torch.nn.Module) -> int:
    """Width of the model's output distribution (the rows of its output embedding)."""
    out = model.get_output_embeddings()
    return int(out.weight.shape[0]) if out is not None else int(model.config.vocab_size)


def _encode(tokenizer, batch: Sequence[str] | Sequence[Sequence[int]]) -> list[list[int]]:
    if all(isinstance(p, str) for p in batch):
        return tokenizer(list(batch), add_special_tokens=True)["input_ids"]
    if any(isinstance(p, str) for p in batch):
        raise TypeError("prompts: give strings or token id lists, not a mix of both")
    return [list(p) for p in batch]


def _left_pad(seqs: list[list[int]], device: torch.device
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask, position_ids), left-padded with id 0 (masked out)."""
    lengths = torch.tensor([len(s) for s in seqs])
    if int(lengths.min()) == 0:
        raise ValueError(f"prompts: an empty prompt at batch row {int(lengths.argmin())}")
    width = int(lengths.max())
    ids = torch.zeros(len(seqs), width, dtype=torch.long)
    mask = torch.arange(width).unsqueeze(0) >= (width - lengths).unsqueeze(1)
    ids[mask] = torch.tensor([t for s in seqs for t in s], dtype=torch.long)
    positions = (mask.long().cumsum(1) - 1).clamp(min=0)
    return ids.to(device), mask.long().to(device), positions.to(device)


def spare_cpu(model: torch.nn.Module) -> bool:
    """Whether a CPU core is free while the model runs a forward pass: it runs on an
    accelerator, or torch's intra-op threads leave one of this process's cores idle. Under
    torchrun / `accelerate launch` the processes on this machine (`LOCAL_WORLD_SIZE`) share
    its cores, so each process counts only its part."""
    if model_device(model).type != "cpu":
        return True
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    ranks = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1))
    return torch.get_num_threads() < (cores or 1) // ranks


def _prefetched(fn, items: Iterable, background: bool) -> Iterator:
    """fn(item) for each item, in order. With `background`, fn runs on one other thread: fn of
    item i is computed there while the caller works on result i - 1 and pulls item i + 1
    (pulling may itself be work, e.g. a forward pass), at most two items ahead."""
    if not background:
        yield from map(fn, items)
        return
    with ThreadPoolExecutor(1, thread_name_prefix="first-prefetch") as pool:
        pending = None
        for item in items:
            submitted = pool.submit(fn, item)
            if pending is not None:
                yield pending.result()
            pending = submitted
        if pending is not None:
            yield pending.result()


def answer_logits(model: torch.nn.Module, tokenizer, prompts: Prompts, batch_size: int = 64,
                  progress: bool | None = None, desc: str = "forward"
                  ) -> Iterator[tuple[int, torch.Tensor]]:
    """Yield `(start, logits)` per batch: float32 CPU logits `[B, V]` of prompts[start:start+B].

    `prompts` are strings (tokenised with the tokenizer's special tokens, as in training) or
    token id lists. `progress=None` shows a bar only when stderr is a terminal.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    model.eval()
    device = model_device(model)
    params = inspect.signature(model.forward).parameters
    extra = {"logits_to_keep": 1} if "logits_to_keep" in params else {}
    use_positions = "position_ids" in params
    show = sys.stderr.isatty() if progress is None else progress
    starts = range(0, len(prompts), batch_size)
    batches = _prefetched(lambda s: _encode(tokenizer, prompts[s:s + batch_size]), starts,
                          background=spare_cpu(model))
    with torch.inference_mode(), tqdm(total=len(prompts), desc=desc, unit="ex",
                                      disable=not show) as bar:
        for start, seqs in zip(starts, batches):
            ids, mask, positions = _left_pad(seqs, device)
            kwargs = {"position_ids": positions} if use_positions else {}
            out = model(input_ids=ids, attention_mask=mask, use_cache=False, **kwargs, **extra)
            yield start, out.logits[:, -1, :].float().cpu()
            bar.update(len(seqs))


def answer_top(model: torch.nn.Module, tokenizer, prompts: Prompts, width: int,
               batch_size: int = 64, progress: bool | None = None, desc: str = "forward"
               ) -> Iterator[tuple[int, torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Yield `(start, probs, ids, lse)` per batch: `top_probabilities(logits, width)` of each
    batch of `answer_logits`. When a core is free (`spare_cpu`) and the vocabulary takes the
    compiled kernel, a batch's top-k runs on another thread while the model runs the next
    batch (the kernel and torch's ops release the GIL); below `COMPILED_MIN_VOCAB` the step
    costs less than the hand-off, so it runs in this thread."""
    background = spare_cpu(model) and vocab_size(model) >= COMPILED_MIN_VOCAB

    def top(batch: tuple[int, torch.Tensor]):
        return (batch[0], *top_probabilities(batch[1], width))

    yield from _prefetched(top, answer_logits(model, tokenizer, prompts, batch_size, progress,
                                              desc), background)


def top_probabilities(logits: torch.Tensor, k: int, dtype: torch.dtype | None = None
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(probs [B, k], ids [B, k], log-normaliser [B, 1]) of the k most likely tokens.

    softmax is monotone, so the top-k of the logits are the top-k tokens, and a kept token's
    probability is exp(logit - logsumexp(logits)): one `topk` and one `logsumexp` over the
    vocabulary, no [B, V] probability tensor. `dtype` (e.g. float64) is the precision of the
    returned probabilities and normaliser; other entries' probabilities follow as
    `torch.exp(logits.gather(...).to(dtype) - lse)`.

    float32 CPU rows of a real vocabulary (what extraction passes) go through the compiled
    `topk_kernel.top_logits`; other dtypes, devices and tiny vocabularies (where torch's own
    kernels are faster) through `torch.topk` and `torch.logsumexp`.
    """
    if (dtype is None and logits.dtype == torch.float32 and logits.device.type == "cpu"
            and logits.dim() == 2 and logits.shape[1] >= COMPILED_MIN_VOCAB):
        from . import topk_kernel  # here, not at import: numba stays off the start-up path

        top, ids, lse = topk_kernel.top_logits(logits, k)  # the same numbers, one compiled pass
        return torch.exp(top - lse), ids, lse
    top, ids = torch.topk(logits, k, dim=-1)
    lse = torch.logsumexp(logits, dim=-1, keepdim=True)
    if dtype is not None:
        top, lse = top.to(dtype), lse.to(dtype)
    return torch.exp(top - lse), ids, lse
