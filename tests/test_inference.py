"""The shared answer-position forward: padding-exact, position-exact, streaming in batches."""

from __future__ import annotations

import os

import pytest
import torch

from first_core.data.examples import format_prompt
from first_core.inference import forward as inference, logit_reduce
from first_core.inference.forward import PromptIds, answer_logits, spare_cpu, vocab_size
from first_core.models.encoding import label_token_ids
from first_core.models.encoding import answer_token_ids, encode_examples
from helpers.tiny_lm import make_examples, make_model

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def setup():
    examples = make_examples(13, seed=1, n_options=(2, 4))
    model, tokenizer = make_model(examples, seed=1)
    return model, tokenizer, examples


def _unbatched(model, prompt_ids):
    with torch.no_grad():
        return torch.stack([model(input_ids=torch.tensor([ids])).logits[0, -1]
                            for ids in prompt_ids])


def test_padded_batches_equal_unbatched_forward(setup):
    model, tokenizer, examples = setup
    prompt_ids = encode_examples(tokenizer, examples).prompt_ids()
    assert len({len(p) for p in prompt_ids}) > 3  # the batches really are padded
    got = list(answer_logits(model, tokenizer, PromptIds(tokenizer, examples), batch_size=5))
    assert [s for s, _ in got] == [0, 5, 10]
    assert [len(x) for _, x in got] == [5, 5, 3]
    logits = torch.cat([x for _, x in got])
    assert logits.dtype == torch.float32 and logits.shape == (13, vocab_size(model))
    torch.testing.assert_close(logits, _unbatched(model, prompt_ids), rtol=1e-5, atol=1e-5)


def test_absolute_position_models_get_positions_that_ignore_padding(setup):
    """GPT-2 adds absolute position embeddings: left padding must not shift them."""
    from transformers import GPT2Config, GPT2LMHeadModel

    _, tokenizer, examples = setup
    torch.manual_seed(0)
    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=len(tokenizer), n_embd=32, n_layer=2,
                                      n_head=4, n_positions=128,
                                      bos_token_id=tokenizer.bos_token_id,
                                      eos_token_id=tokenizer.eos_token_id)).eval()
    prompt_ids = encode_examples(tokenizer, examples).prompt_ids()
    logits = torch.cat([x for _, x in answer_logits(gpt2, tokenizer, prompt_ids, batch_size=13)])
    torch.testing.assert_close(logits, _unbatched(gpt2, prompt_ids), rtol=1e-5, atol=1e-5)


def test_logits_are_those_that_predict_the_answer_token(setup):
    model, tokenizer, examples = setup
    enc = encode_examples(tokenizer, examples)
    with torch.no_grad():
        ref = torch.stack([model(input_ids=torch.tensor([ids])).logits[0, pos - 1]
                           for ids, pos in zip(enc.input_ids, enc.target_start)])
    (_, logits), = answer_logits(model, tokenizer, enc.prompt_ids(), batch_size=64)
    torch.testing.assert_close(logits, ref, rtol=1e-5, atol=1e-5)


def test_string_prompts_match_token_prompts(setup):
    model, tokenizer, examples = setup
    texts = [format_prompt(ex) for ex in examples]
    assert list(PromptIds(tokenizer, examples)) == encode_examples(tokenizer,
                                                                   examples).prompt_ids()
    a = torch.cat([x for _, x in answer_logits(model, tokenizer, texts, batch_size=4)])
    b = torch.cat([x for _, x in answer_logits(model, tokenizer, PromptIds(tokenizer, examples),
                                               batch_size=7)])
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_puts_model_in_eval_mode(setup):
    model, tokenizer, examples = setup
    model.train()
    next(answer_logits(model, tokenizer, PromptIds(tokenizer, examples[:2]), batch_size=2))
    assert not model.training


def test_label_token_ids_cover_every_label(setup):
    _, tokenizer, examples = setup
    ids = label_token_ids(tokenizer, examples)
    assert sorted(ids) == ["A", "B", "C", "D"]
    assert list(ids.values()) == answer_token_ids(tokenizer, list(ids))


@pytest.mark.parametrize("prompts, batch_size, error, match", [
    ([[3, 4]], 0, ValueError, "batch_size"),
    ([[3, 4], []], 2, ValueError, "empty prompt at index 1"),
    (["a b", [3, 4]], 2, TypeError, "not a mix"),
])
def test_bad_input(setup, prompts, batch_size, error, match):
    model, tokenizer, _ = setup
    with pytest.raises(error, match=match):
        list(answer_logits(model, tokenizer, prompts, batch_size=batch_size))


