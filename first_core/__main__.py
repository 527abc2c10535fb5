"""Command line: `python -m first_core {run,demo,report,check-data,import,bench}`.

User errors (`FirstError`) print one clear message and exit with status 2, and so do the
errors of the machine rather than of the code (a full disk, a read-only or unreadable path);
nothing else is caught, so a real bug still shows its traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import errno
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

from .config.settings import RunConfig
from .errors import FirstError

ROOT = Path(__file__).resolve().parent.parent
# OSErrors that say something about the machine or the paths given, not about a bug
ENVIRONMENT_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS,
                      errno.ENAMETOOLONG, errno.EIO}
DEMO_CONFIG = ROOT / "configs" / "demo.toml"
VERBOSE_HELP = ("also show what the libraries print (their logs and progress bars, the "
                "Trainer's loss on every logging step), and two lines per stage of every seed "
                "(FIRST_LOG_LEVEL=INFO adds first_core's own log)")


def _run_pipeline(args: argparse.Namespace) -> RunConfig:
    """Run the pipeline once per training seed, then print Table 1; returns the config."""
    from .config.loading import load_config
    from .numerics import pin_cpu_kernels

    seeds = [f"seeds={list(args.seeds)}"] if args.seeds else []  # validated like the file's
    cfg = load_config(args.config, [*args.set, *seeds])
    pin_cpu_kernels(cfg.cpu_kernels)  # before anything imports torch (numerics.py says why)
    from .console import StageEcho, configure
    configure(verbose=args.verbose)
    from .pipeline.runner import process_state, run
    from .store.paths import default_store_path

    if args.store:
        cfg = dataclasses.replace(cfg, store=args.store)
    main = process_state().is_main_process  # print once, not once per rank of a launch
    # several seeds, not verbose: one line per seed (its stages show on a terminal only)
    compact = not args.verbose and cfg.seeds is not None and len(cfg.seeds) > 1
    for one in cfg.per_seed():
        if cfg.seeds is not None and not compact and main:
            print(f"\n=== seed {one.seed} ({cfg.seeds.index(one.seed) + 1}/{len(cfg.seeds)})")
        echo = StageEcho(f"[seed {one.seed}, {cfg.seeds.index(one.seed) + 1}/{len(cfg.seeds)}]"
                         if compact else None, plain=args.verbose)
        with echo:
            run(one, force=args.force, config_file=str(args.config), echo=echo)
        if main:
            if compact:
                echo.summary()
            _say_calibration(one)
    if main:
        print(f"\nTable 1 of pipeline {cfg.name!r} (all conventions: python -m first_core "
              f"report --pipeline {cfg.name})")
        print(_table(default_store_path(cfg.store), cfg.name, "markdown", ("paper",)))
    return cfg


def _say_calibration(cfg: RunConfig) -> None:
    """One line on what the chosen c does to the teacher on validation."""
    path = cfg.run_dir / "stages" / "calibrate.json"
    if not path.exists():
        return
    rec = json.loads(path.read_text(encoding="utf-8"))
    if "val_top1_raw" in rec:
        print(f"trustworthy maximization: c = {rec['c']:.3g} (chosen on validation"
              f"{'' if rec['c_interior'] else ', AT THE EDGE of the grid'}); the teacher's "
              f"mean top-1 on validation {100 * rec['val_top1_raw']:.1f}% -> "
              f"{100 * rec['val_top1_first']:.1f}% at accuracy {100 * rec['val_accuracy']:.1f}%")


def _table(path: Path, pipeline: str | None, fmt: str, conventions=("paper", "option")) -> str:
    """Table 1 as text; a pipeline whose runs have different configs is one table per config,
    with a note naming the keys that differ (on stderr for CSV, which stays plain data)."""
    from .report import (config_notes, format_csv, format_markdown, load_rows,
                         posthoc_temperatures, table1)
    tidy = table1(load_rows(path, pipeline))
    notes = config_notes(path, pipeline)
    if fmt == "csv":
        for note in notes:
            print(f"note: {note}", file=sys.stderr)
        return format_csv(tidy)
    return "\n" + "".join(f"> **Note**: {note}\n\n" for note in notes) + \
        format_markdown(tidy, conventions, posthoc_temperatures(path, pipeline))


def _report(args: argparse.Namespace) -> int:
    from .store.paths import default_store_path
    path = default_store_path(args.store)
    if not path.exists():
        raise FirstError(f"--store {path}: no such store; run the pipeline first")
    text = _table(path, args.pipeline, args.format)
    if not text.strip() or (args.format == "csv" and len(text.strip().splitlines()) < 2):
        raise FirstError(_no_metrics(path, args.pipeline))
    print(text)
    return 0


def _no_metrics(path: Path, pipeline: str | None) -> str:
    """Why `report` has no table to print: the runs it would read store no metrics (a
    pretrained model's top-k coverage is such a run)."""
    from .store.reads import list_runs
    runs = list_runs(path)
    if pipeline is not None:
        runs = runs[runs["pipeline"] == pipeline]
    methods = sorted(set(runs["method"]))
    what = f"pipeline {pipeline!r}" if pipeline is not None else "the store"
    return (f"--store {path}: {what} has no metric rows (its runs: {methods}); a "
            "pretrained_zero_shot run stores only its top-k coverage, shown on the dashboard's "
            "Top-k coverage page")


def _run(args: argparse.Namespace) -> int:
    _run_pipeline(args)
    return 0


def _demo(args: argparse.Namespace) -> int:
    cfg = _run_pipeline(argparse.Namespace(config=args.config, set=args.set, force=None,
                                           store=args.store, seeds=args.seeds,
                                           verbose=args.verbose))
    if not args.no_pretrained:  # a real 49,152-token vocabulary beside the tiny teacher's
        from .pipeline.pretrained_coverage import run_pretrained_coverage
        print()
        run_pretrained_coverage(cfg)
    if args.no_dashboard:
        return 0
    from .store.paths import default_store_path
    store = default_store_path(cfg.store)
    cmd = [sys.executable, "-m", "streamlit", "run", str(ROOT / "app.py"),
           "--server.address", "localhost", "--", "--store", str(store)]
    print("\nStarting the dashboard:", " ".join(cmd))
    return subprocess.call(cmd)


def _check_data(args: argparse.Namespace) -> int:
    if args.format in ("alpaca", "prompt_response"):  # instruction data
        from .data import instruct_data
        check_file, load_examples, summarize = (instruct_data.check_instruct_file,
                                                instruct_data.load_instruct,
                                                instruct_data.summarize_instruct)
    else:  # multiple-choice data
        from .data import examples
        check_file, load_examples, summarize = (examples.check_file, examples.load_examples,
                                                examples.summarize)
    problems = check_file(args.path, args.format)
    for p in problems:
        print(p)
    if problems:
        print(f"{args.path}: {len(problems)} problem(s)", file=sys.stderr)
        return 1
    print(f"{args.path}: ok: {summarize(load_examples(args.path, args.format))}")
    return 0


def _import(args: argparse.Namespace) -> int:
    from .importer.run import import_file
    result = import_file(args.path, args.name, args.store, args.model, args.format, args.gold)
    for note in result.notes:
        print(f"note: {note}", file=sys.stderr)
    for pipeline, run_id, n in result.runs:
        print(f"{args.path}: imported {n:,} predictions as pipeline {pipeline!r} "
              f"(run {run_id}) into {result.store}")
    return 0


def _bench(args: argparse.Namespace) -> int:
    failed = 0
    for script in sorted((ROOT / "benchmarks").glob("bench_*.py")):
        print(f"\n=== {script.name}", flush=True)
        failed += subprocess.call([sys.executable, str(script)]) != 0
    return 1 if failed else 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m first_core",
                                description="FIRST: trustworthy distillation of language models")
    sub = p.add_subparsers(dest="command", required=True)

    r = sub.add_parser("run", help="run (or resume) the pipeline for a config")
    r.add_argument("--config", type=Path, default=DEMO_CONFIG)
    r.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override a config value (TOML syntax), e.g. --set topk.k=10")
    r.add_argument("--force", metavar="STAGE", help="redo this stage and every later one")
    r.add_argument("--store", help="DuckDB store (default: $FIRST_STORE or data/first.duckdb)")
    r.add_argument("--seeds", type=int, nargs="+", metavar="SEED",
                   help="run these training seeds (overrides the config's `seeds`)")
    r.add_argument("--verbose", action="store_true", help=VERBOSE_HELP)
    r.set_defaults(fn=_run)

    d = sub.add_parser("demo", help="run the embedded default, then open the dashboard")
    d.add_argument("--config", type=Path, default=DEMO_CONFIG)
    d.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE")
    d.add_argument("--store")
    d.add_argument("--seeds", type=int, nargs="+", metavar="SEED")
    d.add_argument("--no-dashboard", action="store_true", help="only run the pipeline")
    d.add_argument("--no-pretrained", action="store_true",
                   help="skip the top-k coverage of the pretrained SmolLM2-135M-Instruct "
                        "(a real 49,152-token vocabulary, read zero-shot on 100 validation "
                        "prompts; about a minute)")
    d.add_argument("--verbose", action="store_true", help=VERBOSE_HELP)
    d.set_defaults(fn=_demo)

    c = sub.add_parser("check-data", help="report every problem in a data file")
    c.add_argument("path", type=Path)
    c.add_argument("--format", default="auto",
                   choices=["auto", "csqa", "boolq", "jsonl", "alpaca", "prompt_response"],
                   help="alpaca / prompt_response: instruction data (JSON array or JSONL)")
    c.set_defaults(fn=_check_data)

    t = sub.add_parser("report", help="print Table 1 (mean +- std over seeds) from a store")
    t.add_argument("--store", help="DuckDB store (default: $FIRST_STORE or data/first.duckdb)")
    t.add_argument("--pipeline", help="only this pipeline (the config's `name`)")
    t.add_argument("--format", default="markdown", choices=["markdown", "csv"])
    t.set_defaults(fn=_report)

    i = sub.add_parser("import", help="store another model's predictions (CSV, Parquet, JSONL; "
                       "lm-eval, OpenAI Batch logprobs, lighteval) as their own pipeline; "
                       "see first_core/importer/table.py and first_core/importer/formats/")
    i.add_argument("path", type=Path, help="a file, an lm-eval output folder, or a .zip of one")
    i.add_argument("--name", help="pipeline name shown in the dashboard (required for a "
                   "table or Batch file; for lm-eval / lighteval each task is named after "
                   "the task, NAME-TASK with --name)")
    i.add_argument("--format", default="auto",
                   choices=["auto", "table", "lm-eval", "openai", "lighteval"],
                   help="auto: from the file's name and first record")
    i.add_argument("--gold", type=Path, help="--format openai: FILE with custom_id, gold "
                   "(the right option's letter), optionally options and question")
    i.add_argument("--store", help="DuckDB store (default: $FIRST_STORE or data/first.duckdb)")
    i.add_argument("--model", help="the model's name, recorded with the run")
    i.set_defaults(fn=_import)

    b = sub.add_parser("bench", help="run every benchmark in benchmarks/")
    b.set_defaults(fn=_bench)
    return p


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=os.environ.get("FIRST_LOG_LEVEL", "WARNING"),
                        format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    try:
        code = args.fn(args)
    except BrokenPipeError:  # `report | head -3`: the reader has all it wanted
        return _pipe_closed()
    except FirstError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        if exc.errno not in ENVIRONMENT_ERRNOS:
            raise
        pipeline = args.command in ("run", "demo")
        where = (f"{exc.filename}: " if exc.filename
                 else "" if pipeline else "writing the output: ")  # `report > /dev/full`
        resume = (" (nothing was marked done by the step that failed; fix it and rerun the "
                  "same command to resume)" if pipeline else "")
        print(f"error: {where}{exc.strerror or exc}{resume}", file=sys.stderr)
        if not pipeline:
            _quiet_stdout()  # what print could not write is not tried again at exit
        return 2
    except KeyboardInterrupt:
        print("interrupted: rerun the same command to resume", file=sys.stderr)
        return 130
    return _flushed(code)


def _flushed(code: int) -> int:
    """Flush stdout now, so a closed pipe or a full disk under `> file` is one line here and
    not an "Exception ignored" from the interpreter's last flush."""
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        return _pipe_closed()
    except OSError as exc:
        if exc.errno not in ENVIRONMENT_ERRNOS:
            raise
        print(f"error: writing the output: {exc.strerror or exc}", file=sys.stderr)
        _quiet_stdout()
        return 2
    return code


def _pipe_closed() -> int:
    """The reader of stdout went away (`report | head`, `| true`): stop quietly."""
    _quiet_stdout()
    return 141  # as a process killed by SIGPIPE (128 + 13), the shell's convention


def _quiet_stdout() -> None:
    """Point stdout at /dev/null, so the interpreter's last flush of what could not be
    written raises nothing more at exit."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):  # stdout replaced (tests) or closed
        pass


if __name__ == "__main__":
    sys.exit(main())
