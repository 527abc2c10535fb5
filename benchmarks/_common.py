"""What every benchmark shares: the `--quick` switch, the machine banner, the tiny models,
timing, and one line format for results.

Benchmarks report *ratios measured in the same run* (absolute seconds depend on the machine and
on whatever else it is doing), each on a line `RATIO <name> = <value> ... PASS|MISS|INFO` that
`tests/test_benchmarks_smoke.py` and readers can grep.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # scripts run as `python benchmarks/bench_x.py` from anywhere
    sys.path.insert(0, str(ROOT))

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # benchmarks never download anything

from first_core.data.examples import Example, answer_text, format_prompt, load_examples  # noqa: E402


def quiet_transformers() -> None:
    """Silence the weight-loading progress bars: the output is meant to be read as a table."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


def parse_args(doc: str | None, **extra: tuple[type, object, str]) -> argparse.Namespace:
    """`--quick` (seconds instead of minutes), `--threads`, plus `extra` options given as
    (type, default, help), a `bool` type making a switch. Sets torch's thread count.

    One thread by default: on a small shared machine several threads per process fight over
    the cores and turn timings into noise; ratios hardly depend on the thread count.
    """
    import torch

    p = argparse.ArgumentParser(description=(doc or "").strip().splitlines()[0])
    p.add_argument("--quick", action="store_true",
                   help="tiny sizes and few repeats: checks that it runs, figures are noisy")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    for name, (tp, default, help_) in extra.items():
        if tp is bool:  # a switch: present or not
            p.add_argument(f"--{name.replace('_', '-')}", action="store_true", help=help_)
        else:
            p.add_argument(f"--{name.replace('_', '-')}", type=tp, default=default, help=help_)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    return args


def _cpu_model() -> str:
    """CPU model, family/model numbers and widest vector unit: "AMD EPYC" alone can be a Zen 3
    (AVX2) or a Zen 4 (AVX-512), and the compiled kernels run about twice as fast on the latter."""
    try:
        info = dict(line.split(":", 1) for line in
                    Path("/proc/cpuinfo").read_text().split("\n\n")[0].splitlines()
                    if ":" in line)
    except OSError:
        return platform.processor() or platform.machine()
    info = {k.strip(): v.strip() for k, v in info.items()}
    flags = set(info.get("flags", "").split())
    simd = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "no AVX2"
    return (f"{info.get('model name', platform.machine())} (family {info.get('cpu family', '?')}"
            f" model {info.get('model', '?')}, {simd})")


def print_machine(title: str) -> None:
    """The banner that says where the figures come from (and how busy the machine was)."""
    import torch

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "?"
    print(f"# {title}")
    print(f"# machine: {_cpu_model()} | {cores} usable cores | load avg {load} | "
          f"python {platform.python_version()} | torch {torch.__version__} "
          f"({torch.get_num_threads()} threads)", flush=True)


def verdict(ok: bool | None) -> str:
    return "INFO" if ok is None else ("PASS" if ok else "MISS")


def report(name: str, value: float, target: str = "", ok: bool | None = None,
           unit: str = "x") -> None:
    """Print one result line: `RATIO name = value<unit>  (target ...)  PASS|MISS|INFO`."""
    tgt = f"  (target {target})" if target else ""
    print(f"RATIO {name} = {value:.4g}{unit}{tgt}  {verdict(ok)}", flush=True)


def interleaved_medians(fns: dict[str, Callable[[], object]], repeats: int,
                        warmup: int = 1) -> dict[str, float]:
    """Median time of each function, runs interleaved (a, b, a, b, ...) so that a change in
    machine load during the benchmark hits every contender alike."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(t) for name, t in times.items()}


@dataclass(frozen=True)
class TinySetup:
    """The embedded task and the two preset models built from its text (one shared vocabulary)."""

    train: list[Example]
    teacher_dir: Path
    student_dir: Path


def tiny_setup(work: Path, n_train: int, seed: int = 0,
               roles: tuple[str, ...] = ("teacher", "student")) -> TinySetup:
    """Write the embedded task (`n_train` training items) and build the preset models, through
    the pipeline's own functions (`tasks.write_task`, `models.build_preset`)."""
    from first_core.models.presets import build_preset
    from first_core.data.tasks import write_task

    quiet_transformers()

    files = write_task(work / "data", seed=seed, n_train=n_train, n_val=8, n_test=8, n_ood=8)
    splits = {s: load_examples(p) for s, p in files.items()}
    texts = [format_prompt(ex) + answer_text(ex.answer) for exs in splits.values() for ex in exs]
    dirs = {role: work / f"{role}_init" for role in ("teacher", "student")}
    for role in roles:
        build_preset(f"tiny-{role}", texts, dirs[role], seed=seed)
    return TinySetup(splits["train"], dirs["teacher"], dirs["student"])


def random_llama(tokenizer, vocab: int, hidden: int = 64, layers: int = 1,
                 logit_std: float | None = None, seed: int = 0):
    """A randomly initialised Llama with a `vocab`-token output layer, fed by `tokenizer`
    (whose ids must be < vocab): a stand-in for a teacher with a real-sized vocabulary.

    `logit_std` rescales the output layer so that the logits have about that spread (the final
    norm keeps hidden states at unit scale): a large value gives peaked distributions.
    """
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=hidden * 11 // 4,
                      num_hidden_layers=layers, num_attention_heads=max(1, hidden // 64),
                      pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(cfg)
        if logit_std is not None:
            with torch.no_grad():
                model.lm_head.weight.normal_(std=logit_std / hidden ** 0.5)
    return model.eval()
