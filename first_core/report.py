"""Table 1 from the store: mean +- std over the seeds of one pipeline, per method.

The README's tables are pasted from `python -m first_core report`, so they cannot drift from
what a run stored. Runs are grouped by (pipeline, method): seeds of one pipeline are averaged,
never runs of unrelated pipelines that happen to share a method name, nor runs of one pipeline
name made with different configs (`config_diff`: those become `NAME [config A]`, ... with a
note, `config_notes`, naming the keys that differ).

`table1` is the tidy computation (tested); `format_markdown` / `format_csv` only lay it out.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from .store.connection import open_readonly
from .store.reads import list_runs, load_metrics, load_temperature_search
from .store.schema import POSTHOC_KIND
from .config.settings import POSTHOC_SUFFIX
from .config.diff import config_notes as _notes
from .config.diff import label_runs
from .errors import FirstError

SPLIT_NAMES = {"test": "ID", "test_ood": "OOD"}
COLUMNS = {"accuracy": "Acc", "confidence": "Conf", "ece": "ECE", "auroc": "AUROC",
           "aurc": "AURC", "trust": "Trust"}
CONVENTION_TITLES = {"paper": "paper convention (top-1 over the whole vocabulary)",
                     "option": "option convention (renormalised over the answer letters)"}


def load_rows(path, pipeline: str | None = None) -> pd.DataFrame:
    """Metric rows of the store joined with each run's pipeline (optionally one pipeline)."""
    with open_readonly(path) as con:
        runs = list_runs(con)
        rows = load_metrics(con)
    if runs.empty:
        raise FirstError(f"{path}: the store holds no runs yet; run the pipeline first")
    names = runs.set_index("run_id")["pipeline"]
    labels = label_runs(runs)
    rows = rows.assign(pipeline=rows["run_id"].map(labels))
    if pipeline is not None:  # a pipeline's name (all its configs) or one config's label
        known = sorted(names.dropna().unique())
        if pipeline not in known and pipeline not in set(labels):
            raise FirstError(f"--pipeline {pipeline!r}: not in {path}; pipelines: {known}")
        rows = rows[(rows["run_id"].map(names) == pipeline) | (rows["pipeline"] == pipeline)]
    return rows


def posthoc_temperatures(path, pipeline: str | None = None) -> pd.DataFrame:
    """One row per post-hoc run (method `<method>+ts`): pipeline label, method, seed, the T
    fitted on validation NLL (`runs.temperature`) and the T minimising validation ECE (the
    arg-min of its `posthoc` curve in `temperature_search`)."""
    with open_readonly(path) as con:
        runs = list_runs(con)
        curves = load_temperature_search(con, kind=POSTHOC_KIND)
    labels = label_runs(runs)
    runs = runs.assign(label=runs["run_id"].map(labels))
    runs = runs[runs["method"].str.endswith(POSTHOC_SUFFIX)]
    if pipeline is not None:
        runs = runs[(runs["pipeline"] == pipeline) | (runs["label"] == pipeline)]
    best = (curves.sort_values(["run_id", "ece_val", "value"]).groupby("run_id")["value"]
            .first()) if len(curves) else pd.Series(dtype=float)
    return pd.DataFrame({"pipeline": runs["label"].astype(str), "method": runs["method"],
                         "seed": runs["seed"], "t_nll": runs["temperature"],
                         "t_ece": runs["run_id"].map(best)}).reset_index(drop=True)


def config_notes(path, pipeline: str | None = None) -> list[str]:
    """One line per pipeline of the store whose runs were made with different configs:
    its `NAME [config X]` rows and the keys that differ (optionally one pipeline's)."""
    with open_readonly(path) as con:
        return _notes(list_runs(con), pipeline)


def table1(rows: pd.DataFrame, splits: Sequence[str] = ("test", "test_ood")) -> pd.DataFrame:
    """Tidy Table 1: pipeline, method, convention, split, metric, mean, std, seeds.

    Values are percentages. `std` is the sample standard deviation over seeds (ddof = 1; 0
    with one seed); `seeds` counts the runs behind the mean. The grouping is the dashboard's
    own (`tables.compare_table`), so the README, the CLI and Compare cannot disagree.
    """
    from .views.tables import compare_table
    wanted = rows[rows["metric"].isin(list(COLUMNS))]
    parts = [compare_table(wanted, convention, splits).assign(convention=convention)
             for convention in dict.fromkeys(wanted["convention"])]
    if not parts:
        return pd.DataFrame(columns=["pipeline", "method", "convention", "split", "metric",
                                     "mean", "std", "seeds"])
    out = pd.concat(parts, ignore_index=True)
    out[["mean", "std"]] *= 100.0
    out = out[["pipeline", "method", "convention", "split", "metric", "mean", "std", "seeds"]]
    rank = {m: i for i, m in enumerate(COLUMNS)}
    return (out.assign(_m=out["metric"].map(rank))
            .sort_values(["_m"], kind="stable")  # COLUMNS order within each group
            .sort_values(["pipeline", "convention"], kind="stable",
                         key=lambda s: s.map({v: i for i, v in enumerate(dict.fromkeys(s))}))
            .drop(columns="_m").reset_index(drop=True))


def _cell(mean: float, std: float, seeds: int) -> str:
    if not np.isfinite(mean):  # e.g. AUROC where every answer was right
        return "n/a"
    return f"{mean:.1f}" if seeds < 2 else f"{mean:.1f} ± {std:.1f}"


