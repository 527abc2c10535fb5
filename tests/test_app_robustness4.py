"""Issue 30 on the dashboard (AppTest, as a user meets it): Home's upload box with a file
name longer than the file system allows, and the Top-k coverage page on crafted stores.
docs/ROBUSTNESS.md ("Issue 30") lists the cases."""

from __future__ import annotations

from test_app import open_app

from first_core import store
from first_core.fixtures import write_fixture_store


def test_an_upload_named_over_255_bytes_is_imported(monkeypatch, tmp_path):
    path = write_fixture_store(tmp_path / "up.duckdb", 20, seed=2)
    at = open_app(monkeypatch, path)
    name = "予測" * 60 + ".csv"  # 120 CJK characters: 360 bytes in UTF-8
    good = b"example_id,split,p_A,p_B,gold\n" + b"".join(
        f"e{i},test,{0.9 - i / 50:.3f},{0.05 + i / 60:.3f},{'AB'[i % 3 == 0]}\n".encode()
        for i in range(20))
    at.file_uploader(key="import_file").set_value((name, good, "text/csv"))
    at.text_input(key="import_name").set_value("long-name")
    at.get("form_submit_button")[0].click().run()
    assert not at.exception
    assert any("Imported 20 predictions" in s.value for s in at.success), \
        [e.value for e in at.error] + [c.value for c in at.code]
    assert "long-name" in set(store.list_runs(path)["pipeline"])


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
