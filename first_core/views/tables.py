"""Tables over many runs: the Compare page's mean and std over seeds (Table 1's numbers:
`report.table1` lays them out, for the CLI, the README and Home), the teacher that goes with
a run, the temperature-search curves and the pipeline's progress lines.

"Pipeline" here is the label `config_diff.label_runs` gives a run: its pipeline's name, or
`NAME [config X]` when runs of one name were made with different configs, so that seeds are
only ever averaged over runs of one config."""

from __future__ import annotations

import re
from collections.abc import Sequence

import pandas as pd

from ..config.settings import RUN_METHODS
from ..config.diff import NO_PIPELINE, label_runs
from ..store.schema import IMPORTED_METHOD


def _method_order(methods: pd.Series) -> pd.Series:
    rank = {m: i for i, m in enumerate(RUN_METHODS)}  # a post-hoc row after its method
    return methods.map(lambda m: rank.get(m, len(rank)))


def labelled(runs: pd.DataFrame) -> pd.DataFrame:
    """`store.list_runs` rows with `pipeline` replaced by each run's label (see above)."""
    return runs.assign(pipeline=runs["run_id"].map(label_runs(runs)).astype(object))


def pipelines(runs: pd.DataFrame) -> list[str]:
    """The store's pipeline labels (oldest first; unnamed ones as NO_PIPELINE)."""
    return list(dict.fromkeys(label_runs(runs).astype(str))) if len(runs) else []


def with_pipeline(metric_rows: pd.DataFrame, runs: pd.DataFrame) -> pd.DataFrame:
    """`store.load_metrics` rows plus their run's pipeline label."""
    return metric_rows.assign(
        pipeline=metric_rows["run_id"].map(label_runs(runs)).fillna(NO_PIPELINE).astype(str))


def _pipeline_rows(metric_rows: pd.DataFrame, pipeline: str | None) -> pd.DataFrame:
    rows = metric_rows if "pipeline" in metric_rows else metric_rows.assign(pipeline=NO_PIPELINE)
    return rows if pipeline is None else rows[rows["pipeline"] == pipeline]


def compare_table(metric_rows: pd.DataFrame, convention: str = "paper",
                  splits: Sequence[str] = ("test", "test_ood"),
                  pipeline: str | None = None) -> pd.DataFrame:
    """Per (pipeline, method) and split: mean, std and number of seeds of each metric (tidy,
    for bars). Seeds are only ever averaged within one pipeline (never across pipelines: two
    pipelines are two experiments). `metric_rows` is `store.load_metrics(...)` through
    `with_pipeline` (without a pipeline column every row counts as one unnamed pipeline);
    `pipeline` keeps only that one."""
    rows = _pipeline_rows(metric_rows, pipeline)
    wanted = rows[(rows["convention"] == convention) & rows["split"].isin(list(splits))]
    out = (wanted.groupby(["pipeline", "method", "split", "metric"], sort=False)["value"]
           .agg(mean="mean", std="std", seeds="count").reset_index())
    out["std"] = out["std"].fillna(0.0)
    split_rank = {s: i for i, s in enumerate(splits)}
    pipe_rank = {p: i for i, p in enumerate(dict.fromkeys(wanted["pipeline"]))}
    return out.sort_values(["pipeline", "method", "split", "metric"],
                           key=lambda col: _method_order(col) if col.name == "method"
                           else col.map(split_rank) if col.name == "split"
                           else col.map(pipe_rank) if col.name == "pipeline" else col
                           ).reset_index(drop=True)


def teacher_for(runs: pd.DataFrame, run_id: str) -> str | None:
    """The teacher run that goes with `run_id`: same pipeline (and config) if there is one,
    else any; None for imported predictions (another model: no teacher of this project's
    goes with it)."""
    runs = labelled(runs)
    teachers = runs[runs["method"] == "teacher_ft"]
    mine = runs[runs["run_id"] == run_id]
    if teachers.empty or (len(mine) and mine["method"].iloc[0] == IMPORTED_METHOD):
        return None
    same = teachers[teachers["pipeline"] == mine["pipeline"].iloc[0]] if len(mine) \
        else teachers.iloc[:0]
    return str((same if len(same) else teachers)["run_id"].iloc[0])


def calibration_searches(search: pd.DataFrame) -> pd.DataFrame:
    """The calibrate stage's searches (kinds TS and LS, one teacher run each), without the
    post-hoc runs' validation ECE-over-T curves that share the table."""
    return search[search["kind"].isin(["TS", "LS"])]


def search_curves(search: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """`store.load_temperature_search` rows -> (curves, chosen) for `plots.search_curve_figure`.

    curves: kind, value, ece, series ("val" / "test"), one row per point and split;
    chosen: the rows marked chosen, at their validation ECE.
    """
    long = search.melt(id_vars=["kind", "value", "chosen"], value_vars=["ece_val", "ece_test"],
                       var_name="series", value_name="ece").dropna(subset=["ece"])
    long["series"] = long["series"].map({"ece_val": "validation", "ece_test": "test"})
    picked = long[long["chosen"].astype(bool) & (long["series"] == "validation")]
    columns = ["kind", "value", "ece", "series"]
    return long[columns].reset_index(drop=True), picked[columns].reset_index(drop=True)


_PROGRESS = re.compile(r"^\[(\d+)/(\d+)\]\s*(.*)$")
_SEED_DONE = re.compile(r"^\[seed (-?\d+), (\d+)/(\d+)\]\s*(.*)$")


def parse_progress(line: str) -> tuple[int, int, str] | None:
    """The CLI's progress lines (console.py) -> (done, of, what); else None.

    '[3/12] topk ...' (a stage line) -> (3, 12, 'topk ...'); '[seed 0, 1/3] 15 stages done
    in 41.2 s' (the one line of each of several seeds) -> (1, 3, 'seed 0: 15 stages done in
    41.2 s')."""
    line = line.strip()
    if match := _SEED_DONE.match(line):
        done, of, what = int(match[2]), int(match[3]), f"seed {match[1]}: {match[4]}"
    elif match := _PROGRESS.match(line):
        done, of, what = int(match[1]), int(match[2]), match[3]
    else:
        return None
    return (done, of, what) if of >= 1 else None
