"""Table 1 from the store (report.py and `python -m first_core report`)."""

from __future__ import annotations

import io
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from first_core import report
from first_core.store.connection import open_readonly
from first_core.store.reads import load_predictions
from first_core.errors import FirstError
from first_core.fixtures import write_fixture_store


@pytest.fixture(scope="module")
def two_pipelines(tmp_path_factory):
    """Pipeline `alpha` with seeds 0, 1, 2 and pipeline `beta` with seed 7, in one store."""
    path = tmp_path_factory.mktemp("report") / "s.duckdb"
    for seed in (0, 1, 2):
        write_fixture_store(path, n_examples=40, seed=seed, pipeline="alpha")
    write_fixture_store(path, n_examples=40, seed=7, pipeline="beta")
    return path


def expected_cell(path, pipeline: str, method: str, split: str, metric: str,
                  convention: str = "paper") -> tuple[float, float, int]:
    """Mean, sample std and count of one metric over a pipeline's seeds, straight from SQL."""
    with open_readonly(path) as con:
        values = [v for (v,) in con.execute(
            "SELECT m.value FROM metrics m JOIN runs r USING (run_id) WHERE r.pipeline = ? "
            "AND r.method = ? AND m.split = ? AND m.metric = ? AND m.convention = ?",
            [pipeline, method, split, metric, convention]).fetchall()]
    values = 100 * np.array(values)
    return values.mean(), (values.std(ddof=1) if len(values) > 1 else 0.0), len(values)


def test_table1_averages_seeds_within_a_pipeline_only(two_pipelines):
    tidy = report.table1(report.load_rows(two_pipelines))
    assert set(tidy["pipeline"]) == {"alpha", "beta"}
    for (pipeline, method, conv, split, metric), row in tidy.set_index(
            ["pipeline", "method", "convention", "split", "metric"]).iterrows():
        mean, std, n = expected_cell(two_pipelines, pipeline, method, split, metric, conv)
        assert row["seeds"] == n == (3 if pipeline == "alpha" else 1)
        assert row["mean"] == pytest.approx(mean, abs=1e-9)
        assert row["std"] == pytest.approx(std, abs=1e-9)
    # beta's single seed is its own value, not pulled towards alpha's mean
    beta = tidy[(tidy.pipeline == "beta") & (tidy.method == "first_ts")
                & (tidy.split == "test") & (tidy.metric == "ece") & (tidy.convention == "paper")]
    alpha = tidy[(tidy.pipeline == "alpha") & (tidy.method == "first_ts")
                 & (tidy.split == "test") & (tidy.metric == "ece") & (tidy.convention == "paper")]
    assert float(beta["mean"].iloc[0]) != pytest.approx(float(alpha["mean"].iloc[0]))


def test_pipeline_filter_and_unknown_pipeline(two_pipelines):
    rows = report.load_rows(two_pipelines, "beta")
    assert set(rows["pipeline"]) == {"beta"}
    with pytest.raises(FirstError, match=r"'gamma'.*alpha.*beta"):
        report.load_rows(two_pipelines, "gamma")


def test_markdown_cells_are_the_tidy_means(two_pipelines):
    tidy = report.table1(report.load_rows(two_pipelines))
    table = report.wide(tidy, "alpha", "paper")
    assert list(table["method"]) == ["teacher_ft", "student_ft", "student_distill", "first_ls",
                                     "first_ts"]
    assert list(table.columns) == ["method", "seeds", *(
        f"{s} {m}" for s in ("ID", "OOD") for m in ("Acc", "Conf", "ECE", "AUROC", "AURC",
                                                    "Trust"))]
    mean, std, _ = expected_cell(two_pipelines, "alpha", "first_ts", "test_ood", "ece")
    cell = table.set_index("method").loc["first_ts", "OOD ECE"]
    assert cell == f"{mean:.1f} ± {std:.1f}"
    mean, std, _ = expected_cell(two_pipelines, "alpha", "student_ft", "test", "auroc")
    assert table.set_index("method").loc["student_ft", "ID AUROC"] == f"{mean:.1f} ± {std:.1f}"
    text = report.format_markdown(tidy)
    assert text.count("| method | seeds |") == 4  # 2 pipelines x 2 conventions
    assert "**beta**, paper convention" in text


def test_cli_report_markdown_and_csv(two_pipelines):
    def cli(*args):
        return subprocess.run([sys.executable, "-m", "first_core", "report", "--store",
                               str(two_pipelines), *args], capture_output=True, text=True)
    md = cli("--pipeline", "alpha")
    assert md.returncode == 0, md.stderr
    assert "**alpha**" in md.stdout and "beta" not in md.stdout
    csv = cli("--format", "csv")
    assert csv.returncode == 0, csv.stderr
    frame = pd.read_csv(io.StringIO(csv.stdout))
    tidy = report.table1(report.load_rows(two_pipelines))
    np.testing.assert_allclose(frame["mean"], tidy["mean"], atol=1e-4)
    bad = cli("--pipeline", "nope")
    assert bad.returncode == 2 and "Traceback" not in bad.stderr and "'nope'" in bad.stderr


