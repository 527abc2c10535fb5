"""Peak memory (RSS) of top-k extraction and of one distillation epoch at 1x and 10x the data,
at the answer position and at every response token (the instruction setting).

Each configuration runs in a fresh Python process (`--child`), which reports its own peak
resident set size (`resource.getrusage(RUSAGE_SELF).ru_maxrss`), once after the imports and
the model load (`baseline`) and once after the work (`peak`). Streaming code keeps the peak flat
when the data grows tenfold; the target is peak(10x) / peak(1x) <= 1.10.

The tiny presets keep the models small, so the fixed cost (Python, torch, transformers) is
most of the peak; `work` = peak - baseline is printed too, to show what the data itself adds.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from _common import parse_args, print_machine, report, tiny_setup

TARGET = 1.10
FIRST_C = 0.3
SCALES = (1, 10)
JOBS = ("extract", "distill")
# the instruction setting: top-k at every response token, distillation over whole responses
TOKEN_JOBS = ("extract_tokens", "distill_tokens")
SHORT_TEMPLATE = {"with_input": "### Instruction:\n{instruction}\n### Input:\n{input}\n"
                                "### Response:",
                  "no_input": "### Instruction:\n{instruction}\n### Response:"}


def peak_rss_mb() -> float:
    """Peak RSS of this process so far in MiB (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child(job: str, work: Path, data_file: Path, store: Path) -> dict[str, float]:
    """Run one configuration in this (fresh) process and return its RSS figures.

    The job's modules are imported and its model loaded before `baseline`, so that `work`
    counts what the data adds, not import-time allocations.
    """
    from first_core.data.examples import load_examples
    from first_core.models.loading import load_model

    if job in TOKEN_JOBS:
        return token_child(job, work, data_file, store)
    if job == "extract":
        from first_core.knowledge.answer_topk import extract_topk

        model, tok = load_model(work / "teacher_init", device="cpu")
        baseline = peak_rss_mb()
        extract_topk(model, tok, load_examples(data_file), store, k=5, coverage_k=100,
                     dtype="float16", shard_size=1000, batch_size=64, progress=False)
    else:
        from first_core.config.settings import TrainConfig
        from first_core.training.distill import distill, teacher_targets
        from first_core.knowledge.reader import load_topk

        model, tok = load_model(work / "student_init", device="cpu")
        baseline = peak_rss_mb()
        topk = load_topk(store)
        targets = teacher_targets(topk.probs, "first", c=FIRST_C)
        cfg = TrainConfig(epochs=1, batch_size=32, save_steps=10**9)
        distill(model, tok, load_examples(data_file), topk.example_ids, topk.ids, targets,
                store.parent / f"student-{store.name}", cfg)
    return {"baseline": baseline, "peak": peak_rss_mb()}


def token_child(job: str, work: Path, data_file: Path, store: Path) -> dict[str, float]:
    """The per-token jobs (instruction setting), measured like `child`."""
    from first_core.data.instruct_data import InstructTemplate, load_instruct
    from first_core.models.loading import load_model

    template = InstructTemplate(**SHORT_TEMPLATE)
    if job == "extract_tokens":
        from first_core.knowledge.token_topk import extract_token_topk

        model, tok = load_model(work / "instruct_teacher_init", device="cpu")
        baseline = peak_rss_mb()
        extract_token_topk(model, tok, load_instruct(data_file, "alpaca", template), store,
                           k=5, coverage_k=100, dtype="float16", shard_size=5000,
                           batch_size=32, max_length=128)
    else:
        from first_core.config.settings import TrainConfig
        from first_core.training.distill import distill_tokens, teacher_targets
        from first_core.knowledge.reader import load_topk

        model, tok = load_model(work / "instruct_student_init", device="cpu")
        baseline = peak_rss_mb()
        topk = load_topk(store)
        targets = teacher_targets(topk.probs, "first", c=FIRST_C)
        cfg = TrainConfig(epochs=1, batch_size=32, save_steps=10**9, loss_on="response",
                          max_length=128)
        distill_tokens(model, tok, load_instruct(data_file, "alpaca", template),
                       topk.example_ids, topk.gold_ids, topk.ids, targets,
                       store.parent / f"student-{store.name}", cfg)
    return {"baseline": baseline, "peak": peak_rss_mb()}


def run_child(job: str, work: Path, data_file: Path, store: Path, threads: int
              ) -> dict[str, float]:
    cmd = [sys.executable, __file__, "--threads", str(threads), "--child", job,
           "--work", str(work), "--data-file", str(data_file), "--store", str(store)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{job} child failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])  # its last line is the JSON


