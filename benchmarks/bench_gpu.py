"""Top-k extraction and evaluation on a GPU against the bare teacher forward (random Llama, bf16).

On CUDA, for randomly initialised Llama teachers of about 1.1B parameters (TinyLlama's shape)
and 7B (Llama-2-7B's), in bf16 with a 32,000-token vocabulary (weights made on the GPU from
a seed; nothing is downloaded), each contender is timed in turn on the same examples (median
of `--repeats` after one warm-up run of each):

at the answer position (multiple-choice prompts of about 70-170 tokens, batch 64):
- `forward`: `inference.forward_batches`, the bare teacher forward over the same
  length-sorted batches as the stages, its logits left on the GPU (the floor);
- `extract_topk`: the whole stage: top-100 + logsumexp on the GPU, `[B, 100]` to the host,
  coverage statistics, Parquet shards, manifest;
- `extract_topk_host`: the same stage with `on_device=False`: `[B, V]` float32 logits
  copied to the host and the compiled CPU kernel (how a GPU teacher ran before; INFO);
- `predict`: evaluation (top-5, the option letters' logits and the normaliser on the GPU).

at every response token (instruction setting, prompt + response of about 90-270 tokens,
batch 16):
- `forward`: `token_topk.iter_token_batches` keeping nothing (same batches, logits left on
  the GPU);
- `extract_token_topk`: the whole stage, top-100 per token on the GPU;
- `token_confidences`: token-level evaluation (top-1 and normaliser on the GPU).

Result lines: throughput of each stage / the forward's (target >= 0.97), the peak GPU memory
of each contender (INFO, MiB, weights included) and its peak above the weights over the
forward's (INFO). Without CUDA it prints one `SKIP` line and exits 0. A configuration that
runs out of GPU memory (or fails otherwise) prints a `# MISS` line with the reason and MISS
for its ratios; the others still run (exit status 1 only for an error other than running
out of memory). `--device cpu --models tiny` runs the same code on the CPU with a tiny shape
(what the smoke test does: the script itself is checked without a GPU).
"""

from __future__ import annotations

import gc
import random
import sys
import tempfile
import time
import traceback
from pathlib import Path

from _common import parse_args, print_machine, quiet_transformers, report

TARGET = 0.97
VOCAB = 32_000
# name: (hidden, intermediate, layers, heads, kv heads)
SHAPES = {"tiny": (64, 176, 2, 2, 1),
          "1.1B": (2048, 5632, 22, 32, 4),
          "7B": (4096, 11008, 32, 32, 32)}
# examples per model (multiple choice, instruction), default and --quick
SIZES = {"tiny": ((64, 16), (32, 8)), "1.1B": ((2048, 512), (256, 64)),
         "7B": ((768, 192), (128, 32))}
MC_BATCH, TOKEN_BATCH, MAX_LENGTH = 64, 16, 512
ANSWER = ("forward", "extract_topk", "extract_topk_host", "predict")
TOKENS = ("forward", "extract_token_topk", "token_confidences")
TARGETED = {"extract_topk": "extract_throughput/forward_throughput",
            "predict": "predict_throughput/forward_throughput",
            "extract_token_topk": "extract_token_throughput/forward_throughput",
            "token_confidences": "token_eval_throughput/forward_throughput"}


def words(rng: random.Random, lo: int, hi: int) -> str:
    return " ".join(f"w{rng.randrange(3000)}" for _ in range(rng.randint(lo, hi)))


def make_data(n_mc: int, n_tokens: int, seed: int = 0):
    """(multiple-choice examples, instruction examples, a word-level tokenizer over both)."""
    from first_core.data.examples import Example, answer_text, format_prompt
    from first_core.data.instruct_data import InstructExample
    from first_core.models.presets import train_tokenizer

    rng = random.Random(seed)
    labels = tuple("ABCDE")
    mc = [Example(id=f"q{i}", question=words(rng, 40, 140), labels=labels,
                  choices=tuple(words(rng, 1, 3) for _ in labels), answer=rng.choice(labels))
          for i in range(n_mc)]
    inst = [InstructExample(id=f"r{i}", prompt=f"### Instruction:\n{words(rng, 40, 100)}\n"
                                               "### Response:", response=words(rng, 40, 160))
            for i in range(n_tokens)]
    texts = ([format_prompt(ex) + answer_text(lab) for ex in mc[:200] for lab in labels]
             + [f"w{i}" for i in range(3000)] + [e.prompt + " " + e.response for e in inst[:50]])
    return mc, inst, train_tokenizer(texts)


