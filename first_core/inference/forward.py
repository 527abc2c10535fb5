"""Batched forward passes at the answer position, and what is kept of their logits.

One implementation shared by top-k extraction (`topk.py`) and evaluation (`evaluate.py`), so
the teacher's stored distribution and the evaluated one come from the same position with the
same padding. The answer position is the last prompt token: its logits predict the answer
letter (the prompt ends with `Answer:`, the target is `" A"`).

Batches are *left*-padded with explicit position ids (what `generate()` does), so every row's
last token sits in the last column and the model only has to project that one position to the
vocabulary (`logits_to_keep=1`): a batch never materialises a `B x T x V` logits tensor. Rows
are padded independently of each other, so a row's logits equal those of an unbatched forward
(checked in tests). Prompts are tokenised one window at a time, so memory does not grow with
the number of prompts.

**Length-sorted batches.** Extraction and evaluation tokenise `SORT_WINDOW` batches' worth of
prompts at once and batch them by length (`batch_order`), which cuts the padding the model
runs over; their outputs are put back in prompt order per window (`in_order_index`), so
callers see the order they gave.

**Reduced where the logits are.** `answer_reduced` applies a caller's `reduce` (the top-k and
logsumexp of `logit_reduce`, plus what evaluation gathers) to each batch's logits where they
are, and only its small outputs reach the host: on a GPU they are copied without stalling it
(`to_host`), so a `[B, V]` row never crosses the bus. On the CPU the compiled kernel takes
the top-k.

The next window is tokenised on a background thread while the current one runs through the
model only when a core is free for it (`spare_cpu`: the model is on an accelerator, or torch
uses fewer threads than the process may run on). When torch's own threads already fill every
core, a background thread only stalls them (each parallel region waits for its slowest
thread), so it tokenises inline instead. `answer_top` runs the compiled top-k of a batch on a
free core beside the next batch's forward pass in the same way.
"""

from __future__ import annotations

import inspect
import os
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from tqdm.auto import tqdm

from . import logit_reduce
from ..data.examples import DEFAULT_TEMPLATE, Example, PromptTemplate
from ..models.encoding import encode_examples
from ..models.presets import MAX_POSITIONS

SORT_WINDOW = 8  # batches whose prompts are batched by length together (a bounded look-ahead)

Prompts = Sequence[str] | Sequence[Sequence[int]]


