"""Every dashboard page, run in-process with Streamlit's AppTest on a fixture store."""

from __future__ import annotations

import base64
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from streamlit.runtime.pages_manager import PagesManager
from streamlit.testing.v1 import AppTest

from first_core.metrics import selective as selective_metrics
from first_core.store import connection
from first_core.store.paths import STORE_ENV
from first_core.store.reads import list_runs, load_examples, load_metrics, load_predictions
from first_core.store.schema import IMPORTED_METHOD
from first_core.store.writes import Store
from first_core.views import example_rows, rescaling, run_arrays, token_views, view_state
from first_core.fixtures import PRETRAINED_MODEL, write_fixture_store, write_pretrained_coverage
from first_core.views.safe_text import for_markdown

ROOT = Path(__file__).resolve().parents[1]
APP = ROOT / "app.py"
PAGES = {  # page -> labels of widgets that must be there
    "pages/home.py": {"radio": ["Confidence convention"]},
    "pages/reliability.py": {"select_slider": ["Temperature c (log scale)"],
                             "button": ["Best c on validation (ECE)",
                                        "Fit c on validation (NLL)"],
                             "slider": ["Bins", "Answer only when confidence ≥ t"],
                             "multiselect": ["Runs (up to two, side by side)"]},
    "pages/coverage.py": {"number_input": ["Token positions in the data set", "Vocabulary size"],
                          "selectbox": ["Teacher run", "Probability dtype"]},
    "pages/temperature.py": {"selectbox": ["Teacher run", "Example"], "select_slider": ["c"]},
    "pages/compare.py": {"radio": ["Confidence"], "multiselect": ["Splits"]},
    "pages/examples.py": {"selectbox": ["Run", "Split", "Show", "Look at"]},
    "pages/learn.py": {"slider": ["Accuracy of the simulated classifier",
                                  "Discrimination of model A (0 = always states its base "
                                  "rate, 1 = as model B)"],
                       "select_slider": ["Temperature c"]},
}


@pytest.fixture(scope="module")
def fixture_store(tmp_path_factory) -> Path:
    return write_fixture_store(tmp_path_factory.mktemp("app") / "fixture.duckdb", 60, seed=2)


def as_after_the_first_request(monkeypatch) -> None:
    """AppTest re-decides before *every* run whether the app uses Streamlit's legacy pages/
    directory mode; a server decides once, and app.py's st.navigation switches it off for
    good on the first request. Make AppTest runs look like a server's later requests (the
    first request itself is `test_first_run_of_a_fresh_server_goes_through_app_py`)."""
    init = PagesManager.__init__

    def after_first(self, *args, **kwargs):
        init(self, *args, **kwargs)
        PagesManager.uses_pages_directory = False

    monkeypatch.setattr(PagesManager, "__init__", after_first)


def open_app(monkeypatch, store_path: Path | str, page: str | None = None,
             query: dict[str, str] | None = None, fresh_server: bool = False) -> AppTest:
    """Run app.py against `store_path` (via $FIRST_STORE), optionally on another page."""
    monkeypatch.syspath_prepend(str(ROOT))
    monkeypatch.setenv(STORE_ENV, str(store_path))
    if not fresh_server:
        as_after_the_first_request(monkeypatch)
    at = AppTest.from_file(str(APP), default_timeout=60)
    if query:  # a fresh session opened on this URL
        at.query_params.update(query)
    at.run()
    if page:
        if query:
            at.query_params.update(query)
        at.switch_page(page).run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def drilldown(at: AppTest) -> pd.DataFrame | None:
    """The drill-down table under the reliability diagram, if shown."""
    found = [d.value for d in at.dataframe
             if list(d.value.columns) == list(example_rows.DRILL_COLUMNS)]
    return found[0] if found else None


def labels(widgets) -> list[str]:
    return [w.label for w in widgets]


def ece_shown(at: AppTest) -> list[str]:
    """'7.1% [5.9, 8.4]' per ECE card: the value and its bootstrap interval."""
    return [f"{m.value} {m.delta}" for m in at.metric if m.label == "ECE"]


@pytest.mark.parametrize("page", list(PAGES))
def test_every_page_renders_with_its_widgets(monkeypatch, fixture_store, page):
    at = open_app(monkeypatch, fixture_store, page)
    assert not at.error, [e.value for e in at.error]
    for kind, wanted in PAGES[page].items():
        assert set(wanted) <= set(labels(getattr(at, kind))), (kind, labels(getattr(at, kind)))


def test_home_shows_the_store_and_the_headline(monkeypatch, fixture_store):
    at = open_app(monkeypatch, fixture_store)
    assert any(for_markdown(fixture_store) in c.value for c in at.caption)
    headline = at.dataframe[0].value
    assert set(headline["method"]) == set(list_runs(fixture_store)["method"])
    assert {"ID Acc", "ID ECE", "ID Trust", "OOD Acc", "OOD ECE", "OOD Trust"} <= set(headline)
    assert labels(at.download_button)[:1] == ["Download CSV"]


@pytest.fixture(scope="module")
def two_seeds(tmp_path_factory) -> Path:
    """Pipeline "fixture" with seeds 2 and 3; first_ts's in-domain AUROC undefined in both
    (as when every answer is right)."""
    import duckdb

    path = write_fixture_store(tmp_path_factory.mktemp("seeds") / "seeds.duckdb", 40, seed=2)
    write_fixture_store(path, 40, seed=3)
    with duckdb.connect(str(path)) as con:
        con.execute("UPDATE metrics SET value = 'NaN' WHERE metric = 'auroc' AND split = "
                    "'test' AND run_id IN (SELECT run_id FROM runs WHERE method = 'first_ts')")
    return path


def test_home_headline_has_auroc_aurc_in_the_reports_format(monkeypatch, two_seeds):
    """Issue 30 item 19: trust is calibration and discrimination, so AUROC and AURC are
    there; every cell is the report's (one decimal of a percentage, trailing zeros kept,
    mean ± std over the seeds, n/a where undefined), never a float's own digits."""
    at = open_app(monkeypatch, two_seeds)
    headline = at.dataframe[0].value
    cells = [f"{s} {m}" for s in ("ID", "OOD")
             for m in ("Acc", "Conf", "ECE", "AUROC", "AURC", "Trust")]
    assert list(headline.columns) == ["pipeline", "method", "seeds", *cells]
    assert (headline["seeds"] == 2).all()
    table = headline.set_index("method")[cells]
    assert table.loc["first_ts", "ID AUROC"] == "n/a"
    shown = table.drop(index="first_ts", columns="ID AUROC").stack()
    assert shown.str.fullmatch(r"\d+\.\d ± \d+\.\d").all(), shown.tolist()
    # the same text the CLI's report prints for this store
    from first_core import report
    printed = report.format_markdown(report.table1(report.load_rows(two_seeds)), ("paper",))
    row = next(line for line in printed.splitlines() if line.startswith("| teacher_ft"))
    assert row == "| " + " | ".join(["teacher_ft", "2", *table.loc["teacher_ft"]]) + " |"


