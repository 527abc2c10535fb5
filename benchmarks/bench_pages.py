"""Store reads of the Examples and Reliability pages on a large import (issue 23 item 9).

Writes one imported run of N predictions (default 2,000,000, four options; straight through
`store_imports.write_imported_run`, the importer's own write) and times, interleaved, each page's
read before and after the change:

- Examples: every row through `load_predictions` then the pandas filter
  (`example_rows.filter_predictions`) and its first `SHOWN_ROWS`, against
  `prediction_reads.read_matches` (the filter in DuckDB, `SHOWN_ROWS` rows read);
- Reliability: `load_predictions` (list columns as Python lists) then
  `run_arrays.prediction_arrays`, against `prediction_reads.read_arrays` (Arrow buffers).

Targets: Examples' read >= 10x faster and <= 5 s at N; Reliability's >= 2x.

    python benchmarks/bench_pages.py [--n 2000000] [--repeats 2] [--store PATH --run RUN_ID]
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import interleaved_medians, parse_args, print_machine, report
from first_core.store import prediction_reads, imports as store_imports
from first_core.store.reads import load_predictions
from first_core.views import example_rows, run_arrays

RUN = "bench/imported/seed0"


def write_import(path: Path, n: int, seed: int = 0) -> None:
    """N test predictions over options A-D, shaped as the importer stores them."""
    rng = np.random.default_rng(seed)
    probs = rng.dirichlet(np.ones(4), n) * rng.uniform(0.6, 1.0, (n, 1))
    labels = np.array(list("ABCD"), dtype=object)
    gold = labels[np.where(rng.random(n) < 0.6, probs.argmax(1), rng.integers(0, 4, n))]
    best = probs.argmax(1)
    order = np.argsort(-probs, axis=1)
    top = np.take_along_axis(probs, order, axis=1)
    option_conf = top[:, 0] / probs.sum(1)
    preds = pd.DataFrame({
        "split": "test", "example_id": [f"row-{i}" for i in range(n)], "gold": gold,
        "pred": labels[best], "confidence": top[:, 0], "correct": labels[best] == gold,
        "pred_option": labels[best], "confidence_option": option_conf,
        "correct_option": labels[best] == gold, "option_labels": [list("ABCD")] * n,
        "option_probs": list(probs), "topk_ids": list(order), "topk_probs": list(top),
        "topk_tokens": list(labels[order])})
    metrics = pd.DataFrame({"split": ["test"], "convention": ["option"],
                            "metric": ["accuracy"], "value": [float(preds["correct"].mean())]})
    store_imports.write_imported_run(path, "bench", RUN, "bench", preds, metrics)


def main() -> None:
    args = parse_args(__doc__, n=(int, 2_000_000, "predictions in the import"),
                      repeats=(int, 2, "timed runs of each read"),
                      store=(str, "", "an existing store to read instead (with --run)"),
                      run=(str, RUN, "the run to read in --store"))
    n, repeats = (20_000, 1) if args.quick else (args.n, args.repeats)
    print_machine(f"dashboard page reads at N = {n:,} predictions")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(args.store) if args.store else Path(tmp) / "bench.duckdb"
        run = args.run if args.store else RUN
        if not args.store:
            write_import(path, n)
        limit = prediction_reads.SHOWN_ROWS

        def examples_before():
            frame = load_predictions(path, run, "test")
            return example_rows.filter_predictions(frame, "wrong_confident").head(limit)

        def examples_after():
            return prediction_reads.read_matches(path, run, "test", "wrong_confident").rows

        def arrays_before():
            frame = load_predictions(path, run, "test",
                                     columns=run_arrays.PREDICTION_COLUMNS)
            return run_arrays.prediction_arrays(frame)

        def arrays_after():
            return prediction_reads.read_arrays(path, run, "test")

        before, after = examples_before(), examples_after()
        assert before["example_id"].tolist() == after["example_id"].tolist()  # same rows
        t = interleaved_medians({"eb": examples_before, "ea": examples_after,
                                 "ab": arrays_before, "aa": arrays_after}, repeats, warmup=0)
    report("examples_read_s[before]", t["eb"], unit=" s")
    report("examples_read_s[after]", t["ea"], "<= 5 s", t["ea"] <= 5, unit=" s")
    report("examples_read_before/after", t["eb"] / t["ea"], ">= 10x", t["eb"] / t["ea"] >= 10)
    report("examples_rows_read", len(after), f"<= {limit}", len(after) <= limit, unit="")
    report("reliability_arrays_s[after]", t["aa"], unit=" s")
    report("reliability_arrays_before/after", t["ab"] / t["aa"], ">= 2x",
           t["ab"] / t["aa"] >= 2)


if __name__ == "__main__":
    main()