def test_report_of_a_real_pipeline_store_prints_auroc_and_aurc(tmp_path):
    """The columns come from the rows `evaluate.compute_metrics` stored for a run: AUROC is
    scikit-learn's on the stored predictions, AURC a plain loop's; both in percent."""
    from sklearn.metrics import roc_auc_score

    path = write_fixture_store(tmp_path / "one.duckdb", n_examples=30, seed=0)
    proc = subprocess.run([sys.executable, "-m", "first_core", "report", "--store", str(path)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    header = next(line for line in proc.stdout.splitlines() if line.startswith("| method"))
    assert "| ID ECE | ID AUROC | ID AURC | ID Trust |" in header
    assert "| OOD ECE | OOD AUROC | OOD AURC | OOD Trust |" in header
    preds = load_predictions(path, "fixture/first_ts/seed0", "test_ood")
    conf, ok = preds["confidence"].to_numpy(), preds["correct"].to_numpy(dtype=bool)
    answered = conf[None, :] >= conf[:, None]
    aurc = np.mean((answered & ~ok[None, :]).sum(1) / answered.sum(1))
    row = next(line for line in proc.stdout.splitlines() if line.startswith("| first_ts"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    columns = [c.strip() for c in header.strip("|").split("|")]
    got = dict(zip(columns, cells))
    assert got["OOD AUROC"] == f"{100 * roc_auc_score(ok, conf):.1f}"
    assert got["OOD AURC"] == f"{100 * aurc:.1f}"
    assert report._cell(float("nan"), 0.0, 0) == "n/a"  # AUROC of one-class splits


def test_cli_report_on_a_missing_store(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "first_core", "report", "--store",
                           str(tmp_path / "none.duckdb")], capture_output=True, text=True)
    assert proc.returncode == 2 and "no such store" in proc.stderr
    assert not (tmp_path / "none.duckdb").exists()


# ---------------------------------------------------------------- issue 23 item 2

@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    from helpers.mixed_configs import write_mixed_store

    return write_mixed_store(tmp_path_factory.mktemp("mixed") / "mixed.duckdb")


def test_report_never_averages_runs_of_different_configs_as_seeds(mixed):
    """Two `run`s with one `name` and other settings: each config is its own row, with a
    note naming the keys that differ; runs differing only in seed-like keys stay seeds."""
    from helpers.mixed_configs import DIFFERING

    proc = subprocess.run([sys.executable, "-m", "first_core", "report", "--store",
                           str(mixed)], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    text = proc.stdout
    assert "**demo [config A]**, paper" in text and "**demo [config B]**, paper" in text
    assert "**demo**," not in text
    note = next(line for line in text.splitlines() if "different configs" in line)
    for key in DIFFERING:
        assert key in note
    assert "teacher_train.epochs (A: 3.0, B: 2.0)" in note  # each config's value
    assert "student_train.epochs" not in note  # only keys that differ
    for key in ("seed", "runs_dir", "store", "name"):
        assert f"; {key} (" not in note and f": {key} (" not in note
    tidy = report.table1(report.load_rows(mixed))
    seeds = tidy.groupby("pipeline")["seeds"].max().to_dict()
    assert seeds == {"demo [config A]": 2, "demo [config B]": 1}
    # config A's mean is seeds 0 and 2 alone, straight from SQL
    with open_readonly(mixed) as con:
        want = con.execute(
            "SELECT 100 * avg(m.value) FROM metrics m JOIN runs r USING (run_id) WHERE "
            "r.seed IN (0, 2) AND r.method = 'first_ts' AND m.split = 'test' AND "
            "m.metric = 'ece' AND m.convention = 'paper'").fetchone()[0]
    got = tidy[(tidy.pipeline == "demo [config A]") & (tidy.method == "first_ts")
               & (tidy.split == "test") & (tidy.metric == "ece") & (tidy.convention == "paper")]
    assert float(got["mean"].iloc[0]) == pytest.approx(want, abs=1e-9)


def test_report_of_a_split_pipeline_by_name_and_as_csv(mixed):
    def cli(*args):
        return subprocess.run([sys.executable, "-m", "first_core", "report", "--store",
                               str(mixed), *args], capture_output=True, text=True, check=False)
    md = cli("--pipeline", "demo")
    assert md.returncode == 0, md.stderr
    assert "[config A]" in md.stdout and "[config B]" in md.stdout
    csv = cli("--format", "csv")
    assert csv.returncode == 0 and "different configs" in csv.stderr  # the CSV stays data
    frame = pd.read_csv(io.StringIO(csv.stdout))
    assert set(frame["pipeline"]) == {"demo [config A]", "demo [config B]"}