def test_moving_the_temperature_slider_changes_the_ece(monkeypatch, fixture_store):
    at = open_app(monkeypatch, fixture_store, "pages/reliability.py")
    before = ece_shown(at)
    assert before and all(re.fullmatch(r"\d+\.\d% \[\d+\.\d, \d+\.\d\]", v) for v in before)
    at.radio(key="rel_mode").set_value("first").run()
    at.select_slider(key="rel_c").set_value(view_state.snap_temperature(0.3)).run()
    after = ece_shown(at)
    assert after != before
    assert at.query_params["c"] == "0.299" and at.query_params["mode"] == "first"


def test_best_c_button_snaps_to_the_validation_optimum(monkeypatch, fixture_store):
    at = open_app(monkeypatch, fixture_store, "pages/reliability.py")
    run_id = at.multiselect(key="rel_runs").value[0]
    at.button(key="rel_best").click().run()
    frame = load_predictions(fixture_store, run_id, "val",
                             columns=run_arrays.PREDICTION_COLUMNS)
    expected = rescaling.best_temperature(run_arrays.prediction_arrays(frame), "logit", "option",
                                          10, "uniform")
    assert at.select_slider(key="rel_c").value == expected


def test_fit_button_snaps_to_the_nll_fit_on_validation(monkeypatch, tmp_path):
    """"Fit c on validation (NLL)": the slider moves to the grid value nearest the c that
    minimises the page's NLL on the first run's validation split (issue 27), for a pipeline
    run and for an imported run, and the caption gives the exact fit."""
    from first_core.importer import table as importer

    path = write_fixture_store(tmp_path / "fit.duckdb", 60, seed=2)
    rng = np.random.default_rng(0)
    p = rng.dirichlet(np.full(4, 0.4), 90)
    upload = tmp_path / "mine.csv"
    pd.DataFrame({"example_id": [f"e{i}" for i in range(90)],
                  "split": ["val", "test", "test_ood"] * 30,
                  **{f"p_{x}": p[:, i] for i, x in enumerate("ABCD")},
                  "gold": rng.choice(list("ABCD"), 90)}).to_csv(upload, index=False)
    importer.import_predictions(upload, "mine", path)
    runs = list_runs(path)
    for run_id in (runs["run_id"].iloc[1], runs.loc[runs["method"] == "imported",
                                                   "run_id"].iloc[0]):
        at = open_app(monkeypatch, path, "pages/reliability.py", {"runs": run_id})
        at.button(key="rel_fit_nll").click().run()
        assert not at.exception, [e.value for e in at.exception]
        frame = load_predictions(path, run_id, "val",
                                 columns=run_arrays.PREDICTION_COLUMNS)
        fitted = rescaling.fit_temperature(run_arrays.prediction_arrays(frame), "logit")
        assert at.select_slider(key="rel_c").value == view_state.snap_temperature(fitted)
        assert any(f"{fitted:.4g}" in c.value for c in at.caption), run_id


def test_a_url_reproduces_a_view(monkeypatch, fixture_store):
    runs = list_runs(fixture_store)["run_id"].tolist()
    query = {"runs": f"{runs[1]},{runs[2]}", "split": "test_ood", "c": "0.3", "mode": "first",
             "conv": "paper", "bins": "15", "strategy": "quantile"}
    at = open_app(monkeypatch, fixture_store, "pages/reliability.py", query)
    assert at.multiselect(key="rel_runs").value == runs[1:3]
    assert at.select_slider(key="rel_c").value == view_state.snap_temperature(0.3)
    assert at.slider(key="rel_bins").value == 15
    assert (at.selectbox(key="rel_split").value, at.radio(key="rel_strategy").value) == \
        ("test_ood", "quantile")
    assert len(ece_shown(at)) == 2  # two runs side by side


@pytest.mark.parametrize("page", [p for p in PAGES if p != "pages/learn.py"])
def test_missing_store_shows_the_command(monkeypatch, tmp_path, page):
    at = open_app(monkeypatch, tmp_path / "nothing.duckdb", page)
    assert "python -m first_core demo" in [c.value for c in at.code]


def test_empty_store_shows_the_command_and_the_demo_button(monkeypatch, tmp_path):
    Store(tmp_path / "empty.duckdb")
    at = open_app(monkeypatch, tmp_path / "empty.duckdb")
    assert "python -m first_core demo" in [c.value for c in at.code]
    assert any("Run the embedded demo" in b.label for b in at.button)


def test_corrupt_store_is_a_message_not_a_traceback(monkeypatch, tmp_path):
    bad = tmp_path / "bad.duckdb"
    bad.write_bytes(b"this is not a database" * 100)
    at = open_app(monkeypatch, bad, "pages/reliability.py")
    assert any("not a DuckDB database" in e.value for e in at.error)


def test_store_being_written_says_run_in_progress(monkeypatch, tmp_path, fixture_store):
    busy = tmp_path / "busy.duckdb"
    busy.write_bytes(fixture_store.read_bytes())
    holder = subprocess.Popen(
        [sys.executable, "-c", "import duckdb, sys, time; c = duckdb.connect(sys.argv[1]); "
         "print('locked', flush=True); time.sleep(60)", str(busy)],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        at = open_app(monkeypatch, busy)
        assert any("run in progress" in e.value for e in at.error)
    finally:
        holder.kill()
        holder.wait()


def test_picker_lists_only_stores_under_the_data_folder(monkeypatch, tmp_path, fixture_store):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "other.duckdb").write_bytes(fixture_store.read_bytes())
    (tmp_path / "outside.duckdb").write_bytes(fixture_store.read_bytes())
    (tmp_path / "data" / "escape.duckdb").symlink_to(tmp_path / "outside.duckdb")
    monkeypatch.chdir(tmp_path)
    at = open_app(monkeypatch, tmp_path / "missing.duckdb")
    picker = at.selectbox(key="store_choice")
    assert picker.options == [str(tmp_path / "missing.duckdb"), "other.duckdb"]
    picker.set_value("other.duckdb").run()
    assert any(for_markdown((tmp_path / "data" / "other.duckdb").resolve()) in c.value
               for c in at.caption)
    assert at.dataframe  # the picked store's headline