def make_teacher(shape: str, tokenizer, device, seed: int = 0):
    """A random Llama of `shape` in bf16, its weights made on `device`."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    hidden, inter, layers, heads, kv = SHAPES[shape]
    cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=hidden, intermediate_size=inter,
                      num_hidden_layers=layers, num_attention_heads=heads,
                      num_key_value_heads=kv, max_position_embeddings=2048,
                      tie_word_embeddings=False, pad_token_id=tokenizer.pad_token_id,
                      bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    dtype, default = torch.bfloat16, torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # made in bf16 on the GPU: no float32 copy, no CPU init
    try:
        with torch.device(device), torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = LlamaForCausalLM(cfg)
    finally:
        torch.set_default_dtype(default)
    return model.to(dtype).eval()


class Clock:
    """Times callables on `device`: wall seconds with the GPU synchronised, and peak memory."""

    def __init__(self, device) -> None:
        import torch

        self.torch, self.cuda = torch, device.type == "cuda"

    def sync(self) -> None:
        if self.cuda:
            self.torch.cuda.synchronize()

    def allocated(self) -> int:
        return self.torch.cuda.memory_allocated() if self.cuda else 0

    def run(self, fn) -> tuple[float, int]:
        self.sync()
        if self.cuda:
            self.torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        fn()
        self.sync()
        seconds = time.perf_counter() - t0
        return seconds, self.torch.cuda.max_memory_allocated() if self.cuda else 0

    def medians(self, fns: dict, repeats: int) -> dict[str, tuple[float, int]]:
        """(median seconds, peak bytes) of each function, run interleaved after a warm-up."""
        import statistics

        for fn in fns.values():
            self.run(fn)
        times = {name: [] for name in fns}
        peaks = dict.fromkeys(fns, 0)
        for _ in range(repeats):
            for name, fn in fns.items():
                sec, peak = self.run(fn)
                times[name].append(sec)
                peaks[name] = max(peaks[name], peak)
        return {name: (statistics.median(times[name]), peaks[name]) for name in fns}


def answer_contenders(model, tok, examples, work: Path) -> dict:
    from first_core.evaluation.evaluate import predict
    from first_core.inference.forward import PromptIds, forward_batches
    from first_core.knowledge.answer_topk import extract_topk

    prompts = PromptIds(tok, examples)

    def forward() -> None:
        for _ in forward_batches(model, tok, prompts, MC_BATCH, progress=False):
            pass

    def extract(on_device: bool) -> None:
        extract_topk(model, tok, examples, work / "store", k=5, coverage_k=100,
                     dtype="float16", batch_size=MC_BATCH, progress=False, on_device=on_device)

    # on_device=True is the default on a GPU; given here so that --device cpu runs it too
    return {"forward": forward, "extract_topk": lambda: extract(on_device=True),
            "extract_topk_host": lambda: extract(on_device=False),
            "predict": lambda: predict(model, tok, examples, k=5, batch_size=MC_BATCH,
                                       progress=False, on_device=True)}


def token_contenders(model, tok, examples, work: Path) -> dict:
    from first_core.evaluation.instruct_eval import token_confidences
    from first_core.knowledge.token_topk import extract_token_topk, iter_token_batches

    def forward() -> None:
        for _ in iter_token_batches(model, tok, examples, TOKEN_BATCH, MAX_LENGTH,
                                    lambda logits, targets: ()):
            pass

    return {"forward": forward,
            "extract_token_topk": lambda: extract_token_topk(
                model, tok, examples, work / "tokens", k=5, coverage_k=100, dtype="float16",
                batch_size=TOKEN_BATCH, max_length=MAX_LENGTH, on_device=True),
            "token_confidences": lambda: token_confidences(model, tok, examples, TOKEN_BATCH,
                                                           MAX_LENGTH, on_device=True)}


def report_setting(setting: str, model_name: str, names: tuple[str, ...], n: int,
                   results: dict | None, weights: int) -> None:
    """The table and the RATIO lines of one setting; MISS lines when `results` is None."""
    tag = f"{setting}, llama-{model_name}"
    if results is not None:
        print(f"\n{tag}: {n} examples\n{'contender':>20} {'median s':>9} {'examples/s':>11} "
              f"{'peak MiB':>9}")
        for name, (sec, peak) in results.items():
            print(f"{name:>20} {sec:>9.3f} {n / sec:>11.1f} {peak / 2**20:>9.0f}")
    nan = float("nan")
    fwd_s, fwd_peak = results["forward"] if results else (nan, 0)
    for name in names[1:]:
        sec, peak = results[name] if results else (nan, 0)
        ratio = fwd_s / sec
        if name in TARGETED:
            report(f"{TARGETED[name]}[{tag}]", ratio, f">= {TARGET}",
                   results is not None and ratio >= TARGET)
        else:
            report(f"{name}_throughput/forward_throughput[{tag}]", ratio)
    if results is None or not fwd_peak:  # no peak memory figures off CUDA
        return
    for name, (_, peak) in results.items():
        report(f"peak_gpu_memory[{name}, {tag}]", peak / 2**20, unit=" MiB")
    for name in names[1:]:
        extra = (results[name][1] - weights) / max(fwd_peak - weights, 1)
        report(f"peak_gpu_above_weights/forward[{name}, {tag}]", extra)


def run_model(model_name: str, args, device, clock: Clock) -> bool:
    """Both settings for one teacher; False when something other than memory failed."""
    import torch

    (n_mc, n_tok) = SIZES[model_name][1 if args.quick else 0]
    n_mc, n_tok = args.n_mc or n_mc, args.n_tokens or n_tok
    mc, inst, tok = make_data(n_mc, n_tok)
    ok, model = True, None
    settings = (("answer", ANSWER, answer_contenders, mc), ("tokens", TOKENS,
                                                             token_contenders, inst))
    try:
        t0 = time.perf_counter()
        model = make_teacher(model_name, tok, device)
        params = sum(p.numel() for p in model.parameters())
        print(f"\n# llama-{model_name}: {params / 1e9:.2f}B parameters, "
              f"{next(model.parameters()).dtype}, made in {time.perf_counter() - t0:.1f} s",
              flush=True)
    except Exception as exc:  # noqa: BLE001 - reported, the other teachers still run
        ok = _failed(f"llama-{model_name}", exc)
        for setting, names, _, data in settings:
            report_setting(setting, model_name, names, len(data), None, 0)
        return ok
    weights = clock.allocated()
    with tempfile.TemporaryDirectory(prefix="bench_gpu-") as tmp:
        for setting, names, contenders, data in settings:
            try:
                results = clock.medians(contenders(model, tok, data, Path(tmp)), args.repeats
                                        or (1 if args.quick else 3))
            except Exception as exc:  # noqa: BLE001
                ok = _failed(f"{setting}, llama-{model_name}", exc) and ok
                results = None
            report_setting(setting, model_name, names, len(data), results, weights)
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()
    del model
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return ok


def _failed(what: str, exc: Exception) -> bool:
    """Print why `what` failed; True when it ran out of memory (an expected MISS)."""
    import torch

    oom = isinstance(exc, torch.cuda.OutOfMemoryError)
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    print(f"# MISS {what}: {'out of GPU memory' if oom else type(exc).__name__}: {first}",
          flush=True)
    if not oom:
        traceback.print_exc(file=sys.stderr)
    return oom


def main() -> int:
    args = parse_args(__doc__, models=(str, "1.1B,7B", f"teachers, of {sorted(SHAPES)}"),
                      device=(str, "cuda", "cuda, or cpu to check the script (tiny shapes)"),
                      n_mc=(int, None, "multiple-choice examples (default per model)"),
                      n_tokens=(int, None, "instruction examples (default per model)"),
                      repeats=(int, None, "timed repeats (default 3, quick 1)"))
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        print(f"SKIP bench_gpu: no CUDA device (torch {torch.__version__}, "
              f"torch.version.cuda {torch.version.cuda})")
        return 0
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in models if m not in SHAPES]
    if unknown:
        print(f"error: --models: unknown {unknown}; known: {sorted(SHAPES)}", file=sys.stderr)
        return 2
    device = torch.device(args.device)
    quiet_transformers()
    print_machine(f"bench_gpu: extraction and evaluation vs the bare forward on {device} "
                  f"({', '.join(models)}; V = {VOCAB})")
    if device.type == "cuda":
        import transformers

        props = torch.cuda.get_device_properties(device)
        print(f"# gpu: {props.name} ({props.total_memory / 2**30:.0f} GiB) | CUDA "
              f"{torch.version.cuda} | transformers {transformers.__version__}", flush=True)
    ok = True
    for name in models:
        ok = run_model(name, args, device, Clock(device)) and ok
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