def wide(tidy: pd.DataFrame, pipeline: str, convention: str) -> pd.DataFrame:
    """One pipeline and convention as Table 1: a row per method, 'mean ± std' cells."""
    part = tidy[(tidy["pipeline"] == pipeline) & (tidy["convention"] == convention)]
    if part.empty:
        return pd.DataFrame()
    part = part.assign(cell=[_cell(m, s, n) for m, s, n in
                             zip(part["mean"], part["std"], part["seeds"])],
                       column=[f"{SPLIT_NAMES.get(s, s)} {COLUMNS[m]}"
                               for s, m in zip(part["split"], part["metric"])])
    table = part.pivot(index="method", columns="column", values="cell")
    present = set(part["column"])  # ID before OOD, then COLUMNS' order
    columns = [c for s in dict.fromkeys(part["split"]) for m in COLUMNS
               if (c := f"{SPLIT_NAMES.get(s, s)} {COLUMNS[m]}") in present]
    table = table.reindex(index=list(dict.fromkeys(part["method"])), columns=columns)
    seeds = part.groupby("method", sort=False)["seeds"].max()
    table.insert(0, "seeds", seeds.reindex(table.index).astype(int))
    return table.rename_axis("method").reset_index()


def headline(rows: pd.DataFrame, convention: str = "paper",
             pipeline: str | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Home's Table 1: (every pipeline's `wide` table under a `pipeline` column, the tidy
    numbers behind it). The cells are the report's own (`_cell`), so Home and the README
    cannot format one number two ways. `rows` as `load_rows` gives them (metric rows with
    each run's pipeline label); `pipeline` keeps one label."""
    rows = rows[rows["convention"] == convention]
    if pipeline is not None:
        rows = rows[rows["pipeline"] == pipeline]
    tidy = table1(rows)
    parts = [wide(tidy, name, convention).assign(pipeline=name)
             for name in dict.fromkeys(tidy["pipeline"])]
    if not parts:
        return pd.DataFrame(columns=["pipeline", "method"]), tidy
    shown = pd.concat(parts, ignore_index=True).rename_axis(columns=None)
    cells = [c for s in dict.fromkeys(tidy["split"]) for m in COLUMNS
             if (c := f"{SPLIT_NAMES.get(s, s)} {COLUMNS[m]}") in shown]
    return shown[["pipeline", "method", "seeds", *cells]].fillna(""), tidy


def format_markdown(tidy: pd.DataFrame, conventions: Sequence[str] = ("paper", "option"),
                    temperatures: pd.DataFrame | None = None) -> str:
    """A Markdown Table 1 per pipeline and convention, then the pipeline's post-hoc
    temperatures (`posthoc_temperatures`) when given."""
    parts = []
    for pipeline in dict.fromkeys(tidy["pipeline"]):
        for convention in conventions:
            table = wide(tidy, pipeline, convention)
            if table.empty:
                continue
            parts.append(f"**{pipeline}**, {CONVENTION_TITLES[convention]}, % "
                         "(mean ± std over seeds; ID = in-domain test, OOD = out-of-domain "
                         "test; Trust = Acc - ECE; AUROC: how well the confidence ranks "
                         "right answers above wrong ones, 50 = chance; AURC: area under the "
                         "risk-coverage curve, lower is better"
                         + ("; METHOD+ts = METHOD after post-hoc temperature scaling, T "
                            "fitted on validation NLL" if table["method"].str.endswith(
                                POSTHOC_SUFFIX).any() else "") + ")\n")
            parts.append(_markdown(table))
        block = format_posthoc(temperatures, pipeline) if temperatures is not None else ""
        if block:
            parts.append(block)
    return "\n".join(parts)


def format_posthoc(temps: pd.DataFrame, pipeline: str) -> str:
    """The post-hoc block of one pipeline: each `+ts` row's temperatures, seed by seed."""
    part = temps[temps["pipeline"] == pipeline]
    if part.empty:
        return ""
    rows = []
    for method, group in part.groupby("method", sort=False):
        group = group.sort_values("seed")
        rows.append({"method": method, "seed": ", ".join(map(str, group["seed"])),
                     "T (validation NLL)": ", ".join(f"{t:.3g}" for t in group["t_nll"]),
                     "T minimising validation ECE": ", ".join(
                         "n/a" if pd.isna(t) else f"{t:.3g}" for t in group["t_ece"])})
    return (f"**{pipeline}**, post-hoc temperature scaling: `METHOD{POSTHOC_SUFFIX}` is METHOD's "
            "own model after post-hoc TS (Guo et al. 2017): one T per model, fitted on the "
            "validation split by the NLL of the gold token over the whole vocabulary, the "
            "logits divided by it at evaluation; nothing retrained. The T minimising "
            "validation ECE (a grid) is shown for comparison, not used.\n\n"
            + _markdown(pd.DataFrame(rows)))


def _markdown(table: pd.DataFrame) -> str:
    header = "| " + " | ".join(map(str, table.columns)) + " |"
    rule = "| " + " | ".join("---" if c == "method" else "---:" for c in table.columns) + " |"
    body = ["| " + " | ".join("" if pd.isna(v) else str(v) for v in row) + " |"
            for row in table.itertuples(index=False)]
    return "\n".join([header, rule, *body]) + "\n"


def format_csv(tidy: pd.DataFrame) -> str:
    return tidy.to_csv(index=False, float_format=lambda v: f"{v:.4f}" if np.isfinite(v) else "")