def test_learn_page_needs_no_store_and_moves_with_its_sliders(monkeypatch, tmp_path):
    at = open_app(monkeypatch, tmp_path / "none.duckdb", "pages/learn.py")
    before = [m.value for m in at.metric if m.label == "ECE"]
    at.slider(key="learn_s").set_value(3.0).run()
    after = [m.value for m in at.metric if m.label == "ECE"]
    assert after[0] != before[0]
    # c ~ s undoes it
    at.select_slider(key="learn_c").set_value(view_state.snap_temperature(3.0)).run()
    fixed = [m.value for m in at.metric if m.label == "ECE"]
    assert float(fixed[1].rstrip("%")) < float(fixed[0].rstrip("%"))
    assert len(at.latex) >= 4


# ---------------------------------------------------------------- pipelines (issue 9)

@pytest.fixture(scope="module")
def two_pipelines(tmp_path_factory) -> Path:
    """The fixture's five methods in pipeline "fixture" (seed 2) and again, with other
    numbers, in pipeline "other" (seed 3)."""
    path = write_fixture_store(tmp_path_factory.mktemp("two") / "two.duckdb", 40, seed=2)
    return write_fixture_store(path, 40, seed=3, pipeline="other")


def _expected_headline(path: Path, pipeline: str) -> pd.Series:
    """Independent: the pipeline's own metric rows, averaged per method with plain pandas,
    as one-decimal percentages (one seed each: no ± part)."""
    runs = list_runs(path)
    mine = runs.loc[runs["pipeline"] == pipeline, "run_id"].tolist()
    rows = load_metrics(path, run_ids=mine, convention="paper", split="test_ood",
                        metric="accuracy")
    return rows.groupby("method")["value"].mean().map(lambda v: f"{100 * v:.1f}")


def test_two_pipelines_stay_apart_on_home_and_compare(monkeypatch, two_pipelines):
    at = open_app(monkeypatch, two_pipelines)
    headline = at.dataframe[0].value
    assert len(headline) == 10 and set(headline["pipeline"]) == {"fixture", "other"}
    for name in ("fixture", "other"):
        shown = headline[headline["pipeline"] == name].set_index("method")["OOD Acc"]
        expected = _expected_headline(two_pipelines, name)
        pd.testing.assert_series_equal(shown.sort_index(), expected.sort_index(),
                                       check_names=False)
    at = open_app(monkeypatch, two_pipelines, "pages/compare.py")
    full = at.dataframe[1].value
    assert set(full["pipeline"]) == {"fixture", "other"} and (full["seeds"] == 1).all()
    bars = {t["name"]: t["x"] for t in json.loads(at.get("plotly_chart")[0].proto.spec)["data"]}
    assert any("other / first_ts" in x for x in bars.values())


def test_pipeline_picker_lives_in_the_url(monkeypatch, two_pipelines):
    for page in ("pages/home.py", "pages/compare.py"):
        at = open_app(monkeypatch, two_pipelines, page, {"pipeline": "other"})
        table = at.dataframe[0 if page.endswith("home.py") else 1].value
        assert set(table["pipeline"]) == {"other"}
        assert at.query_params["pipeline"] == "other"
        at.selectbox(key="home_pipeline" if page.endswith("home.py") else "cmp_pipeline"
                     ).set_value("fixture").run()
        assert at.query_params["pipeline"] == "fixture"
    at = open_app(monkeypatch, two_pipelines, "pages/home.py", {"pipeline": "../ghost"})
    assert set(at.dataframe[0].value["pipeline"]) == {"fixture", "other"}  # unknown: all
    assert not at.error


# ---------------------------------------------------------------- Reliability (issue 12)

def test_reliability_opens_on_figure_5(monkeypatch, fixture_store):
    at = open_app(monkeypatch, fixture_store, "pages/reliability.py")
    from first_core.fixtures import run_id

    assert at.multiselect(key="rel_runs").value == [run_id("student_ft", 2),
                                                    run_id("first_ts", 2)]
    assert at.selectbox(key="rel_split").value == "test_ood"
    assert at.query_params["split"] == "test_ood"


@pytest.mark.parametrize("query", [{"c": "-1"}, {"c": "nan"}, {"c": "inf"}, {"bins": "100000"},
                                   {"bins": "-3"}, {"runs": "ghost/run,../../etc"},
                                   {"split": "train"}, {"mode": "<script>"}, {"bin": "999"},
                                   {"bin": "-1", "panel": "5"}, {"bin": "nan"},
                                   {"runs": "", "c": "1e308"}])
def test_garbage_query_parameters_show_no_traceback(monkeypatch, fixture_store, query):
    at = open_app(monkeypatch, fixture_store, "pages/reliability.py", query)
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert at.select_slider(key="rel_c").value in view_state.TEMPERATURE_GRID
    assert view_state.BIN_RANGE[0] <= at.slider(key="rel_bins").value <= view_state.BIN_RANGE[1]
    assert len(ece_shown(at)) == 2  # fell back to the default view
    assert "bin" not in at.query_params


def test_a_bin_in_the_url_lists_its_examples_at_the_current_temperature(monkeypatch,
                                                                        fixture_store):
    runs = list_runs(fixture_store)
    run = runs.loc[runs["method"] == "student_ft", "run_id"].iloc[0]
    query = {"runs": run, "split": "test", "c": "2", "mode": "logit", "conv": "option",
             "bins": "10", "bin": "7", "panel": "0"}
    at = open_app(monkeypatch, fixture_store, "pages/reliability.py", query)
    table = drilldown(at)
    assert table is not None
    frame = load_predictions(fixture_store, run, "test", columns=run_arrays.PREDICTION_COLUMNS)
    scaled = rescaling.rescale(run_arrays.prediction_arrays(frame), 2.0, "logit", "option")
    members = example_rows.bin_members(scaled, 10, "uniform", 7)
    assert len(table) == len(members) > 0
    assert set(table["example_id"]) == set(frame["example_id"].to_numpy()[members])
    assert table["teacher_top5"].notna().all() and table["question"].notna().all()
    assert at.query_params["bin"] == "7"
    at.button(key="rel_clear").click().run()
    assert "bin" not in at.query_params
    assert drilldown(at) is None


def test_smooth_ece_card_is_relplots_number(monkeypatch, fixture_store):
    relplot = pytest.importorskip("relplot", reason="relplot not installed (requirements.txt)")
    runs = list_runs(fixture_store)
    run = runs.loc[runs["method"] == "first_ts", "run_id"].iloc[0]
    at = open_app(monkeypatch, fixture_store, "pages/reliability.py",
                  {"runs": run, "split": "test", "conv": "paper", "c": "1", "mode": "logit"})
    frame = load_predictions(fixture_store, run, "test", columns=run_arrays.PREDICTION_COLUMNS)
    scaled = rescaling.rescale(run_arrays.prediction_arrays(frame), 1.0, "logit", "paper")
    expected = relplot.smECE(scaled.confidence, scaled.correct.astype(float))
    assert [m.value for m in at.metric if m.label == "SmoothECE"] == [f"{expected:.1%}"]
    spec = json.loads(at.get("plotly_chart")[0].proto.spec)
    assert "Smoothed (SmoothECE)" in [t.get("name") for t in spec["data"]]