def test_processes_on_one_machine_share_its_cores(setup, monkeypatch):
    model, _, _ = setup
    cores = len(os.sched_getaffinity(0))
    monkeypatch.setenv("LOCAL_WORLD_SIZE", str(cores))  # one process per core: none is free
    assert not spare_cpu(model)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "1")
    assert spare_cpu(model) == (cores > 1)


def test_tokenises_inline_when_torch_fills_every_core(setup, monkeypatch):
    model, tokenizer, examples = setup
    cores = len(os.sched_getaffinity(0))
    background = torch.cat([x for _, x in answer_logits(
        model, tokenizer, PromptIds(tokenizer, examples), batch_size=4)])
    assert spare_cpu(model) == (cores > 1)  # this module runs torch on one thread
    monkeypatch.setattr(inference, "ThreadPoolExecutor", None)  # no thread may be started
    torch.set_num_threads(cores)
    try:
        assert not spare_cpu(model)
        inline = torch.cat([x for _, x in answer_logits(
            model, tokenizer, PromptIds(tokenizer, examples), batch_size=4)])
    finally:
        torch.set_num_threads(1)
    torch.testing.assert_close(inline, background, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("n", [0, 1, 2, 7])
@pytest.mark.parametrize("background", [False, True])
def test_prefetched_keeps_order_and_runs_fn_off_the_caller_thread(n, background):
    import threading

    pulled, threads = [], set()

    def items():  # pulling an item is work of the caller's thread (a forward pass)
        for i in range(n):
            pulled.append(i)
            yield i

    def fn(i):
        threads.add(threading.current_thread().name)
        return i * i

    assert list(inference.prefetched(fn, items(), background)) == [i * i for i in range(n)]
    assert pulled == list(range(n))
    if n and background:
        assert threads and all(t.startswith("first-prefetch") for t in threads)
    else:
        assert threads <= {threading.current_thread().name} and len(threads) == (n > 0)


def test_prefetched_passes_on_the_items_error():
    def items():
        yield 1
        raise ValueError("prompts: bad row")

    with pytest.raises(ValueError, match="bad row"):
        list(inference.prefetched(lambda i: i, items(), background=True))


def test_answer_top_equals_top_logits_of_each_batch(setup, monkeypatch):
    """The top-k overlapped with the next forward (worker thread) and the inline one are
    exactly `logit_reduce.top_logits` of each batch of `answer_logits`, in order."""
    import threading

    model, tokenizer, examples = setup
    prompts = PromptIds(tokenizer, examples)
    monkeypatch.setattr(logit_reduce, "COMPILED_MIN_VOCAB", 1)  # as if a real vocabulary
    want = []
    for s, x in answer_logits(model, tokenizer, prompts, batch_size=4):
        top, ids, lse = logit_reduce.top_logits(x, 6, on_device=False)
        want.append((s, torch.exp(top - lse), ids, lse))
    real, threads = logit_reduce.top_logits, []

    def spy(*args, **kwargs):
        threads.append(threading.current_thread().name)
        return real(*args, **kwargs)

    monkeypatch.setattr(logit_reduce, "top_logits", spy)
    runs = {}
    for background in (True, False):
        monkeypatch.setattr(inference, "spare_cpu", lambda model, b=background: b)
        threads.clear()
        runs[background] = list(inference.answer_top(model, tokenizer, prompts, 6,
                                                     batch_size=4, sort=False))
        assert len(threads) == 4
        assert all(t.startswith("first-prefetch") == background for t in threads)
    for got in runs.values():
        assert [g[0] for g in got] == [w[0] for w in want] == [0, 4, 8, 12]
        for g, w in zip(got, want):
            for a, b in zip(g[1:], w[1:]):
                torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_answer_top_keeps_small_vocabularies_in_this_thread(setup, monkeypatch):
    model, tokenizer, examples = setup
    assert vocab_size(model) < logit_reduce.COMPILED_MIN_VOCAB
    monkeypatch.setattr(inference, "spare_cpu", lambda model: True)
    real, calls = inference.prefetched, []

    def spy(fn, items, background):
        calls.append((fn.__name__, background))
        return real(fn, items, background)

    monkeypatch.setattr(inference, "prefetched", spy)
    got = list(inference.answer_top(model, tokenizer, PromptIds(tokenizer, examples), 3,
                                    batch_size=8, sort=False))
    assert [g[0] for g in got] == [0, 8]
    assert sorted(calls) == [("<lambda>", True), ("step", False)]  # tokenising, top-k
