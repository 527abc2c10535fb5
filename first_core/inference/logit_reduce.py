"""The top-k logits and the log-normaliser of logit rows, computed where the rows are.

Extraction and evaluation need, per position, only the `width` largest logits, their ids and
logsumexp over the vocabulary (a kept token's probability is exp(logit - logsumexp)): never a
`[B, V]` probability tensor, and never the `[B, V]` logits on the host when the model runs on
an accelerator. Two paths give the same numbers (to float32 rounding; tested):

- **on the device** (`device_top_logits`): `torch.topk` of the rows as they are (a bf16 logit
  is exact in float32, so the kept values are the same) and a logsumexp accumulated in
  float32, over a float32 copy of at most `CHUNK_ELEMENTS` logits at a time, so a `[tokens, V]`
  bf16 block is never copied whole. What a model on a GPU uses: only `[B, width]` values and
  ids and `[B, 1]` normalisers go to the host. It runs on CPU tensors too (the tests compare).
- **on the host** (`top_logits(..., on_device=False)`): the rows copied to the host as
  float32, where real vocabularies (`COMPILED_MIN_VOCAB` and wider) take the compiled
  `topk_kernel.top_logits` (one pass, faster than torch's two calls on a CPU), tiny ones
  torch's own kernels. What a model on the CPU uses.

A row with a NaN or +inf logit, or only -inf ones, has no finite normaliser: its logsumexp is
NaN on both paths, so every probability of the row is NaN.
"""

from __future__ import annotations

import torch

COMPILED_MIN_VOCAB = 2048  # below this torch.topk + logsumexp are faster than the kernel
CHUNK_ELEMENTS = 1 << 24   # logits per float32 copy of the device path (64 MiB)


def device_top_logits(logits: torch.Tensor, width: int
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(top logits [B, width] float32, their ids [B, width] int64, logsumexp [B, 1] float32)
    of logit rows `[B, V]` of any float dtype, on their own device (see the module doc)."""
    if logits.dim() != 2 or not 1 <= width <= logits.shape[1]:
        raise ValueError(f"width must be in 1..{logits.shape[-1]} for [B, V] logits, "
                         f"got {width} for shape {tuple(logits.shape)}")
    top, ids = torch.topk(logits, width, dim=-1)
    step = max(1, CHUNK_ELEMENTS // logits.shape[1])
    lse = torch.empty(len(logits), 1, dtype=torch.float32, device=logits.device)
    for r in range(0, len(logits), step):  # float32 accumulation, one bounded copy at a time
        torch.logsumexp(logits[r:r + step].float(), dim=-1, keepdim=True, out=lse[r:r + step])
    return top.float(), ids, lse.masked_fill_(~lse.isfinite(), float("nan"))


def top_logits(logits: torch.Tensor, width: int, on_device: bool = True
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`device_top_logits` where the rows are (`on_device`), or the same three tensors on the
    host from a float32 copy of the rows: the compiled kernel for real vocabularies."""
    if on_device:
        return device_top_logits(logits, width)
    logits = logits.float().cpu()
    if logits.dim() == 2 and logits.shape[1] >= COMPILED_MIN_VOCAB:
        # here, not at import: numba stays off the start-up path
        from ..kernels import topk as topk_kernel

        return topk_kernel.top_logits(logits, width)
    return device_top_logits(logits, width)