# ------------------------------------------------------------ acting on the confidence (issue 21)

def cards(at: AppTest, label: str) -> list[str]:
    return [m.value for m in at.metric if m.label == label]


def risk_traces(at: AppTest) -> list[dict]:
    """The traces of every risk-coverage chart (the ones with a 'Coverage' x axis title)."""
    specs = [json.loads(c.proto.spec) for c in at.get("plotly_chart")]
    return [s for s in specs if "Coverage (share" in json.dumps(s["layout"].get("xaxis", {}))]


def test_reliability_shows_discrimination_the_threshold_and_the_curve(monkeypatch,
                                                                       fixture_store):
    runs = list_runs(fixture_store)
    run = runs.loc[runs["method"] == "student_ft", "run_id"].iloc[0]
    query = {"runs": run, "split": "test", "c": "2", "mode": "logit", "conv": "paper",
             "t": "0.6"}
    at = open_app(monkeypatch, fixture_store, "pages/reliability.py", query)
    assert at.slider(key="rel_t").value == 0.6 and at.query_params["t"] == "0.6"
    # every number from the re-scaled confidences (c = 2 reorders nothing it must not)
    frame = load_predictions(fixture_store, run, "test",
                             columns=run_arrays.PREDICTION_COLUMNS)
    scaled = rescaling.rescale(run_arrays.prediction_arrays(frame), 2.0, "logit", "paper")
    conf, ok = scaled.confidence, scaled.correct
    from sklearn.metrics import roc_auc_score

    assert cards(at, "AUROC") == [f"{roc_auc_score(ok, conf):.3f}"]
    assert cards(at, "AURC") == [f"{selective_metrics.aurc(conf, ok):.3f}"]
    assert [m.delta for m in at.metric if m.label == "AUROC"][0].startswith("[")
    answered = conf >= 0.6
    assert cards(at, "Answered") == [f"{answered.mean():.1%}"]
    assert cards(at, "Their accuracy") == [f"{ok[answered].mean():.1%}"]
    assert cards(at, "Wrong ones") == [f"{(answered & ~ok).sum():,}"]
    assert cards(at, "Deferred") == [f"{(~answered).sum():,}"]
    # the curve, its threshold mark, and t on the reliability diagram
    (spec,) = risk_traces(at)
    names = [t.get("name") for t in spec["data"]]
    assert "t = 0.6" in names and "Confidence says nothing" in names
    line = next(t for t in spec["data"] if t.get("name") not in ("t = 0.6",
                                                                 "Confidence says nothing"))
    assert plotly_array(line["x"])[-1] == 1.0
    assert plotly_array(line["y"])[-1] == pytest.approx(1 - ok.mean())
    diagram = json.loads(at.get("plotly_chart")[0].proto.spec)
    assert [s["x0"] for s in diagram["layout"]["shapes"]] == [0.6]
    # moving the threshold moves the cards and the URL
    at.slider(key="rel_t").set_value(0.9).run()
    assert cards(at, "Answered") == [f"{(conf >= 0.9).mean():.1%}"]
    assert at.query_params["t"] == "0.9"


@pytest.mark.parametrize("raw, shown", [("abc", 0.5), ("nan", 0.5), ("-1", 0.0), ("2", 1.0),
                                        ("inf", 1.0), ("0.123", 0.12), ("", 0.5)])
def test_garbage_threshold_in_the_url_falls_back_or_clamps(monkeypatch, fixture_store, raw,
                                                           shown):
    at = open_app(monkeypatch, fixture_store, "pages/reliability.py", {"t": raw})
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert at.slider(key="rel_t").value == shown
    assert len(cards(at, "AUROC")) == 2 and len(risk_traces(at)) == 2


def test_learn_page_shows_a_calibrated_model_that_cannot_discriminate(monkeypatch, tmp_path):
    at = open_app(monkeypatch, tmp_path / "none.duckdb", "pages/learn.py")
    auroc, aurc = cards(at, "AUROC"), cards(at, "AURC")
    assert auroc[0] == "0.500" and float(auroc[1]) > 0.65  # model A (d = 0) beside model B
    assert float(aurc[0]) > float(aurc[1])
    eces = [float(v.rstrip("%")) for v in cards(at, "ECE")[-2:]]
    assert max(eces) < 3.0  # both calibrated
    (spec,) = risk_traces(at)
    flat = next(t for t in spec["data"] if t["name"] == "Model A")
    assert np.ptp(plotly_array(flat["y"])) == 0  # the base rate's flat curve
    at.slider(key="learn_d").set_value(1.0).run()
    assert cards(at, "AUROC")[0] == cards(at, "AUROC")[1]


def test_compare_page_bars_auroc_and_aurc(monkeypatch, two_pipelines):
    at = open_app(monkeypatch, two_pipelines, "pages/compare.py")
    for metric in ("auroc", "aurc"):
        at.selectbox(key="cmp_metric").set_value(metric).run()
        assert not at.exception
        spec = json.loads(at.get("plotly_chart")[0].proto.spec)
        assert spec["layout"]["title"]["text"].startswith(metric.upper())
        shown = np.concatenate([plotly_array(t["y"]) for t in spec["data"]])
        rows = load_metrics(two_pipelines, metric=metric, convention="option",
                            split=["test", "test_ood"])
        assert np.isin(np.round(shown, 12), np.round(rows["value"].to_numpy(), 12)).all()


# ---------------------------------------------------------------- data text is plain text

IMAGE_QUESTION = "Which one? ![](http://tracker.invalid/x.png) **bold** <img src=x>"


@pytest.fixture
def markdown_store(tmp_path) -> Path:
    path = write_fixture_store(tmp_path / "md.duckdb", 30, seed=2)
    examples = load_examples(path, split="test")
    examples.loc[:, "question"] = IMAGE_QUESTION
    Store(path).write_examples(examples)
    return path


def test_examples_and_drilldown_show_data_text_as_plain_text(monkeypatch, markdown_store):
    at = open_app(monkeypatch, markdown_store, "pages/examples.py")
    assert IMAGE_QUESTION in [t.value for t in at.text]
    rendered = [m.value for m in [*at.markdown, *at.caption, *at.info, *at.error]]
    assert not [m for m in rendered if "tracker.invalid" in m], rendered
    runs = list_runs(markdown_store)
    run = runs.loc[runs["method"] == "student_ft", "run_id"].iloc[0]
    at = open_app(monkeypatch, markdown_store, "pages/reliability.py",
                  {"runs": run, "split": "test", "bin": "9"})
    drill = drilldown(at)  # a dataframe cell: always plain text
    assert set(drill["question"]) == {IMAGE_QUESTION}
    assert not [m.value for m in at.markdown if "tracker.invalid" in m.value]


