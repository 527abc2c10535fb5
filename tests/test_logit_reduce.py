"""The top-k taken where the logits are (torch, any device) against the compiled CPU kernel,
and length-sorted batches against batches in order: the same ids and probabilities, per
position, per response token and in evaluation, in the caller's order."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from first_core.inference import forward as inference, logit_reduce
from first_core.kernels import topk as T
from first_core.evaluation.evaluate import predict
from first_core.inference.forward import (PromptIds, answer_top, batch_order, in_order_index,
                                          model_device, span_rows, to_host)
from first_core.evaluation.instruct_eval import token_confidences
from first_core.models.encoding import encode_examples
from first_core.knowledge.answer_topk import extract_topk
from first_core.knowledge.manifest import TOKENS
from first_core.knowledge.reader import load_topk
from first_core.knowledge.token_topk import extract_token_topk, iter_token_batches
from helpers import tiny_instruct, tiny_lm

torch.set_num_threads(1)
VOCAB = 4096  # wide enough for the compiled kernel (COMPILED_MIN_VOCAB)


def wide_llama(tokenizer, seed: int = 0) -> LlamaForCausalLM:
    """A random 2-layer Llama with a real-sized output layer over a tiny tokenizer's ids."""
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=256, tie_word_embeddings=False,
                         pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
        torch.nn.init.normal_(model.lm_head.weight, std=0.4)
    return model.eval()


@pytest.fixture(scope="module")
def mc():
    examples = tiny_lm.make_examples(37, seed=4, n_options=(2, 3, 5))
    _, tokenizer = tiny_lm.make_model(examples, seed=4)
    return wide_llama(tokenizer, seed=4), tokenizer, examples


@pytest.fixture(scope="module")
def instruct(tmp_path_factory):
    examples = tiny_instruct.make_examples(tmp_path_factory.mktemp("instruct"), n=21)
    _, tokenizer = tiny_instruct.make_model(examples)
    return wide_llama(tokenizer, seed=5), tokenizer, examples


@pytest.fixture
def kernel_calls(monkeypatch):
    """The calls of the compiled kernel during a test."""
    calls, real = [], T.top_logits
    monkeypatch.setattr(T, "top_logits", lambda *a: calls.append(a[1]) or real(*a))
    return calls


def _close_probs(a, b):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-8)


# ------------------------------------------------------------------ the two reductions

@pytest.mark.parametrize("seed, rows, vocab, width, scale", [
    (0, 7, 2048, 100, 3.0), (1, 64, 32_000, 100, 2.0), (2, 3, 5000, 1, 30.0),
    (3, 1, 2049, 2049, 1.0), (4, 130, 4096, 5, 8.0)])
def test_device_path_equals_the_kernel_on_cpu_rows(seed, rows, vocab, width, scale,
                                                   kernel_calls):
    x = torch.randn(rows, vocab, generator=torch.Generator().manual_seed(seed)) * scale
    d_top, d_ids, d_lse = logit_reduce.top_logits(x, width, on_device=True)
    assert not kernel_calls
    k_top, k_ids, k_lse = logit_reduce.top_logits(x, width, on_device=False)
    assert kernel_calls == [width]
    assert torch.equal(d_ids, k_ids) and torch.equal(d_top, k_top)
    assert d_lse.dtype == k_lse.dtype == torch.float32 and d_lse.shape == (rows, 1)
    _close_probs(torch.exp(d_top - d_lse).numpy(), torch.exp(k_top - k_lse).numpy())
    want = torch.logsumexp(x.double(), dim=-1, keepdim=True)  # independent: float64
    assert ((d_lse.double() - want).abs() <= 4e-7 * want.abs().clamp(min=1.0)).all()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_rows_keep_exact_values_and_a_float32_normaliser(dtype, monkeypatch):
    x = (torch.randn(40, 3000, generator=torch.Generator().manual_seed(9)) * 4).to(dtype)
    top, ids, lse = logit_reduce.top_logits(x, 50)
    k_top, _, _ = logit_reduce.top_logits(x, 50, on_device=False)  # from a float32 copy
    assert top.dtype == torch.float32 and torch.equal(top, k_top)
    assert torch.equal(torch.gather(x.float(), 1, ids), top)  # ties may differ in order
    want = torch.logsumexp(x.double(), dim=-1, keepdim=True)
    assert ((lse.double() - want).abs() <= 4e-7 * want.abs().clamp(min=1.0)).all()
    # the float32 copy is made a bounded number of rows at a time, with the same result
    monkeypatch.setattr(logit_reduce, "CHUNK_ELEMENTS", 3000 * 7)
    chunked = logit_reduce.top_logits(x, 50)
    assert all(torch.equal(a, b) for a, b in zip(chunked, (top, ids, lse)))