class PromptIds(Sequence[list[int]]):
    """The prompt token ids of `examples`, encoded lazily one slice at a time.

    Encoding goes through `models.encoding.encode_examples`, so inference sees exactly the prompts
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
    width = int(lengths.max())
    ids = torch.zeros(len(seqs), width, dtype=torch.long)
    mask = torch.arange(width).unsqueeze(0) >= (width - lengths).unsqueeze(1)
    ids[mask] = torch.tensor([t for s in seqs for t in s], dtype=torch.long)
    positions = (mask.long().cumsum(1) - 1).clamp(min=0)
    return tuple(to_device(t, device) for t in (ids, mask.long(), positions))


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


def prefetched(fn, items: Iterable, background: bool) -> Iterator:
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


def batch_order(lengths: Sequence[int], batch_size: int, sort: bool) -> list[np.ndarray]:
    """Index arrays of the batches over items of these lengths: by length, longest first and
    stable, when `sort` (less padding; the batch that needs the most memory runs first), else
    in order."""
    lengths = np.asarray(lengths, dtype=np.int64)
    order = np.argsort(-lengths, kind="stable") if sort else np.arange(len(lengths))
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


def in_order_index(order: np.ndarray, counts: np.ndarray | None = None) -> np.ndarray:
    """The gather index that puts rows laid out item by item in `order` (item i with
    `counts[i]` rows, one each when None) back in item order 0, 1, 2, ..."""
    if counts is None:
        inverse = np.empty_like(order)
        inverse[order] = np.arange(len(order))
        return inverse
    counts = np.asarray(counts, dtype=np.int64)
    sizes = counts[order]
    first = np.empty(len(order), np.int64)  # where item i's rows start in `order`'s layout
    first[order] = np.cumsum(sizes) - sizes
    return span_rows(first, counts)


def span_rows(starts: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """The row indices of consecutive spans, span after span: starts[i], starts[i] + 1, ...,
    starts[i] + counts[i] - 1 (item i's rows in a table laid out item by item)."""
    counts = np.asarray(counts, dtype=np.int64)
    return (np.repeat(np.asarray(starts, dtype=np.int64) - (np.cumsum(counts) - counts), counts)
            + np.arange(counts.sum()))


def to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A host tensor on `device`; to a GPU without blocking (from pinned memory), so that
    queueing the next batch never waits for the GPU to finish the current one."""
    if device.type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


def to_host(items: Iterable[tuple]) -> Iterator[tuple]:
    """Each item with its last entry (a tuple of tensors) moved to the host, in order.

    A CUDA tensor is copied without blocking, queued right behind its batch's work, and an
    item is handed on only once the next one has been pulled (its forward pass queued): the
    host waits for a copy that is long done while the GPU runs the next batch."""
    pending = None
    for *meta, outputs in items:
        event = None
        if any(t.is_cuda for t in outputs):
            host = tuple(t.to("cpu", non_blocking=True) for t in outputs)
            device = next(t.device for t in outputs if t.is_cuda)
            event = torch.cuda.Event()
            event.record(torch.cuda.current_stream(device))
        else:
            host = tuple(t.cpu() for t in outputs)
        if pending is not None:
            yield _arrived(*pending)
        pending = meta, host, event
    if pending is not None:
        yield _arrived(*pending)


def _arrived(meta: list, host: tuple, event) -> tuple:
    if event is not None:
        event.synchronize()
    return (*meta, host)


def forward_batches(model: torch.nn.Module, tokenizer, prompts: Prompts, batch_size: int = 64,
                    progress: bool | None = None, desc: str = "forward", sort: bool = True
                    ) -> Iterator[tuple[int, int, np.ndarray, torch.Tensor]]:
    """Yield `(start, size, rows, logits)` per batch: the logits `[B, V]` at the answer
    position of `prompts[start + rows]`, on the model's device and in its dtype, where
    `prompts[start:start + size]` is the window the batch belongs to.

    With `sort` a window holds `SORT_WINDOW` batches, batched by prompt length
    (`batch_order`); without, one batch in prompt order. Every batch of a window comes
    before the next window's. `prompts` are strings (tokenised with the tokenizer's special
    tokens, as in training) or token id lists. `progress=None` shows a bar only when stderr
    is a terminal; the bar is erased when done (the CLI's stage line stays).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    model.eval()
    device = model_device(model)
    params = inspect.signature(model.forward).parameters
    extra = {"logits_to_keep": 1} if "logits_to_keep" in params else {}
    use_positions = "position_ids" in params
    show = sys.stderr.isatty() if progress is None else progress
    window = batch_size * (SORT_WINDOW if sort else 1)
    starts = range(0, len(prompts), window)
    encoded = prefetched(lambda s: _encode(tokenizer, prompts[s:s + window]), starts,
                         background=spare_cpu(model))
    with tqdm(total=len(prompts), desc=desc, unit="ex", disable=not show, leave=False) as bar:
        for start, seqs in zip(starts, encoded):
            lengths = [len(s) for s in seqs]
            if 0 in lengths:
                raise ValueError(f"prompts: an empty prompt at index {start + lengths.index(0)}")
            for rows in batch_order(lengths, batch_size, sort):
                ids, mask, positions = _left_pad([seqs[i] for i in rows], device)
                kwargs = {"position_ids": positions} if use_positions else {}
                with torch.inference_mode():
                    logits = model(input_ids=ids, attention_mask=mask, use_cache=False,
                                   **kwargs, **extra).logits[:, -1, :]
                yield start, len(seqs), rows, logits
                del logits  # not alive while the next batch runs
                bar.update(len(rows))


def answer_logits(model: torch.nn.Module, tokenizer, prompts: Prompts, batch_size: int = 64,
                  progress: bool | None = None, desc: str = "forward"
                  ) -> Iterator[tuple[int, torch.Tensor]]:
    """Yield `(start, logits)` per batch: float32 CPU logits `[B, V]` of
    prompts[start:start+B], in prompt order (`forward_batches` unsorted)."""
    for start, _, rows, logits in forward_batches(model, tokenizer, prompts, batch_size,
                                                  progress, desc, sort=False):
        yield start + int(rows[0]), logits.float().cpu()


def _in_order(batches: Iterable[tuple[int, int, np.ndarray, tuple[torch.Tensor, ...]]]
              ) -> Iterator[tuple[int, tuple[torch.Tensor, ...]]]:
    """`(start, outputs)` per window, its batches' output rows put back in prompt order."""
    parts: list[tuple[np.ndarray, tuple[torch.Tensor, ...]]] = []
    seen = 0
    for start, size, rows, outputs in batches:
        parts.append((rows, outputs))
        seen += len(rows)
        if seen < size:
            continue
        order = np.concatenate([r for r, _ in parts])
        joined = [torch.cat(col) if len(parts) > 1 else col[0]
                  for col in zip(*(out for _, out in parts))]
        if not np.array_equal(order, np.arange(size)):
            index = torch.from_numpy(in_order_index(order))
            joined = [t[index] for t in joined]
        yield start, tuple(joined)
        parts, seen = [], 0


def on_device_default(model: torch.nn.Module, on_device: bool | None) -> bool:
    """`on_device` as given, else whether the model runs off the CPU: the top-k is taken where
    the logits are on an accelerator, and by the compiled kernel on the CPU."""
    return model_device(model).type != "cpu" if on_device is None else bool(on_device)


def answer_reduced(model: torch.nn.Module, tokenizer, prompts: Prompts,
                   reduce: Callable[[torch.Tensor, np.ndarray], tuple[torch.Tensor, ...]],
                   batch_size: int = 64, progress: bool | None = None, desc: str = "forward",
                   sort: bool = True, background: bool = False
                   ) -> Iterator[tuple[int, tuple[torch.Tensor, ...]]]:
    """Yield `(start, outputs)` per window of prompts, in prompt order: `reduce(logits,
    index)` of each batch of `forward_batches` (logits on the model's device in its dtype;
    `index`: the batch's prompt indices) on the host, rows in prompt order.

    On a GPU the outputs come back without stalling it (`to_host`). On the CPU with
    `background`, a batch's `reduce` runs on another thread while the model runs the next
    batch (worth it for the compiled kernel, which releases the GIL)."""
    def step(batch: tuple[int, int, np.ndarray, torch.Tensor]):
        start, size, rows, logits = batch
        with torch.inference_mode():
            return start, size, rows, reduce(logits, start + rows)

    batches = forward_batches(model, tokenizer, prompts, batch_size, progress, desc, sort)
    if model_device(model).type == "cpu":
        done = prefetched(step, batches, background)
    else:
        done = to_host(map(step, batches))
    yield from _in_order(done)


def answer_top(model: torch.nn.Module, tokenizer, prompts: Prompts, width: int,
               batch_size: int = 64, progress: bool | None = None, desc: str = "forward",
               on_device: bool | None = None, sort: bool = True
               ) -> Iterator[tuple[int, torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Yield `(start, probs, ids, lse)` per window in prompt order: the `width` most likely
    tokens at the answer position, their probabilities exp(logit - lse) `[n, width]` float32
    and the log-normaliser `[n, 1]`, taken by `logit_reduce.top_logits` where the logits are
    (`on_device`, default: the model is not on the CPU) or on the host. On the CPU, when a
    core is free (`spare_cpu`) and the vocabulary takes the compiled kernel, a batch's top-k
    runs beside the next batch's forward pass; below `COMPILED_MIN_VOCAB` the step costs less
    than the hand-off, so it runs in this thread."""
    on_device = on_device_default(model, on_device)
    background = (not on_device and spare_cpu(model)
                  and vocab_size(model) >= logit_reduce.COMPILED_MIN_VOCAB)

    def reduce(logits: torch.Tensor, _: np.ndarray):
        return logit_reduce.top_logits(logits, width, on_device)

    for start, (top, ids, lse) in answer_reduced(model, tokenizer, prompts, reduce, batch_size,
                                                 progress, desc, sort, background):
        yield start, torch.exp(top - lse), ids, lse