# ---------------------------------------------------------------- import (issue 12)

def test_upload_box_imports_a_file_as_its_own_pipeline(monkeypatch, tmp_path):
    path = write_fixture_store(tmp_path / "up.duckdb", 20, seed=2)
    at = open_app(monkeypatch, path)
    bad = b"p_A,p_B,gold\n0.7,0.2,A\n0.5,oops,B\n"
    at.file_uploader(key="import_file").set_value(("mine.csv", bad, "text/csv"))
    at.text_input(key="import_name").set_value("my-llm")
    at.get("form_submit_button")[0].click().run()
    assert [c.value for c in at.code if "mine.csv:3: p_B" in c.value]
    assert "my-llm" not in set(list_runs(path)["pipeline"])  # nothing half-written
    good = b"example_id,split,p_A,p_B,gold\n" + b"".join(
        f"e{i},test_ood,{0.9 - i / 50:.3f},{0.05 + i / 60:.3f},{'AB'[i % 3 == 0]}\n".encode()
        for i in range(30))
    at.file_uploader(key="import_file").set_value(("mine.csv", good, "text/csv"))
    at.get("form_submit_button")[0].click().run()
    assert any("Imported 30 predictions" in s.value for s in at.success)
    runs = list_runs(path)
    assert runs.loc[runs["pipeline"] == "my-llm", "method"].tolist() == [IMPORTED_METHOD]
    at = open_app(monkeypatch, path, "pages/reliability.py",
                  {"runs": "my-llm/imported/seed0", "split": "test_ood"})
    assert len(ece_shown(at)) == 1 and not at.error


def test_upload_box_turns_unreadable_files_and_colliding_names_into_messages(monkeypatch,
                                                                             tmp_path):
    """Issue 23: bytes that are not UTF-8 raised a Python exception in the box, and a name
    equal to a pipeline's data set key replaced that pipeline's question texts."""
    from first_core.fixtures import DATASET
    path = write_fixture_store(tmp_path / "up.duckdb", 20, seed=2)
    before = load_examples(path)
    at = open_app(monkeypatch, path)
    at.file_uploader(key="import_file").set_value(
        ("mine.jsonl", b'{"confidence": 0.5, "correct": true}\n\xff\xfe\n', "text/plain"))
    at.text_input(key="import_name").set_value("my-llm")
    at.get("form_submit_button")[0].click().run()
    assert not at.exception
    assert [c.value for c in at.code if "mine.jsonl:2: not valid UTF-8" in c.value]
    good = b"example_id,split,p_A,p_B,gold,question\ne1,test,0.6,0.3,A,Mine?\n"
    at.file_uploader(key="import_file").set_value(("mine.csv", good, "text/csv"))
    at.text_input(key="import_name").set_value(DATASET)
    at.get("form_submit_button")[0].click().run()
    assert not at.exception
    assert [c.value for c in at.code if f"name {DATASET!r} is the data set key" in c.value]
    pd.testing.assert_frame_equal(load_examples(path), before)


@pytest.mark.parametrize("page", [None, "pages/reliability.py", "pages/learn.py"])
def test_first_run_of_a_fresh_server_goes_through_app_py(monkeypatch, fixture_store, page):
    """Without `as_after_the_first_request`, every AppTest run is a fresh server's first:
    Streamlit's legacy pages/ mode, which would run a page without app.py."""
    at = open_app(monkeypatch, fixture_store, page, fresh_server=True)
    assert at.selectbox(key="store_choice")  # app.py's sidebar ran
    assert PagesManager.uses_pages_directory is False  # st.navigation switched it off
    title = {None: "first-lab", "pages/reliability.py": "Reliability",
             "pages/learn.py": "Learn calibration"}[page]
    assert at.title[0].value.startswith(title)


# ---------------------------------------------------------------- instruction runs (issue 13)

def plotly_array(value) -> np.ndarray:
    """A trace's x / y from a chart's JSON spec: a list, or plotly's typed-array encoding."""
    if isinstance(value, dict):
        return np.frombuffer(base64.b64decode(value["bdata"]), dtype=value["dtype"])
    return np.asarray(value)


def test_coverage_page_of_an_instruct_run_shows_positions_and_tokens(monkeypatch,
                                                                     tiny_instruct_run):
    from scipy.special import softmax

    from first_core.knowledge.manifest import TOKENS
    from first_core.knowledge.reader import load_topk

    work, _ = tiny_instruct_run
    topk = work / "runs" / "instruct-tiny" / "topk"
    at = open_app(monkeypatch, work / "first.duckdb", "pages/coverage.py")
    assert not at.error, [e.value for e in at.error]
    # the curve over response positions, against pandas over the whole training store
    train = load_topk(topk / "train", layout=TOKENS)
    want = pd.DataFrame({"position": np.minimum(train.positions, 30), "top1": train.probs[:, 0],
                         "topk": train.probs.sum(1)}).groupby("position").mean()
    spec = json.loads(at.get("plotly_chart")[1].proto.spec)
    lines = {t["name"]: {a: plotly_array(t[a]) for a in "xy"} for t in spec["data"]}
    np.testing.assert_array_equal(lines["Mean top-k mass"]["x"], want.index.to_numpy())
    np.testing.assert_allclose(lines["Mean top-k mass"]["y"], want["topk"], atol=1e-6)
    np.testing.assert_allclose(lines["Mean top-1 probability"]["y"], want["top1"], atol=1e-6)
    # one validation example, token by token, before and after the transform
    val = load_topk(topk / "val", layout=TOKENS)
    picker = at.selectbox(key="cov_example")
    assert picker.options == list(dict.fromkeys(val.example_ids))
    example = picker.options[3]
    picker.set_value(example).run()
    at.select_slider(key="cov_c").set_value(view_state.snap_temperature(0.5)).run()
    table = at.dataframe[-1].value
    rows = val.example_ids == example
    assert len(table) == rows.sum() and table["position"].tolist() == list(range(rows.sum()))
    after = softmax(val.probs[rows] / view_state.snap_temperature(0.5), axis=1)  # q = softmax(p/c)
    shown = [[float(x.rsplit(" ", 1)[1].rstrip("%")) / 100 for x in cell.split(", ")]
             for cell in table.iloc[:, -1]]
    np.testing.assert_allclose(shown, after, atol=5e-4)  # printed to 0.1 %
    tok = token_views.load_tokenizer(
        work / "runs" / "instruct-tiny" / "models" / "teacher_ft" / "final")
    assert table["token"].tolist() == [tok.decode([i]) for i in val.gold_ids[rows]]