def test_rows_without_a_finite_normaliser_are_nan_on_both_paths():
    x = torch.randn(5, 2048)
    x[1, 3], x[2, 9], x[3] = float("nan"), float("inf"), float("-inf")
    x[4, ::2] = float("-inf")  # masked tokens: probability 0, the row stays finite
    for on_device in (True, False):
        _, ids, lse = logit_reduce.top_logits(x, 10, on_device=on_device)
        assert torch.isnan(lse[1:4]).all() and torch.isfinite(lse[[0, 4]]).all()
        assert (ids[4] % 2 == 1).all()
    with pytest.raises(ValueError, match="width"):
        logit_reduce.device_top_logits(x, 2049)


# ------------------------------------------------------------------ order helpers

@pytest.mark.parametrize("seed", range(5))
def test_in_order_index_undoes_any_batch_order(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 40))
    counts = rng.integers(1, 6, n)
    batches = batch_order(rng.integers(1, 50, n), int(rng.integers(1, 9)), sort=True)
    order = np.concatenate(batches)
    assert sorted(order.tolist()) == list(range(n))
    rows = [(i, j) for i in order for j in range(counts[i])]   # laid out in batch order
    want = [(i, j) for i in range(n) for j in range(counts[i])]
    assert [rows[g] for g in in_order_index(order, counts)] == want
    assert (order[in_order_index(order)] == np.arange(n)).all()


@pytest.mark.parametrize("seed", range(3))
def test_span_rows_lists_each_span_in_turn(seed):
    rng = np.random.default_rng(seed)
    counts = rng.integers(0, 5, 30)
    starts = rng.integers(0, 100, 30)
    want = [s + j for s, c in zip(starts, counts) for j in range(c)]
    assert span_rows(starts, counts).tolist() == want


def test_batch_order_sorts_longest_first_and_stable_only_when_asked():
    lengths = [3, 9, 3, 1, 9]
    assert [b.tolist() for b in batch_order(lengths, 2, sort=True)] == [[1, 4], [0, 2], [3]]
    assert [b.tolist() for b in batch_order(lengths, 2, sort=False)] == [[0, 1], [2, 3], [4]]


def test_to_host_hands_an_item_on_once_the_next_one_is_pulled():
    pulled = []

    def items():
        for i in range(4):
            pulled.append(i)
            yield i, (torch.full((2,), i),)

    got = []
    for i, (t,) in to_host(items()):
        got.append((i, t.tolist(), len(pulled)))
    assert got == [(0, [0, 0], 2), (1, [1, 1], 3), (2, [2, 2], 4), (3, [3, 3], 4)]


# ------------------------------------------------------------------ per answer position

def _stacked(runs):
    starts = [s for s, *_ in runs]
    return starts, [torch.cat(col) for col in zip(*(r[1:] for r in runs))]


def test_answer_position_device_path_equals_the_kernel_path(mc, kernel_calls):
    model, tokenizer, examples = mc
    prompts = PromptIds(tokenizer, examples)
    _, (p_dev, i_dev, _) = _stacked(list(answer_top(model, tokenizer, prompts, 100,
                                                    batch_size=4, on_device=True)))
    assert not kernel_calls
    _, (p_cpu, i_cpu, _) = _stacked(list(answer_top(model, tokenizer, prompts, 100,
                                                    batch_size=4, on_device=False)))
    assert len(kernel_calls) == 10  # one call per batch of 4
    assert torch.equal(i_dev, i_cpu)
    _close_probs(p_dev.numpy(), p_cpu.numpy())


