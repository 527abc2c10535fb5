"""Issue 30 on the dashboard (AppTest, as a user meets it): Home's upload box with a file
name longer than the file system allows, and the Top-k coverage page on crafted stores.
docs/ROBUSTNESS.md ("Issue 30") lists the cases."""

from __future__ import annotations

import pytest
from test_app import open_app

from first_core.store.reads import list_runs
from first_core.fixtures import write_fixture_store


def test_an_upload_named_over_255_bytes_is_imported(monkeypatch, tmp_path):
    path = write_fixture_store(tmp_path / "up.duckdb", 20, seed=2)
    at = open_app(monkeypatch, path)
    name = "予測" * 60 + ".csv"  # 120 CJK characters: 360 bytes in UTF-8
    from helpers.uploads import submit_upload

    submit_upload(at, name, "long-name")
    assert not at.exception
    assert any("Imported 20 predictions" in s.value for s in at.success), \
        [e.value for e in at.error] + [c.value for c in at.code]
    assert "long-name" in set(list_runs(path)["pipeline"])


def test_a_bad_upload_with_a_long_name_names_the_users_file(monkeypatch, tmp_path):
    path = write_fixture_store(tmp_path / "up.duckdb", 20, seed=2)
    at = open_app(monkeypatch, path)
    name = "予測" * 60 + ".csv"
    at.file_uploader(key="import_file").set_value((name, b"p_A,p_B,gold\n0.5,oops,B\n",
                                                   "text/csv"))
    at.text_input(key="import_name").set_value("long-name")
    at.get("form_submit_button")[0].click().run()
    assert not at.exception
    assert [c.value for c in at.code if f"{name}:2: p_B" in c.value]


def crafted_store(tmp_path, config) -> object:
    """A fixture store whose every run's stored config is `config` (a store is data: one
    handed to you can say anything there)."""
    import json

    import duckdb
    path = write_fixture_store(tmp_path / "s.duckdb", 20, seed=2)
    with duckdb.connect(str(path)) as con:
        con.execute("UPDATE runs SET config = ?", [json.dumps(config)])
    return path


@pytest.mark.parametrize("case", ["NUL in name", "NUL in runs_dir", "300-character name",
                                  "data a list", "data a string", "config a list"])
def test_coverage_page_survives_a_crafted_store(monkeypatch, tmp_path, case):
    runs = str(tmp_path / "runs")
    instruct = {"kind": "instruct"}
    config = {"NUL in name": {"name": "a\x00b", "runs_dir": runs, "data": instruct},
              "NUL in runs_dir": {"name": "a", "runs_dir": runs + "\x00x", "data": instruct},
              "300-character name": {"name": "n" * 300, "runs_dir": runs, "data": instruct},
              "data a list": {"name": "a", "runs_dir": runs, "data": [1, 2]},
              "data a string": {"name": "a", "runs_dir": runs, "data": "instruct"},
              "config a list": [1, {"data": instruct}]}[case]
    at = open_app(monkeypatch, crafted_store(tmp_path, config), "pages/coverage.py")
    assert not at.exception, [e.value for e in at.exception]
    assert at.get("plotly_chart")  # the store's own coverage curve still shows
    if case.startswith("NUL"):
        assert [w.value for w in at.warning if w.value.startswith("Not read")]
    if case.startswith("300"):  # no folder can have that name
        assert [i.value for i in at.info if "not on this machine" in i.value]


def test_a_negative_zero_threshold_in_the_url_shows_as_zero(monkeypatch, tmp_path):
    path = write_fixture_store(tmp_path / "s.duckdb", 20, seed=2)
    at = open_app(monkeypatch, path, "pages/reliability.py", {"t": "-0"})
    shown = [m.value for m in at.markdown if "answer when it is" in m.value]
    assert shown and "≥ 0," in shown[0] and "-0" not in shown[0]
    assert at.query_params["t"] != "-0"