def test_coverage_page_says_when_the_run_folder_is_elsewhere(monkeypatch, tiny_instruct_run,
                                                            tmp_path):
    import duckdb

    work, _ = tiny_instruct_run
    moved = tmp_path / "moved.duckdb"
    moved.write_bytes((work / "first.duckdb").read_bytes())
    with duckdb.connect(str(moved)) as con:
        con.execute("UPDATE runs SET config = json_merge_patch(config, ?)",
                    [json.dumps({"runs_dir": str(tmp_path / "not-here")})])
    at = open_app(monkeypatch, moved, "pages/coverage.py")
    assert not at.error and not at.exception
    assert [i.value for i in at.info if "is not on this machine" in i.value]
    assert at.get("plotly_chart")  # the store's own coverage curve still shows


# ---------------------------------------------------------------- issue 23 item 6: no markup

EVIL = '![i](http://x.example/i.png)<a href="https://x.example/">L</a>**B**'
EVIL_PIPELINE = f"p{EVIL}"
LINK_LABEL = '<a href="https://x.example/">A</a>'
MARKDOWN_KINDS = ("title", "header", "subheader", "markdown", "caption", "info", "warning",
                  "error", "success")


@pytest.fixture(scope="module")
def crafted_store(tmp_path_factory) -> Path:
    """A store whose text is hostile: a pipeline name (so every run id) and a teacher's gold
    label holding Markdown and HTML, and an import whose option columns are links."""
    import duckdb

    from first_core.importer import table as importer
    from first_core.fixtures import run_id

    folder = tmp_path_factory.mktemp("crafted")
    path = write_fixture_store(folder / "crafted.duckdb", 30, seed=2, pipeline=EVIL_PIPELINE)
    with duckdb.connect(str(path)) as con:
        con.execute("UPDATE predictions SET gold = ? WHERE run_id = ? AND split = 'test'",
                    [EVIL, run_id("teacher_ft", 2, EVIL_PIPELINE)])
    rows = [{f"p_{LINK_LABEL}": 0.7 - i / 100, "p_<b>B</b>": 0.2 + i / 100,
             "gold": LINK_LABEL if i % 3 else "<b>B</b>", "split": "test"} for i in range(30)]
    upload = folder / "links.jsonl"
    upload.write_text("".join(json.dumps(r) + "\n" for r in rows))
    importer.import_predictions(upload, "links", path)
    return path


def _rendered_markdown(at: AppTest) -> list[str]:
    return [e.value for kind in MARKDOWN_KINDS for e in getattr(at, kind)]


def _chart_strings(at: AppTest) -> list[str]:
    from helpers.text_walk import strings

    return [s for chart in at.get("plotly_chart") for s in strings(json.loads(chart.proto.spec))]


def assert_shown_as_text(at: AppTest) -> None:
    """No store text reached Markdown or Plotly as markup: no link, image, tag or bold."""
    for text in _rendered_markdown(at):
        assert "](http" not in text and not re.search(r"(?<!\\)<(a |b>)", text), text
        assert "**B**" not in text, text
    for text in _chart_strings(at):
        assert "<a " not in text and "<b>" not in text, text


@pytest.mark.parametrize("page", [p for p in PAGES if p != "pages/coverage.py"])
def test_store_text_is_never_rendered_as_markup(monkeypatch, crafted_store, page):
    at = open_app(monkeypatch, crafted_store, page)
    assert not at.exception
    assert_shown_as_text(at)


def test_crafted_gold_and_run_id_show_escaped(monkeypatch, crafted_store):
    at = open_app(monkeypatch, crafted_store, "pages/temperature.py")
    assert any(f"Gold answer: {for_markdown(EVIL)} (outlined)" in c.value for c in at.caption)
    at = open_app(monkeypatch, crafted_store, "pages/reliability.py")
    headers = [m.value for m in at.markdown if for_markdown(EVIL) in m.value]
    assert len(headers) == 2  # the two panels' headers name their runs, escaped
    assert_shown_as_text(at)


def test_imported_option_labels_are_text_in_the_examples_chart(monkeypatch, crafted_store):
    at = open_app(monkeypatch, crafted_store, "pages/examples.py")
    at.selectbox(key="ex_run").set_value("links/imported/seed0").run()
    at.selectbox(key="ex_filter").set_value("all").run()
    assert not at.exception
    spec = json.loads(at.get("plotly_chart")[0].proto.spec)
    assert list(spec["data"][0]["x"]) == ["&lt;a href=\"https://x.example/\"&gt;A&lt;/a&gt;",
                                          "&lt;b&gt;B&lt;/b&gt;"]
    assert_shown_as_text(at)


def test_an_uploaded_file_name_is_shown_as_text(monkeypatch, tmp_path):
    path = write_fixture_store(tmp_path / "up.duckdb", 20, seed=2)
    at = open_app(monkeypatch, path)
    name = "![u](http://x.example/up.png).csv"
    from helpers.uploads import submit_upload

    submit_upload(at, name, "up-llm")
    done = [s.value for s in at.success]
    assert len(done) == 1 and for_markdown(name) in done[0], done
    assert_shown_as_text(at)


# ---------------------------------------------------------------- issue 23 item 2

@pytest.fixture(scope="module")
def mixed_store(tmp_path_factory) -> Path:
    from helpers.mixed_configs import write_mixed_store

    return write_mixed_store(tmp_path_factory.mktemp("mixed") / "mixed.duckdb")


def _config_warning(at: AppTest) -> str:
    from helpers.mixed_configs import DIFFERING

    found = [w.value for w in at.warning if "different configs" in w.value]
    assert len(found) == 1, [w.value for w in at.warning]
    for key in DIFFERING:
        assert for_markdown(key) in found[0]
    return found[0]


def test_home_and_compare_keep_the_configs_of_one_pipeline_apart(monkeypatch, mixed_store):
    labels = {"demo [config A]", "demo [config B]"}
    at = open_app(monkeypatch, mixed_store)
    headline, shown_runs = at.dataframe[0].value, at.dataframe[1].value
    assert set(headline["pipeline"]) == labels and len(headline) == 10
    assert set(shown_runs["pipeline"]) == labels
    _config_warning(at)
    at.selectbox(key="home_pipeline").set_value("demo [config B]").run()
    assert set(at.dataframe[0].value["pipeline"]) == {"demo [config B]"}
    assert set(at.dataframe[1].value["seed"]) == {1}
    at = open_app(monkeypatch, mixed_store, "pages/compare.py")
    full = at.dataframe[1].value
    assert full.groupby("pipeline")["seeds"].max().to_dict() == {"demo [config A]": 2,
                                                                 "demo [config B]": 1}
    _config_warning(at)


