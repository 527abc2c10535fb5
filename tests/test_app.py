"""Every dashboard page, run in-process with Streamlit's AppTest on a fixture store."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from first_core import store, views
from first_core.fixtures import write_fixture_store

ROOT = Path(__file__).resolve().parents[1]
APP = ROOT / "app.py"
PAGES = {  # page -> labels of widgets that must be there
    "pages/home.py": {"radio": ["Confidence convention"]},
    "pages/reliability.py": {"select_slider": ["Temperature c (log scale)"],
                             "button": ["Best c on validation"], "slider": ["Bins"],
                             "multiselect": ["Runs (up to two, side by side)"]},
    "pages/coverage.py": {"number_input": ["Token positions in the data set", "Vocabulary size"],
                          "selectbox": ["Teacher run", "Probability dtype"]},
    "pages/temperature.py": {"selectbox": ["Teacher run", "Example"], "select_slider": ["c"]},
    "pages/compare.py": {"radio": ["Confidence"], "multiselect": ["Splits"]},
    "pages/examples.py": {"selectbox": ["Run", "Split", "Show", "Look at"]},
    "pages/learn.py": {"slider": ["Accuracy of the simulated classifier"],
                       "select_slider": ["Temperature c"]},
}


@pytest.fixture(scope="module")
def fixture_store(tmp_path_factory) -> Path:
    return write_fixture_store(tmp_path_factory.mktemp("app") / "fixture.duckdb", 60, seed=2)


def open_app(monkeypatch, store_path: Path | str, page: str | None = None,
             query: dict[str, str] | None = None) -> AppTest:
    """Run app.py against `store_path` (via $FIRST_STORE), optionally on another page."""
    monkeypatch.syspath_prepend(str(ROOT))
    monkeypatch.setenv(store.STORE_ENV, str(store_path))
    at = AppTest.from_file(str(APP), default_timeout=60).run()
    if page:
        if query:
            at.query_params.update(query)
        at.switch_page(page).run()
    assert not at.exception, [e.value for e in at.exception]
    return at


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
    assert any(str(fixture_store) in c.value for c in at.caption)
    headline = at.dataframe[0].value
    assert set(headline["method"]) == set(store.list_runs(fixture_store)["method"])
    assert {"Acc ID", "ECE ID", "Trust ID", "Acc OOD", "ECE OOD", "Trust OOD"} <= set(headline)
    assert labels(at.download_button)[:1] == ["Download CSV"]


def test_moving_the_temperature_slider_changes_the_ece(monkeypatch, fixture_store):
    at = open_app(monkeypatch, fixture_store, "pages/reliability.py")
    before = ece_shown(at)
    assert before and all(re.fullmatch(r"\d+\.\d% \[\d+\.\d, \d+\.\d\]", v) for v in before)
    at.radio(key="rel_mode").set_value("first").run()
    at.select_slider(key="rel_c").set_value(views.snap_temperature(0.3)).run()
    after = ece_shown(at)
    assert after != before
    assert at.query_params["c"] == "0.299" and at.query_params["mode"] == "first"


def test_best_c_button_snaps_to_the_validation_optimum(monkeypatch, fixture_store):
    at = open_app(monkeypatch, fixture_store, "pages/reliability.py")
    run_id = at.multiselect(key="rel_runs").value[0]
    at.button(key="rel_best").click().run()
    frame = store.load_predictions(fixture_store, run_id, "val",
                                   columns=views.PREDICTION_COLUMNS)
    expected = views.best_temperature(views.prediction_arrays(frame), "logit", "option", 10,
                                      "uniform")
    assert at.select_slider(key="rel_c").value == expected


def test_a_url_reproduces_a_view(monkeypatch, fixture_store):
    runs = store.list_runs(fixture_store)["run_id"].tolist()
    query = {"runs": f"{runs[1]},{runs[2]}", "split": "test_ood", "c": "0.3", "mode": "first",
             "conv": "paper", "bins": "15", "strategy": "quantile"}
    at = open_app(monkeypatch, fixture_store, "pages/reliability.py", query)
    assert at.multiselect(key="rel_runs").value == runs[1:3]
    assert at.select_slider(key="rel_c").value == views.snap_temperature(0.3)
    assert at.slider(key="rel_bins").value == 15
    assert (at.selectbox(key="rel_split").value, at.radio(key="rel_strategy").value) == \
        ("test_ood", "quantile")
    assert len(ece_shown(at)) == 2  # two runs side by side


@pytest.mark.parametrize("page", [p for p in PAGES if p != "pages/learn.py"])
def test_missing_store_shows_the_command(monkeypatch, tmp_path, page):
    at = open_app(monkeypatch, tmp_path / "nothing.duckdb", page)
    assert "python -m first_core demo" in [c.value for c in at.code]


def test_empty_store_shows_the_command_and_the_demo_button(monkeypatch, tmp_path):
    store.Store(tmp_path / "empty.duckdb")
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
    assert any(str((tmp_path / "data" / "other.duckdb").resolve()) in c.value
               for c in at.caption)
    assert at.dataframe  # the picked store's headline


def test_learn_page_needs_no_store_and_moves_with_its_sliders(monkeypatch, tmp_path):
    at = open_app(monkeypatch, tmp_path / "none.duckdb", "pages/learn.py")
    before = [m.value for m in at.metric if m.label == "ECE"]
    at.slider(key="learn_s").set_value(3.0).run()
    after = [m.value for m in at.metric if m.label == "ECE"]
    assert after[0] != before[0]
    at.select_slider(key="learn_c").set_value(views.snap_temperature(3.0)).run()  # c ~ s undoes it
    fixed = [m.value for m in at.metric if m.label == "ECE"]
    assert float(fixed[1].rstrip("%")) < float(fixed[0].rstrip("%"))
    assert len(at.latex) >= 4