def test_length_sorted_batches_keep_the_prompt_order(mc):
    model, tokenizer, examples = mc
    prompt_ids = encode_examples(tokenizer, examples).prompt_ids()
    assert len({len(p) for p in prompt_ids[:24]}) > 3  # the sort really reorders a window
    runs = {sort: list(answer_top(model, tokenizer, prompt_ids, 100, batch_size=3,
                                  on_device=True, sort=sort)) for sort in (True, False)}
    starts, (p_sorted, i_sorted, _) = _stacked(runs[True])
    assert starts == [0, 24]  # windows of SORT_WINDOW batches, in order
    _, (p_plain, i_plain, _) = _stacked(runs[False])
    assert torch.equal(i_sorted, i_plain)
    _close_probs(p_sorted.numpy(), p_plain.numpy())
    with torch.no_grad():  # and the order is the prompts': each row against its own forward
        alone = torch.stack([model(input_ids=torch.tensor([p])).logits[0, -1]
                             for p in prompt_ids])
    want = torch.softmax(alone.double(), dim=-1).topk(100)
    assert torch.equal(i_sorted, want.indices)
    _close_probs(p_sorted.numpy(), want.values.numpy())


def test_extraction_store_is_the_same_either_way(mc, tmp_path):
    model, tokenizer, examples = mc
    stores = {}
    for on_device in (True, False):
        extract_topk(model, tokenizer, examples, tmp_path / str(on_device), k=5,
                     coverage_k=100, shard_size=10, batch_size=4, progress=False,
                     on_device=on_device)
        stores[on_device] = load_topk(tmp_path / str(on_device))
    a, b = stores[True], stores[False]
    assert a.example_ids.tolist() == b.example_ids.tolist() == [e.id for e in examples]
    np.testing.assert_array_equal(a.ids, b.ids)
    _close_probs(a.probs, b.probs)
    np.testing.assert_allclose(a.manifest.coverage["mean"], b.manifest.coverage["mean"],
                               atol=1e-6)


def test_evaluation_predictions_are_the_same_either_way(mc, kernel_calls):
    model, tokenizer, examples = mc
    dev = predict(model, tokenizer, examples, k=5, batch_size=4, progress=False,
                  on_device=True)
    assert not kernel_calls
    cpu = predict(model, tokenizer, examples, k=5, batch_size=4, progress=False,
                  on_device=False)
    assert kernel_calls
    for col in ("example_id", "pred", "correct", "pred_option", "correct_option",
                "topk_ids", "topk_tokens"):
        assert dev[col].tolist() == cpu[col].tolist(), col
    for col in ("confidence", "confidence_option"):
        _close_probs(dev[col].to_numpy(), cpu[col].to_numpy())
    _close_probs(np.concatenate(dev.option_probs.tolist()),
                 np.concatenate(cpu.option_probs.tolist()))
    # against an independent full softmax of unbatched forwards, in the examples' order
    with torch.no_grad():
        alone = torch.stack([model(input_ids=torch.tensor([p])).logits[0, -1] for p in
                             encode_examples(tokenizer, examples).prompt_ids()])
    probs = torch.softmax(alone.double(), dim=-1)
    assert dev.topk_ids.tolist() == probs.topk(5).indices.tolist()
    _close_probs(dev.confidence.to_numpy(), probs.max(dim=-1).values.numpy())


# ------------------------------------------------------------------ per response token

def test_token_device_path_equals_the_kernel_path(instruct, tmp_path, kernel_calls):
    model, tokenizer, examples = instruct
    stores = {}
    for on_device in (True, False):
        extract_token_topk(model, tokenizer, examples, tmp_path / str(on_device), k=5,
                           coverage_k=100, shard_size=50, batch_size=4, max_length=96,
                           on_device=on_device)
        stores[on_device] = load_topk(tmp_path / str(on_device), layout=TOKENS)
        assert bool(kernel_calls) != on_device
    a, b = stores[True], stores[False]
    assert a.example_ids.tolist() == b.example_ids.tolist()
    np.testing.assert_array_equal(a.positions, b.positions)
    np.testing.assert_array_equal(a.gold_ids, b.gold_ids)
    np.testing.assert_array_equal(a.ids, b.ids)
    _close_probs(a.probs, b.probs)
    confs = {d: token_confidences(model, tokenizer, examples, 4, 96, on_device=d)
             for d in (True, False)}
    np.testing.assert_array_equal(confs[True][1], confs[False][1])
    _close_probs(confs[True][0], confs[False][0])


