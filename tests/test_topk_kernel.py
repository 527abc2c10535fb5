"""first_core.kernels.topk against torch.topk / torch.logsumexp on the same rows."""

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from first_core.inference import logit_reduce
from first_core.kernels import topk as T

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def test_exp32_is_within_one_float32_ulp_and_exact_at_the_ends():
    rng = np.random.default_rng(0)
    x = np.concatenate([-rng.random(200_000) * 87, -rng.random(1000) * 1e-6,
                        np.linspace(-87, 0, 10_001)]).astype(np.float32)
    got, want = T.exp32_array(x), np.exp(x.astype(np.float64))
    assert (np.abs(got - want) <= np.spacing(want.astype(np.float32))).all()
    special = np.array([0.0, -0.0, -np.inf, -88.0, -1e4, np.nan], np.float32)
    out = T.exp32_array(special)
    assert out[:5].tolist() == [1.0, 1.0, 0.0, 0.0, 0.0] and np.isnan(out[5])


@SETTINGS
@given(st.integers(0, 2**32 - 1), st.integers(1, 9), st.integers(1, 6000),
       st.integers(1, 130), st.floats(0.1, 30.0), st.booleans())
def test_top_logits_equal_torch(seed, b, v, width, scale, rounded):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, v, generator=g) * scale
    if rounded:  # many exact ties, also at the block-maximum threshold
        x = torch.round(x)
    width = min(width, v)
    top, ids, lse = T.top_logits(x, width)
    ref = torch.topk(x, width, dim=-1)
    assert torch.equal(top, ref.values)  # the same values, in the same (descending) order
    if not rounded:
        assert torch.equal(ids, ref.indices)
    assert torch.equal(torch.gather(x, 1, ids), top)  # ids point at those values
    assert all(len(set(r)) == width for r in ids.tolist())
    want = torch.logsumexp(x.double(), dim=-1, keepdim=True)
    assert lse.dtype == torch.float32 and lse.shape == (b, 1)
    # the error of float32 logits, like torch's own float32 logsumexp
    assert ((lse.double() - want).abs() <= 4e-7 * want.abs().clamp(min=1.0)).all()


def test_ties_masked_tokens_and_broken_rows():
    x = torch.zeros(5, 300)
    x[1, ::2] = float("-inf")           # masked tokens: probability 0
    x[2, 7] = float("nan")
    x[3, 5] = float("inf")
    x[4] = float("-inf")
    top, ids, lse = T.top_logits(x, 40)
    assert ids[0].tolist() == list(range(40))  # all equal: the lower id first
    assert torch.isclose(lse[0, 0], torch.log(torch.tensor(300.0)))
    assert ids[1].tolist() == list(range(1, 80, 2))
    assert torch.isclose(lse[1, 0], torch.log(torch.tensor(150.0)))
    assert torch.isnan(lse[2:]).all()   # no finite normaliser: every probability NaN
    with pytest.raises(ValueError, match="width"):
        T.top_logits(x, 301)


def test_top_logits_takes_the_kernel_only_on_the_host_at_real_vocabularies(monkeypatch):
    calls = []
    real = T.top_logits
    monkeypatch.setattr(T, "top_logits", lambda *a: calls.append(a) or real(*a))
    big = torch.randn(8, logit_reduce.COMPILED_MIN_VOCAB) * 4
    top, ids, lse = logit_reduce.top_logits(big, 5, on_device=False)
    assert len(calls) == 1
    want = torch.softmax(big.double(), dim=-1)
    np.testing.assert_allclose(torch.exp(top - lse).numpy(),
                               torch.gather(want, 1, ids).numpy(), rtol=2e-6)
    assert torch.equal(ids, torch.topk(big, 5).indices)
    logit_reduce.top_logits(big.double(), 5, on_device=False)   # any float: a float32 copy
    assert len(calls) == 2
    logit_reduce.top_logits(big, 5)                             # on the device: torch
    logit_reduce.top_logits(big[:, :100], 5, on_device=False)   # tiny vocabulary: torch
    assert len(calls) == 2


@SETTINGS
@given(st.integers(0, 2**32 - 1), st.integers(1, 3000), st.integers(1, 200),
       st.sampled_from(["normal", "ties", "masked"]))
def test_threshold_keeps_at_least_width_blocks_and_not_many_more(seed, nb, width, kind):
    rng = np.random.default_rng(seed)
    blocks = rng.standard_normal(nb).astype(np.float32)
    if kind == "ties":
        blocks = np.round(blocks)
    if kind == "masked":  # whole blocks of -inf logits (a masked vocabulary tail)
        blocks[rng.random(nb) < 0.5] = -np.inf
    finite = np.isfinite(blocks)
    if not finite.any():
        return  # the caller handles rows without a finite maximum before asking
    t = T._threshold(blocks, width, np.float32(blocks[finite].max()))
    kept = int((blocks >= t).sum())
    if finite.sum() < width:
        assert t == -np.inf
    else:
        assert kept >= width  # a valid bound: the top `width` lie in those blocks
        if kind == "normal" and nb > width:  # distinct values: bisection gets close
            assert kept <= width + width // 4


def test_masked_vocabulary_tail_and_threaded_rows_equal_torch(monkeypatch):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(40, 5000, generator=g) * 3
    x[:, 3000:] = float("-inf")              # whole blocks masked out
    x[7, 40:] = float("-inf")                # fewer finite blocks than the width
    one = T.top_logits(x, 120)
    ref = torch.topk(x, 120, dim=-1)
    assert torch.equal(one[0], ref.values) and torch.equal(one[1][:, :2], ref.indices[:, :2])
    want = torch.logsumexp(x.double(), dim=-1, keepdim=True)
    assert ((one[2].double() - want).abs() <= 4e-7 * want.abs().clamp(min=1.0)).all()
    monkeypatch.setattr(T, "ROWS_PER_THREAD", 4)  # two chunks, one per thread
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        split = T.top_logits(x, 120)
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(a, b) for a, b in zip(one, split))
