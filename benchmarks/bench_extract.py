"""Top-k extraction throughput against the bare teacher forward on the same batches.

Contenders, timed interleaved on the same examples and batch size (median of several repeats
after a warm-up):

- `forward`: `inference.forward_batches` over prompts tokenised beforehand: the teacher's
  forward pass at the answer position over the same length-sorted batches as extraction and
  nothing else, the floor any extraction pays;
- `forward+tokenise`: the same with tokenisation inside the loop (as extraction does it);
- `extract_topk`: the whole stage: tokenise, forward, top-k + logsumexp (beside the next
  forward when a core is free), coverage statistics, Parquet shards, manifest.

Two teachers: the tiny preset (about 0.8M parameters, ~120-token vocabulary), a worst case
because its forward is so cheap that extraction's fixed costs weigh far more than they would
behind a 7B teacher; and a random Llama with a real 32k vocabulary (hidden 256, 4 layers), where
the softmax + top-k over the full vocabulary is part of the cost, as with real teachers.

Last, the post-processing step alone on one batch of 32k-wide logits: the compiled
`topk_kernel.top_logits` (top-100 and logsumexp in one pass) against torch's `topk` +
`logsumexp`, the two calls it replaces, on the same tensor, and its time over all the batches
as a share of the 32k teacher's forward.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from _common import (interleaved_medians, parse_args, print_machine, random_llama, report,
                     tiny_setup)

TARGET = 0.95
KERNEL_TARGET = 2.0  # the compiled top-100 + logsumexp against torch's two calls


def main() -> None:
    args = parse_args(__doc__, n=(int, None, "examples (default 2000, quick 64)"),
                      batch_size=(int, 64, "batch size of every contender"),
                      repeats=(int, None, "timed repeats (default 7, quick 2)"))
    n = args.n or (64 if args.quick else 2000)
    repeats = args.repeats or (2 if args.quick else 7)
    print_machine(f"bench_extract: top-k extraction vs teacher forward ({n} examples, batch "
                  f"{args.batch_size}, median of {repeats})")
    from first_core.inference.forward import PromptIds, forward_batches
    from first_core.models.loading import load_model
    from first_core.knowledge.answer_topk import extract_topk

    with tempfile.TemporaryDirectory(prefix="bench_extract-") as tmp:
        setup = tiny_setup(Path(tmp), n_train=n, roles=("teacher",))
        tiny, tok = load_model(setup.teacher_dir, device="cpu")
        examples = setup.train[:n]
        prompts = PromptIds(tok, examples)
        pretokenised = list(prompts)
        teachers = {"tiny-teacher": tiny,
                    "llama-h256-L4-V32k": random_llama(tok, 32_000, hidden=256, layers=4)}

        forward_s = {}
        for name, model in teachers.items():
            def forward(ps, model=model) -> None:
                for _ in forward_batches(model, tok, ps, args.batch_size, progress=False):
                    pass

            def extract(model=model) -> None:
                extract_topk(model, tok, examples, Path(tmp) / "store", k=5, coverage_k=100,
                             dtype="float16", batch_size=args.batch_size, progress=False)

            t = interleaved_medians({"forward": lambda: forward(pretokenised),
                                     "forward+tokenise": lambda: forward(prompts),
                                     "extract_topk": extract}, repeats)
            print(f"\nteacher {name}\n{'contender':>18} {'median s':>9} {'positions/s':>12}")
            for contender, sec in t.items():
                print(f"{contender:>18} {sec:>9.4f} {n / sec:>12.0f}")
            forward_s[name] = t["forward"]
            ratio = t["forward"] / t["extract_topk"]
            report(f"extract_throughput/forward_throughput[{name}]", ratio, f">= {TARGET}",
                   ratio >= TARGET)
            report(f"extract_throughput/(forward+tokenise)_throughput[{name}]",
                   t["forward+tokenise"] / t["extract_topk"])

    import torch

    from first_core.kernels.topk import top_logits

    logits = torch.randn(args.batch_size, 32_000, generator=torch.Generator().manual_seed(0)) * 3
    t = interleaved_medians({"torch topk+logsumexp": lambda: (
                                 torch.topk(logits, 100, dim=-1),
                                 torch.logsumexp(logits, dim=-1, keepdim=True)),
                             "top_logits": lambda: top_logits(logits, 100)}, repeats * 30)
    print(f"\ntop-100 + logsumexp of [{args.batch_size}, 32000] float32 logits")
    for contender, sec in t.items():
        print(f"{contender:>22} {sec * 1e3:>8.3f} ms")
    ratio = t["torch topk+logsumexp"] / t["top_logits"]
    report("torch_topk_logsumexp/top_logits[V=32k]", ratio, f">= {KERNEL_TARGET}x",
           ratio >= KERNEL_TARGET)
    # the step's own cost next to the forward it follows: the extraction ratio it alone allows
    # is 1 / (1 + share); the rest of the gap in a run is the other work and the noise
    share = t["top_logits"] * -(-n // args.batch_size) / forward_s["llama-h256-L4-V32k"]
    report("top_logits_time/forward_time[V=32k]", share, unit="")


if __name__ == "__main__":
    main()