def test_token_batches_sorted_by_length_keep_the_example_order(instruct):
    model, tokenizer, examples = instruct

    def reduce(logits, targets):
        return (*logit_reduce.top_logits(logits, 20), targets)

    runs = {}
    for sort in (True, False):
        chunks = list(iter_token_batches(model, tokenizer, examples, 3, 96, reduce, sort=sort))
        runs[sort] = ([ex.id for c, _, _ in chunks for ex in c],
                      [torch.cat(col) for col in zip(*(out for _, out, _ in chunks))],
                      np.concatenate([n for _, _, n in chunks]))
    (ids_s, out_s, n_s), (ids_p, out_p, n_p) = runs[True], runs[False]
    assert ids_s == ids_p == [e.id for e in examples]
    np.testing.assert_array_equal(n_s, n_p)
    assert torch.equal(out_s[3], out_p[3]) and torch.equal(out_s[1], out_p[1])  # targets, ids
    _close_probs(torch.exp(out_s[0] - out_s[2]).numpy(), torch.exp(out_p[0] - out_p[2]).numpy())
    assert len(out_s[3]) == n_s.sum() > len(examples)


def test_token_windows_run_on_a_background_thread_off_the_cpu(instruct, monkeypatch):
    """On an accelerator the next window runs on another thread while the caller takes this
    one: forced here on the CPU, the same rows in the same order."""
    import threading

    from first_core.knowledge import token_topk

    model, tokenizer, examples = instruct

    def reduce(logits, targets):
        return (*logit_reduce.top_logits(logits, 20), targets)

    def run():
        return [(tuple(e.id for e in c), out, n) for c, out, n in
                iter_token_batches(model, tokenizer, examples, 2, 96, reduce)]

    inline = run()
    real, threads = inference.prefetched, []

    def forced(fn, items, background):
        def traced(item):
            threads.append(threading.current_thread().name)
            return fn(item)
        return real(traced, items, True)

    monkeypatch.setattr(token_topk, "prefetched", forced)
    background = run()
    assert len(threads) == len(inline) == 2  # 21 examples, windows of 16
    assert all(t.startswith("first-prefetch") for t in threads)
    for (ids_a, out_a, n_a), (ids_b, out_b, n_b) in zip(inline, background):
        assert ids_a == ids_b and (n_a == n_b).all()
        assert all(torch.equal(a, b) for a, b in zip(out_a, out_b))


def test_the_default_is_the_device_off_the_cpu(mc):
    model, _, _ = mc
    assert model_device(model).type == "cpu"
    assert inference.on_device_default(model, None) is False
    assert inference.on_device_default(model, True) is True


def _imports(module: str) -> set[str]:
    """The first_core modules `module` imports, at the top or inside functions."""
    from helpers.import_graph import import_graph

    return import_graph()[module]


@pytest.mark.parametrize("module", ["inference.forward", "inference.logit_reduce",
                                    "knowledge.answer_topk", "knowledge.extraction",
                                    "knowledge.token_topk", "knowledge.manifest",
                                    "knowledge.coverage", "knowledge.shards", "knowledge.reader",
                                    "evaluation.evaluate", "evaluation.instruct_eval"])
def test_the_topk_modules_are_on_no_import_cycle(module):
    seen, todo = set(), list(_imports(module))
    while todo:
        m = todo.pop()
        if m not in seen:
            seen.add(m)
            todo += _imports(m)
    assert module not in seen, f"{module} imports itself through {sorted(seen)}"
    assert not {"knowledge.answer_topk", "knowledge.token_topk"} & _imports("knowledge.extraction")