def main() -> None:
    args = parse_args(__doc__, n=(int, None, "examples at 1x (default 500, quick 40)"),
                      child=(str, None, "internal: run one configuration"),
                      work=(Path, None, "internal"), data_file=(Path, None, "internal"),
                      store=(Path, None, "internal"))
    if args.child:
        print(json.dumps(child(args.child, args.work, args.data_file, args.store)))
        return
    base = args.n or (40 if args.quick else 500)
    print_machine(f"bench_memory: peak RSS at {base} and {base * SCALES[-1]} examples, "
                  "one fresh process per configuration")
    from first_core.data.tasks import write_task

    with tempfile.TemporaryDirectory(prefix="bench_memory-") as tmp:
        work = Path(tmp)
        tiny_setup(work, n_train=base)  # the models; their vocabulary covers every split
        from first_core.data.instruct_data import InstructTemplate, load_instruct
        from first_core.data.instruct_tasks import write_instruct_task
        from first_core.models.presets import build_preset

        texts = [e.prompt + " " + e.response for e in load_instruct(
            write_instruct_task(work / "instruct-vocab", n_train=base, n_val=1, n_test=1)
            ["train"], "alpaca", InstructTemplate(**SHORT_TEMPLATE))]
        for role in ("teacher", "student"):
            build_preset(f"tiny-{role}", texts, work / f"instruct_{role}_init")

        def scale_run(scale: int) -> dict[str, dict[str, float]]:
            n = base * scale
            data = write_task(work / f"data-{n}", n_train=n, n_val=1, n_test=1, n_ood=1)
            store = work / f"topk-{n}"
            out = {job: run_child(job, work, data["train"], store, args.threads)
                   for job in JOBS}  # in order: distill reads the store extract wrote
            inst = write_instruct_task(work / f"instruct-{n}", n_train=n, n_val=1, n_test=1)
            out.update({job: run_child(job, work, inst["train"], work / f"topk-tokens-{n}",
                                       args.threads) for job in TOKEN_JOBS})
            return out

        with ThreadPoolExecutor(len(SCALES)) as pool:  # one process per scale at a time
            rss = dict(zip(SCALES, pool.map(scale_run, SCALES)))

    print(f"\n{'job':>14} {'examples':>9} {'baseline MiB':>13} {'peak MiB':>9} {'work MiB':>9}")
    for job in (*JOBS, *TOKEN_JOBS):
        for scale in SCALES:
            r = rss[scale][job]
            print(f"{job:>14} {base * scale:>9} {r['baseline']:>13.1f} {r['peak']:>9.1f} "
                  f"{r['peak'] - r['baseline']:>9.1f}")
    print()
    for job in (*JOBS, *TOKEN_JOBS):
        small, big = rss[SCALES[0]][job], rss[SCALES[-1]][job]
        ratio = big["peak"] / small["peak"]
        report(f"peak_rss_{job}[10x/1x]", ratio, f"<= {TARGET}", ratio <= TARGET)
        report(f"work_rss_{job}[10x-1x]", big["peak"] - big["baseline"]
               - (small["peak"] - small["baseline"]), unit=" MiB")


if __name__ == "__main__":
    main()