# ---------------------------------------------------------------- issue 23 item 9 (dashboard)

class _Counted:
    """A DuckDB connection that records how many rows each query on `predictions` returned."""

    def __init__(self, con, log):
        self._con, self._log = con, log

    def __getattr__(self, name):
        return getattr(self._con, name)

    def _count(self, sql, result):
        if "predictions" in sql:
            self._log.append((sql, len(result)))
        return result

    def execute(self, sql, *params):
        return _CountedResult(self._con.execute(sql, *params), sql, self._count)

    def sql(self, query, **kwargs):  # a relation: counted where it is fetched
        return _CountedResult(self._con.sql(query, **kwargs), query, self._count)


class _CountedResult:
    """A result (or relation) whose fetches report their row count."""

    def __init__(self, result, sql, count):
        self._result, self._sql, self._count = result, sql, count

    def __getattr__(self, name):
        fetch = getattr(self._result, name)
        if name not in ("df", "fetchall", "to_arrow_table"):
            return fetch
        return lambda *a, **k: self._count(self._sql, fetch(*a, **k))


@pytest.fixture
def predictions_read(monkeypatch):
    """(sql, rows) of every query on the predictions table made while the test runs."""
    log: list[tuple[str, int]] = []
    connect = connection._connect
    monkeypatch.setattr(connection, "_connect", lambda *a, **k: _Counted(connect(*a, **k), log))
    return log


@pytest.fixture
def large_import(tmp_path) -> Path:
    """One imported run of 1,500 test predictions: more than the Examples page lists."""
    from first_core.importer import table as importer

    rng = np.random.default_rng(0)
    p = rng.dirichlet(np.ones(3), 1500)
    frame = pd.DataFrame({"p_A": p[:, 0], "p_B": p[:, 1], "p_C": p[:, 2],
                          "gold": rng.choice(list("ABC"), 1500), "split": "test"})
    frame.to_parquet(tmp_path / "big.parquet")
    importer.import_predictions(tmp_path / "big.parquet", "big", tmp_path / "big.duckdb")
    return tmp_path / "big.duckdb"


def test_examples_reads_a_bounded_number_of_rows_and_says_so(monkeypatch, large_import,
                                                            predictions_read):
    from first_core.store.prediction_reads import SHOWN_ROWS

    at = open_app(monkeypatch, large_import, "pages/examples.py")
    at.selectbox(key="ex_filter").set_value("all").run()
    assert not at.exception and not at.error
    assert SHOWN_ROWS < 1500
    listed = at.dataframe[0].value
    assert len(listed) == SHOWN_ROWS
    assert listed["confidence_option"].is_monotonic_decreasing  # the most confident first
    assert any("**1,500** of 1,500 predictions match. Only the first 1,000" in m.value
               for m in at.markdown)
    reads = [rows for sql, rows in predictions_read if "DISTINCT" not in sql]
    assert reads and max(reads) <= SHOWN_ROWS, predictions_read


def test_a_reliability_bin_reads_only_its_listed_rows(monkeypatch, large_import,
                                                      predictions_read):
    at = open_app(monkeypatch, large_import, "pages/reliability.py",
                  {"runs": "big/imported/seed0", "split": "test", "conv": "option",
                   "bins": "5", "bin": "2", "panel": "0"})
    table = drilldown(at)
    assert table is not None and 0 < len(table) <= 500
    # the arrays read every row once (the cards are over all of them); nothing else does
    whole = [rows for sql, rows in predictions_read if "list_position" in sql]
    rest = [rows for sql, rows in predictions_read
            if "list_position" not in sql and "DISTINCT" not in sql]
    assert whole == [1500] and rest and max(rest) <= 500, predictions_read


# ---------------------------------------------------------------- a real vocabulary (issue 22)

@pytest.fixture(scope="module")
def pretrained_store(tmp_path_factory) -> tuple[Path, str]:
    """The fixture store (a 32k teacher) plus, stored after it, a pretrained model's zero-shot
    coverage over 49,152 tokens, as the demo's last step writes one."""
    path = write_fixture_store(tmp_path_factory.mktemp("pretrained") / "p.duckdb", 40, seed=2)
    return path, write_pretrained_coverage(path)


def test_coverage_page_opens_on_the_largest_vocabulary_and_says_what_it_is(monkeypatch,
                                                                           pretrained_store):
    path, run = pretrained_store
    at = open_app(monkeypatch, path, "pages/coverage.py")
    assert not at.error, [e.value for e in at.error]
    assert at.selectbox(key="cov_run").value == run
    assert at.number_input(key="cov_vocab").value == 49_152
    said = " ".join(i.value for i in at.info)
    assert "pretrained model read zero-shot" in said and "not the fine-tuned teacher" in said
    assert [t.value for t in at.text if PRETRAINED_MODEL in t.value]
    teacher = next(r for r in at.selectbox(key="cov_run").options if "teacher_ft" in r)
    at.selectbox(key="cov_run").set_value(teacher.rsplit(": ", 1)[1]).run()
    said = " ".join(i.value for i in at.info)
    assert "fine-tuned teacher" in said and "zero-shot" not in said
    assert at.number_input(key="cov_vocab").value == 32_000  # the picked run's own count


@pytest.mark.parametrize("page", list(PAGES))
def test_every_page_renders_beside_a_run_without_predictions(monkeypatch, pretrained_store,
                                                             page):
    at = open_app(monkeypatch, pretrained_store[0], page)
    assert not at.error, [e.value for e in at.error]


# ---------------------------------------------------------------- crafted run folders (issue 23)

def store_with_config(source: Path, to: Path, **patch) -> Path:
    """A copy of the `source` store whose runs' stored configs are changed by `patch`."""
    import duckdb

    to.parent.mkdir(parents=True, exist_ok=True)
    to.write_bytes(source.read_bytes())
    with duckdb.connect(str(to)) as con:
        con.execute("UPDATE runs SET config = json_merge_patch(config, ?)", [json.dumps(patch)])
    return to


def copied_run(work: Path, to: Path, **patch) -> Path:
    """A copy of the tiny instruction run's folder, its config.json changed by `patch` (so it
    is, by its content, the folder of a run stored with that config)."""
    import shutil

    shutil.copytree(work / "runs" / "instruct-tiny", to)
    config = json.loads((to / "config.json").read_text())
    (to / "config.json").write_text(json.dumps({**config, **patch}))
    return to


def rendered_as_markdown(at: AppTest) -> list[str]:
    return [m.value for m in [*at.markdown, *at.caption, *at.info, *at.warning, *at.error,
                              *at.success, *at.subheader]]


