"""Import of an lm-evaluation-harness output folder the size of MMLU's (issue 29 item 6).

Writes a synthetic folder in lm-eval 0.4.13's own layout (`results_<date>.json` and one
`samples_<task>_<date>.jsonl` per task: `doc`, `target`, `arguments` as `gen_args_i`,
`resps` / `filtered_resps` as strings, `filter`, `metrics`, the hashes and `acc`): 57 tasks,
14,042 samples of four options, as `lm_eval --tasks mmlu --log_samples` writes them, with
`acc,none` in the results equal to the samples' mean. Then times `importing.import_file` on
it (conversion, validation, the metrics with their bootstrap intervals and the one-
transaction store write), end to end into a fresh store.

Target: at most 5 s on 2 cores.

    python benchmarks/bench_lmeval_import.py [--quick] [--tasks 57] [--samples 14042]
"""

from __future__ import annotations

import hashlib
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import parse_args, print_machine, report  # noqa: E402
from first_core.importer.run import import_file  # noqa: E402

DATE = "2026-12-06T12-00-00.000000"


def _hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def write_folder(root: Path, tasks: int, samples: int, seed: int = 0) -> Path:
    """The synthetic lm-eval output folder; returns the model folder inside it."""
    rng = np.random.default_rng(seed)
    folder = root / "out" / "synthetic__mmlu-model"
    folder.mkdir(parents=True)
    sizes = np.full(tasks, samples // tasks)
    sizes[: samples % tasks] += 1
    results, configs = {}, {}
    for t, n in enumerate(sizes):
        task = f"mmlu_subject_{t:02d}"
        lls = rng.normal(-8, 3, (n, 4))
        gold = np.where(rng.random(n) < 0.5, lls.argmax(1), rng.integers(0, 4, n))
        acc = (lls.argmax(1) == gold).astype(float)
        with (folder / f"samples_{task}_{DATE}.jsonl").open("w", encoding="utf-8") as out:
            for i in range(n):
                question = f"Question {i} of {task}: which of these holds?"
                ctx = (f"The following are multiple choice questions (with answers) about "
                       f"{task}.\n\n{question}\nA. one\nB. two\nC. three\nD. four\nAnswer:")
                pairs = {f"gen_args_{j}": {"arg_0": ctx, "arg_1": f" {'ABCD'[j]}"}
                         for j in range(4)}
                resp = [[str(float(v)), "False"] for v in lls[i]]
                record = {"doc_id": i, "doc": {"question": question, "subject": task,
                                               "choices": ["one", "two", "three", "four"],
                                               "answer": int(gold[i])},
                          "target": str(int(gold[i])), "arguments": pairs,
                          "resps": [[r] for r in resp], "filtered_resps": resp,
                          "filter": "none", "metrics": ["acc"],
                          "doc_hash": _hash(question), "prompt_hash": _hash(ctx),
                          "target_hash": _hash(str(gold[i])), "acc": float(acc[i])}
                out.write(json.dumps(record, ensure_ascii=False) + "\n")
        results[task] = {"alias": task, "acc,none": sum(acc.tolist()) / len(acc),
                         "acc_stderr,none": 0.0}
        configs[task] = {"task": task, "output_type": "multiple_choice",
                         "target_delimiter": " "}
    (folder / f"results_{DATE}.json").write_text(json.dumps(
        {"results": results, "configs": configs, "model_name": "synthetic/mmlu-model",
         "model_name_sanitized": "synthetic__mmlu-model"}, indent=2), encoding="utf-8")
    return folder


def main() -> None:
    args = parse_args(__doc__, tasks=(int, 57, "tasks (MMLU: 57)"),
                      samples=(int, 14_042, "samples in all (MMLU's test set: 14,042)"))
    tasks, samples = (3, 150) if args.quick else (args.tasks, args.samples)
    print_machine(f"bench_lmeval_import: {tasks} tasks, {samples:,} samples")
    with tempfile.TemporaryDirectory() as tmp:
        folder = write_folder(Path(tmp), tasks, samples)
        size = sum(p.stat().st_size for p in folder.iterdir())
        print(f"# folder: {size / 2**20:.1f} MiB", flush=True)
        t0, c0 = time.perf_counter(), time.process_time()
        result = import_file(folder.parent, store_path=Path(tmp) / "s.duckdb")
        seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    assert len(result.runs) == tasks and sum(r[2] for r in result.runs) == samples
    label = "mmlu" if (tasks, samples) == (57, 14_042) else f"{tasks}x{samples}"
    # CPU time of this process (its threads too): what the work costs, whatever else runs
    report(f"lmeval_import_cpu_s[{label}]", cpu, unit=" s")
    report(f"lmeval_import_s[{label}]", seconds, "<= 5 s", seconds <= 5, unit=" s")


if __name__ == "__main__":
    main()
