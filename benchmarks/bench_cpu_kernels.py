"""What `cpu_kernels = "avx2"` costs: a training step with the pinned kernels against native.

The pin (first_core/numerics.py) sends torch to its AVX2 kernels and MKL to its COMPATIBLE
(SSE2) branch, the one MKL keeps on every vendor's CPU, so matrix products get slower where
the native kernels would use AVX-512 or AVX2 FMA. The libraries read their switches once per
process, so each contender runs in its own fresh interpreter (this script with `--child`),
the two alternating, each timing the median of its repeats after a warm-up:

- `tiny`: a forward + backward + AdamW step of the demo's tiny teacher preset on a batch of
  32 sequences of 64 tokens (what `configs/demo.toml` trains);
- `llama-h576-L6-V49k`: the same step of a random Llama with SmolLM2-135M's width and
  vocabulary (6 of its 30 layers), batch 8 x 64 tokens: what `configs/smollm2.toml`
  pays for its pin.

Both take the loss at the last position only, as the pipeline's SFT and distillation do.

Lines: `RATIO pinned_over_native[...]` (INFO: the price of the same numbers on every CPU,
no target).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time

from _common import parse_args, print_machine, random_llama, report

def child(repeats: int, threads: int) -> dict[str, float]:
    """Median seconds per training step of each model, in this process's kernels."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from first_core.models.presets import PRESETS

    torch.set_num_threads(threads)
    torch.manual_seed(0)

    class _Tok:  # random_llama reads only the pad id
        pad_token_id = 0

    tiny = LlamaForCausalLM(LlamaConfig(vocab_size=120, tie_word_embeddings=False,
                                        **PRESETS["tiny-teacher"]))
    models = {"tiny": (tiny.train(), 32),
              "llama-h576-L6-V49k": (random_llama(_Tok(), 49_152, hidden=576, layers=6).train(),
                                     8)}
    out = {}
    for name, (model, batch) in models.items():
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
        ids = torch.randint(1, model.config.vocab_size, (batch, 64))
        times = []
        for i in range(repeats + 1):  # the first step warms up
            t0 = time.perf_counter()
            # the loss at the last position only, as the pipeline's SFT and distillation do
            hidden = model.model(input_ids=ids).last_hidden_state[:, -1]
            torch.nn.functional.cross_entropy(model.lm_head(hidden), ids[:, 0]).backward()
            opt.step()
            opt.zero_grad()
            if i:
                times.append(time.perf_counter() - t0)
        out[name] = statistics.median(times)
    return out


def main() -> None:
    if "--child" in sys.argv:
        repeats, threads = int(sys.argv[2]), int(sys.argv[3])
        print(json.dumps(child(repeats, threads)))
        return
    args = parse_args(__doc__, repeats=(int, None, "timed steps per process (default 9, quick 2)"),
                      rounds=(int, None, "processes per contender (default 2, quick 1)"))
    repeats = args.repeats or (2 if args.quick else 9)
    rounds = args.rounds or (1 if args.quick else 2)
    print_machine(f"bench_cpu_kernels: a training step, cpu_kernels avx2 vs native "
                  f"({rounds} x {repeats} steps each)")
    from first_core.numerics import AVX2_ENV, _has_avx2

    if not _has_avx2():
        print("SKIP: no x86 CPU with AVX2, where cpu_kernels = \"avx2\" pins nothing")
        return
    native = {k: v for k, v in os.environ.items() if k not in AVX2_ENV}
    envs = {"native": native, "pinned": {**native, **AVX2_ENV}}
    got: dict[str, dict[str, list[float]]] = {c: {} for c in envs}
    for _ in range(rounds):
        for contender, env in envs.items():
            out = subprocess.run([sys.executable, __file__, "--child", str(repeats),
                                  str(args.threads)], env=env, capture_output=True,
                                 text=True, check=True).stdout
            for model, seconds in json.loads(out.splitlines()[-1]).items():
                got[contender].setdefault(model, []).append(seconds)
    for model in got["native"]:
        native_s = statistics.median(got["native"][model])
        pinned_s = statistics.median(got["pinned"][model])
        print(f"  {model}: native {native_s * 1e3:.1f} ms, pinned {pinned_s * 1e3:.1f} ms "
              "per step")
        report(f"pinned_over_native[{model}]", pinned_s / native_s)


if __name__ == "__main__":
    main()