def test_coverage_page_shows_a_crafted_run_name_as_plain_text(monkeypatch, tiny_instruct_run,
                                                              tmp_path):
    work, _ = tiny_instruct_run
    name = "x` ![](http://tracker.invalid/y.png) **bold** `"
    at = open_app(monkeypatch, store_with_config(work / "first.duckdb", tmp_path / "s.duckdb",
                                             name=name), "pages/coverage.py")
    assert not [m for m in rendered_as_markdown(at) if "tracker.invalid" in m]
    assert [t.value for t in at.text if "tracker.invalid" in t.value]  # said, as plain text


@pytest.mark.parametrize("layout", ["absolute path elsewhere", "dot-dot name",
                                    "symlink out of runs_dir", "another run's folder"])
def test_coverage_page_reads_only_the_stores_own_run_folders(monkeypatch, tiny_instruct_run,
                                                             tmp_path, layout):
    """The stored config names a folder holding a real run (top-k stores and a tokenizer);
    the page reads it only where the store's own run wrote it."""
    work, _ = tiny_instruct_run
    here, runs = tmp_path / "s", tmp_path / "s" / "runs"
    if layout == "absolute path elsewhere":
        runs = tmp_path / "elsewhere" / "runs"
        copied_run(work, runs / "instruct-tiny", runs_dir=str(runs))
        patch = {"runs_dir": str(runs)}
    elif layout == "dot-dot name":
        copied_run(work, here / "other", runs_dir=str(runs), name="../other")
        patch = {"runs_dir": str(runs), "name": "../other"}
    elif layout == "symlink out of runs_dir":
        outside = copied_run(work, tmp_path / "outside", runs_dir=str(runs))
        runs.mkdir(parents=True)
        (runs / "instruct-tiny").symlink_to(outside)
        patch = {"runs_dir": str(runs)}
    else:  # inside the store's folder, but written for another config
        copied_run(work, runs / "instruct-tiny")
        patch = {"runs_dir": str(runs)}
    at = open_app(monkeypatch, store_with_config(work / "first.duckdb", here / "s.duckdb", **patch),
                  "pages/coverage.py")
    assert [w.value for w in at.warning if w.value.startswith("Not read")]
    assert len(at.get("plotly_chart")) == 1  # the store's own curve, no per-token chart
    assert not at.dataframe or "token" not in at.dataframe[-1].value


def test_coverage_page_reads_a_run_folder_kept_beside_its_store(monkeypatch, tiny_instruct_run,
                                                                tmp_path):
    """The same copies, laid out as a moved experiment (store and runs/ side by side): read."""
    work, _ = tiny_instruct_run
    runs = tmp_path / "s" / "runs"
    copied_run(work, runs / "instruct-tiny", runs_dir=str(runs))
    at = open_app(monkeypatch, store_with_config(work / "first.duckdb", tmp_path / "s" / "s.duckdb",
                                             runs_dir=str(runs)), "pages/coverage.py")
    assert not at.warning and not at.error
    assert len(at.get("plotly_chart")) == 2 and "token" in at.dataframe[-1].value


def test_coverage_page_says_an_unreadable_run_folder_in_plain_text(monkeypatch,
                                                                   tiny_instruct_run, tmp_path):
    """The store's own run folder, under a path that reads as Markdown, with a shard cut short:
    the error names the path as plain text."""
    work, _ = tiny_instruct_run
    here = tmp_path / "x`**bold**`![img](http:tracker.invalid)"
    runs = here / "runs"
    folder = copied_run(work, runs / "instruct-tiny", runs_dir=str(runs))
    shard = sorted((folder / "topk" / "train").glob("part-*.parquet"))[0]
    shard.write_bytes(shard.read_bytes()[:100])
    at = open_app(monkeypatch, store_with_config(work / "first.duckdb", here / "s.duckdb",
                                             runs_dir=str(runs)), "pages/coverage.py")
    assert [e.value for e in at.error if "could not be read" in e.value]
    assert not [m for m in rendered_as_markdown(at) if "tracker.invalid" in m]
    assert [t.value for t in at.text if "tracker.invalid" in t.value]


# ---------------------------------------------------------------- issue 29: lm-eval uploads

LM_EVAL_RUN = ROOT / "tests" / "fixtures" / "lm_eval" / "real-0.4.13"


def test_an_lm_eval_folder_uploaded_as_zip_opens_on_reliability(monkeypatch, tmp_path):
    import io
    import zipfile

    path = write_fixture_store(tmp_path / "up.duckdb", 20, seed=2)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as z:
        for p in LM_EVAL_RUN.rglob("*"):
            z.write(p, Path("out") / p.relative_to(LM_EVAL_RUN))
    at = open_app(monkeypatch, path)
    at.file_uploader(key="import_file").set_value(("out.zip", buffer.getvalue(),
                                                   "application/zip"))
    at.get("form_submit_button")[0].click().run()
    assert not at.exception
    done = [s.value for s in at.success]
    assert len(done) == 2 and "as pipeline csqa\\_local " in done[0], done
    at = open_app(monkeypatch, path, "pages/reliability.py",
                  {"runs": "csqa_local/imported/seed0", "split": "test"})
    assert len(ece_shown(at)) == 1 and not at.error, [e.value for e in at.error]
    ece = load_metrics(path, "csqa_local/imported/seed0", split="test",
                       convention="paper", metric="ece")["value"].item()
    assert ece_shown(at)[0].startswith(f"{100 * ece:.1f}%"), ece_shown(at)
    at = open_app(monkeypatch, path, "pages/examples.py")
    at.selectbox(key="ex_run").set_value("csqa_local-acc_norm/imported/seed0").run()
    assert not at.exception and not at.error
    at = open_app(monkeypatch, path, "pages/compare.py")
    assert not at.exception and not at.error


def test_an_lm_eval_runs_files_uploaded_together_import_like_the_folder(monkeypatch,
                                                                        tmp_path):
    path = write_fixture_store(tmp_path / "up.duckdb", 20, seed=2)
    files = [(p.name, p.read_bytes(), "application/json")
             for p in sorted(LM_EVAL_RUN.rglob("*.json*"))]
    at = open_app(monkeypatch, path)
    at.file_uploader(key="import_file").set_value(files)
    at.get("form_submit_button")[0].click().run()
    assert not at.exception and len(at.success) == 2, [e.value for e in at.error]
    runs = list_runs(path).set_index("pipeline")
    assert runs.loc["csqa_local", "model"].endswith("SmolLM2-135M-Instruct.Q4_1-3776ab9f")
    bad = [(files[1][0], files[1][1].replace(b'"target": "4", ', b"", 1), "text/plain")]
    at.file_uploader(key="import_file").set_value(bad)
    at.get("form_submit_button")[0].click().run()
    assert [c.value for c in at.code if c.value.startswith(f"{files[1][0]}:1: target: missing")]
