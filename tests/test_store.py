"""The DuckDB store: roundtrips, atomic replace, refusals, safe paths, and two real processes."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import threading
import time
from datetime import datetime
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pytest

from first_core.config.settings import METHODS
from first_core.store.connection import open_readonly
from first_core.store.paths import default_store_path, list_store_files, safe_store_path
from first_core.store.reads import (available_splits, list_runs, load_examples, load_metrics,
                                    load_predictions, load_temperature_search, load_topk_coverage)
from first_core.store.schema import SCHEMA_VERSION, SPLITS, RunRecord
from first_core.store.writes import Store
from first_core.errors import StoreError

SPAWN = mp.get_context("spawn")


def _predictions(n: int, split: str = "test", seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    probs = rng.dirichlet(np.ones(5), n)
    return pd.DataFrame({
        "split": split, "example_id": [f"{split}-{i}" for i in range(n)],
        "gold": rng.choice(list("ABCD"), n), "pred": rng.choice(list("ABCD"), n),
        "confidence": probs.max(1), "correct": rng.random(n) < 0.5,
        "pred_option": rng.choice(list("ABCD"), n), "confidence_option": probs[:, 0],
        "correct_option": rng.random(n) < 0.5, "option_labels": [list("ABCD")] * n,
        "option_probs": list(probs[:, :4]), "topk_ids": list(rng.integers(0, 999, (n, 5))),
        "topk_probs": list(np.sort(probs, 1)[:, ::-1]),
        "topk_tokens": [[" A", " B", " the", "\n", " C"]] * n,
    })


def _metrics(value: float = 0.5) -> pd.DataFrame:
    return pd.DataFrame({"split": ["test", "test", "val"],
                         "convention": ["paper", "option", "paper"],
                         "metric": ["accuracy", "ece", "trust"], "value": [value, 0.1, value - 0.1],
                         "ci_low": [None, 0.05, None], "ci_high": [None, 0.15, None]})


def _run(run_id: str = "r1", method: str = "student_ft", **kw) -> RunRecord:
    return RunRecord(run_id=run_id, method=method, model="tiny-student", dataset="d", seed=3,
                     config={"n": 1, **kw.pop("config", {})},
                     created_at=datetime(2024, 1, 2, 3, 4, 5), pipeline="p", **kw)


def _records(frame: pd.DataFrame) -> list[dict]:
    """Rows with arrays turned into lists and NaN into None, for exact comparison."""
    def norm(v):
        if isinstance(v, (np.ndarray, list)):
            return [norm(x) for x in v]
        if isinstance(v, (np.generic,)):
            v = v.item()
        return None if v is None or (isinstance(v, float) and np.isnan(v)) else v
    return [{k: norm(v) for k, v in row.items()} for row in frame.to_dict("records")]


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "data" / "first.duckdb"


# ------------------------------------------------------------------ roundtrips

def test_write_run_roundtrip(path: Path) -> None:
    preds, mets = _predictions(7), _metrics()
    Store(path).write_run(_run(temperature=0.3, config={"lr": 0.1}), preds, mets)
    with open_readonly(path) as con:
        runs = list_runs(con)
        got = load_predictions(con, ["r1"], "test")
        got_m = load_metrics(con, "r1")
    row = _records(runs)[0]
    assert json.loads(row.pop("config")) == {"lr": 0.1, "n": 1}
    assert row == {"run_id": "r1", "method": "student_ft", "model": "tiny-student", "dataset": "d",
                   "seed": 3, "temperature": 0.3, "smoothing": None,
                   "created_at": pd.Timestamp("2024-01-02 03:04:05"), "pipeline": "p"}
    expected = preds.assign(run_id="r1")[got.columns].sort_values("example_id")
    assert _records(got) == _records(expected)
    assert got.topk_ids.map(len).eq(5).all()
    expected_m = mets.assign(run_id="r1", method="student_ft", model="tiny-student", dataset="d",
                             seed=3)
    key = ["split", "convention", "metric"]
    assert _records(got_m.sort_values(key).reset_index(drop=True)) == _records(
        expected_m[got_m.columns].sort_values(key).reset_index(drop=True))


def test_side_tables_roundtrip_and_replace_by_key(path: Path) -> None:
    st = Store(path)
    ts = pd.DataFrame({"run_id": "t", "kind": ["TS"] * 3 + ["LS"] * 2,
                       "value": [0.1, 0.3, 1.0, 0.0, 0.1], "ece_val": [0.2, 0.05, 0.3, 0.2, 0.1],
                       "ece_test": [0.21, 0.06, 0.31, 0.2, 0.1],
                       "chosen": [False, True, False, False, True]})
    cov = pd.DataFrame({"run_id": "t", "k": [1, 2, 3], "mean": [0.5, 0.7, 0.8],
                        "p10": [0.1, 0.2, 0.3], "p50": [0.5, 0.7, 0.8], "p90": [0.9, 0.95, 0.99],
                        "bytes_per_position": [6.0, 12.0, 18.0],
                        "full_bytes_per_position": 64000.0, "n_positions": 10**10,
                        "vocab_size": 32000})
    ex = pd.DataFrame({"dataset": "d", "split": ["val", "test"], "example_id": ["v0", "t0"],
                       "question": ["q 'v'; DROP TABLE runs", "q t"], "context": [None, "p"],
                       "labels": [["A", "B"], ["A", "B", "C"]],
                       "choices": [["x", "y"], ["x", "y", "z"]], "answer": ["B", "C"]})
    for _ in range(2):  # a re-run replaces, never duplicates
        st.write_temperature_search(ts)
        st.write_topk_coverage(cov)
        st.write_examples(ex)
    assert _records(load_temperature_search(path)) == _records(
        ts.sort_values(["kind", "value"]).reset_index(drop=True))
    assert _records(load_topk_coverage(path, "t")) == _records(cov)
    assert _records(load_examples(path, dataset="d")) == _records(
        ex.sort_values("split").reset_index(drop=True))
    assert _records(load_examples(path, ["t0"])) == _records(ex.iloc[[1]])

    # replacing the TS curve keeps the LS one; replacing one split keeps the other
    st.write_temperature_search(ts[ts.kind == "TS"].iloc[:1])
    assert load_temperature_search(path).kind.tolist() == ["LS", "LS", "TS"]
    st.write_examples(ex.iloc[[0]].assign(question="new"))
    assert load_examples(path).question.tolist() == ["q t", "new"]
    assert load_temperature_search(path, kind="LS").value.tolist() == [0.0, 0.1]


def test_replace_run_is_atomic(path: Path) -> None:
    st = Store(path)
    st.write_run(_run(), _predictions(5), _metrics(0.5))
    st.write_run(_run(method="first_ts", temperature=0.3), _predictions(3, "val"), _metrics(0.9))
    runs = list_runs(path)
    assert runs.method.tolist() == ["first_ts"]
    assert load_predictions(path, "r1").example_id.tolist() == ["val-0", "val-1", "val-2"]
    assert load_metrics(path, "r1", metric="accuracy").value.tolist() == [0.9]

    # a write that fails inside the transaction (a value DuckDB cannot cast) leaves the old run
    bad = _predictions(4).astype({"confidence": object})
    bad.loc[2, "confidence"] = "not a number"
    with pytest.raises(duckdb.Error):
        st.write_run(_run(method="teacher_ft"), bad, _metrics(0.1))
    assert list_runs(path).method.tolist() == ["first_ts"]
    assert len(load_predictions(path, "r1")) == 3
    assert load_metrics(path, "r1", metric="accuracy").value.tolist() == [0.9]


def test_filters_are_bound_not_formatted(path: Path) -> None:
    st = Store(path)
    st.write_run(_run("a"), _predictions(2), _metrics())
    st.write_run(_run("b", method="first_ls", smoothing=0.1), _predictions(3, "val"), _metrics())
    assert len(load_predictions(path, "a' OR '1'='1")) == 0
    assert len(load_predictions(path, ["a", "b"])) == 5
    assert load_predictions(path, split="val").run_id.unique().tolist() == ["b"]
    assert list_runs(path, method="first_ls").run_id.tolist() == ["b"]
    assert available_splits(path) == ["val", "test"]
    assert available_splits(path, "a") == ["test"]
    assert load_predictions(path, "a", columns=["example_id", "confidence"]).shape == (2, 2)
    with pytest.raises(ValueError, match="no column"):
        load_predictions(path, columns=["confidence; DROP TABLE runs"])


@pytest.mark.parametrize("change, match", [
    (lambda f: f.assign(extra=1), r"predictions: unknown column\(s\) \['extra'\]"),
    (lambda f: f.drop(columns="gold"), r"predictions: missing required column\(s\) \['gold'\]"),
    (lambda f: f.assign(split="train"), r"predictions.split: \['train'\] not in"),
    (lambda f: f.assign(example_id="same"), "predictions: duplicate rows for key"),
    (lambda f: f.assign(run_id="other"), "predictions.run_id: every row must be 'r1'"),
    (lambda f: f.assign(example_id=[None, "x"]), r"predictions.example_id: has missing values"),
])
def test_bad_frames_are_refused_before_writing(path: Path, change, match) -> None:
    st = Store(path)
    with pytest.raises(ValueError, match=match):
        st.write_run(_run(), change(_predictions(2)), _metrics())
    assert list_runs(path).empty


def test_bad_run_record() -> None:
    with pytest.raises(ValueError, match="RunRecord.method"):
        _run(method="teacher")
    with pytest.raises(ValueError, match="RunRecord.temperature"):
        _run(temperature=float("nan"))


# ------------------------------------------------------------------ refusals

def test_newer_schema_is_refused(path: Path) -> None:
    Store(path)
    with duckdb.connect(str(path)) as con:
        con.execute("UPDATE meta SET value = '7' WHERE key = 'schema_version'")
    for opener in (lambda: list_runs(path), lambda: Store(path)):
        with pytest.raises(StoreError) as err:
            opener()
        assert str(path) in str(err.value)
        assert "schema version 7" in str(err.value)
        assert f"version {SCHEMA_VERSION}" in str(err.value)


@pytest.mark.parametrize("content", [os.urandom(4096), b"run_id,method\nr1,student_ft\n", b""])
def test_non_duckdb_file_is_refused(tmp_path: Path, content: bytes) -> None:
    bad = tmp_path / "bad.duckdb"
    bad.write_bytes(content)
    for opener in (lambda: list_runs(bad), lambda: Store(bad)):
        with pytest.raises(StoreError, match="not a DuckDB database file") as err:
            opener()
        assert str(bad) in str(err.value)
    assert bad.read_bytes() == content  # left untouched


def test_duckdb_file_without_schema(tmp_path: Path) -> None:
    other = tmp_path / "other.duckdb"
    duckdb.connect(str(other)).close()
    with pytest.raises(StoreError, match="not a first-lab store"):
        list_runs(other)
    with duckdb.connect(str(other)) as con:
        con.execute("CREATE TABLE theirs (x INTEGER)")
    with pytest.raises(StoreError, match="not a first-lab store"):
        Store(other)  # never add our tables to someone else's database
    duckdb.connect(str(tmp_path / "empty.duckdb")).close()
    Store(tmp_path / "empty.duckdb")  # an empty database (a first open that crashed) is fine
    assert list_runs(tmp_path / "empty.duckdb").empty


def test_missing_store_says_how_to_create_it(tmp_path: Path) -> None:
    missing = tmp_path / "nope.duckdb"
    with pytest.raises(StoreError) as err:
        list_runs(missing)
    msg = str(err.value)
    assert str(missing) in msg and "does not exist" in msg
    assert "python -m first_core demo" in msg and "configs/demo.toml" in msg
    assert not missing.exists()


# ------------------------------------------------------------------ paths

def test_default_store_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FIRST_STORE", raising=False)
    assert default_store_path() == Path("data/first.duckdb")
    monkeypatch.setenv("FIRST_STORE", "/tmp/env.duckdb")
    assert default_store_path() == Path("/tmp/env.duckdb")
    assert default_store_path("x.duckdb") == Path("x.duckdb")


def test_safe_store_path(tmp_path: Path) -> None:
    root, outside = tmp_path / "data", tmp_path / "secret"
    (root / "sub").mkdir(parents=True)
    outside.mkdir()
    (outside / "s.duckdb").write_bytes(b"")
    (root / "a.duckdb").write_bytes(b"")
    (root / "sub" / "b.duckdb").write_bytes(b"")
    (root / "link.duckdb").symlink_to(outside / "s.duckdb")
    (root / "dirlink").symlink_to(outside)
    (root / "notes.txt").write_text("x")

    assert safe_store_path("a.duckdb", root) == (root / "a.duckdb").resolve()
    assert safe_store_path("sub/b.duckdb", root) == (root / "sub" / "b.duckdb").resolve()
    for name in ("../secret/s.duckdb", "sub/../../secret/s.duckdb", str(outside / "s.duckdb"),
                 "link.duckdb", "dirlink/s.duckdb"):
        with pytest.raises(StoreError, match="outside the allowed folder"):
            safe_store_path(name, root)
    for name in ("notes.txt", "a.duckdb.wal", "sub"):
        with pytest.raises(StoreError, match=r"only \*.duckdb"):
            safe_store_path(name, root)
    assert list_store_files(root) == sorted([(root / "a.duckdb").resolve(),
                                             (root / "sub" / "b.duckdb").resolve()])
    assert list_store_files(tmp_path / "absent") == []


# ------------------------------------------------------------------ concurrency

def _hold_write_lock(path: str, ready, release) -> None:
    con = duckdb.connect(path)
    ready.set()
    release.wait(20)
    con.close()


def test_reader_waits_for_a_writer_then_says_run_in_progress(path: Path) -> None:
    Store(path).write_run(_run(), _predictions(2), _metrics())
    ready, release = SPAWN.Event(), SPAWN.Event()
    holder = SPAWN.Process(target=_hold_write_lock, args=(str(path), ready, release))
    holder.start()
    try:
        assert ready.wait(30)
        t0 = time.monotonic()
        with pytest.raises(StoreError, match="run in progress") as err:
            with open_readonly(path, timeout=0.3):
                pass
        assert str(path) in str(err.value) and time.monotonic() - t0 >= 0.3
        with pytest.raises(StoreError, match="locked by another process"):
            Store(path, timeout=0.2)
        threading.Timer(0.3, release.set).start()  # the "run" ends while the reader retries
        with open_readonly(path, timeout=20) as con:
            assert list_runs(con).run_id.tolist() == ["r1"]
    finally:
        release.set()
        holder.join(30)


def _rows_for(i: int) -> int:
    return 1 + (i * 37) % 60


def _writer(path: str, n_writes: int, done) -> None:
    """Append and replace runs in short transactions, like a pipeline's store stage."""
    st = Store(path)
    for i in range(n_writes):
        n = _rows_for(i)
        run = _run(f"r{i % 6}", config={"n": n})  # ids repeat: replaces happen under the reader
        st.write_run(run, _predictions(n, seed=i), _metrics())
        time.sleep(0.005)
    done.set()


def _reader(path: str, done, out) -> None:
    """Query in a loop through the retrying read-only API; report reads, torn runs, errors."""
    reads, torn, last = 0, [], None
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            finished = done.is_set()
            with open_readonly(path, timeout=10) as con:
                runs = list_runs(con)
                counts = load_predictions(con, columns=["run_id"]).run_id.value_counts()
            expected = {r: json.loads(c)["n"] for r, c in zip(runs.run_id, runs.config)}
            torn += [(r, n, int(counts.get(r, 0))) for r, n in expected.items()
                     if counts.get(r, 0) != n]
            reads, last = reads + 1, expected
            if finished:
                break
            time.sleep(0.01)  # a dashboard rerenders, it does not spin
        out.put({"reads": reads, "torn": torn, "last": last, "error": None})
    except Exception as exc:  # reported to the test, which fails on it
        out.put({"reads": reads, "torn": torn, "last": last, "error": repr(exc)})


def test_concurrent_writer_and_reader_processes(path: Path) -> None:
    n_writes = 24
    Store(path)
    done, out = SPAWN.Event(), SPAWN.Queue()
    writer = SPAWN.Process(target=_writer, args=(str(path), n_writes, done))
    reader = SPAWN.Process(target=_reader, args=(str(path), done, out))
    reader.start()
    writer.start()
    result = out.get(timeout=60)
    writer.join(30)
    reader.join(30)
    assert writer.exitcode == 0, "the writer raised"
    assert result["error"] is None
    assert result["torn"] == []
    assert result["reads"] >= 3
    final = {f"r{i % 6}": _rows_for(i) for i in range(n_writes)}
    assert result["last"] == final


# ------------------------------------------------------------------ fixture store

def _tables(path: Path) -> dict[str, pd.DataFrame]:
    with open_readonly(path) as con:
        return {"runs": list_runs(con), "predictions": load_predictions(con),
                "metrics": load_metrics(con),
                "temperature_search": load_temperature_search(con),
                "topk_coverage": load_topk_coverage(con),
                "examples": load_examples(con)}


def test_fixture_store_is_complete_and_deterministic(tmp_path: Path) -> None:
    from first_core import fixtures
    a = _tables(fixtures.write_fixture_store(tmp_path / "a.duckdb", n_examples=20, seed=1))
    fixtures.main([str(tmp_path / "b.duckdb"), "--n-examples", "20", "--seed", "1"])
    b = _tables(tmp_path / "b.duckdb")
    for name in a:
        assert _records(a[name]) == _records(b[name]), name
    other = _tables(fixtures.write_fixture_store(tmp_path / "c.duckdb", n_examples=20, seed=2))
    assert not np.allclose(a["predictions"].confidence, other["predictions"].confidence)

    runs, preds = a["runs"], a["predictions"]
    assert sorted(runs.method) == sorted(METHODS)
    assert preds.groupby(["run_id", "split"]).size().eq(20).all()
    assert set(preds.split) == set(SPLITS) and len(a["examples"]) == 60
    assert set(preds.example_id) == set(a["examples"].example_id)
    assert (preds.gold.to_numpy() == a["examples"].set_index("example_id")
            .loc[preds.example_id, "answer"].to_numpy()).all()
    assert preds.topk_probs.map(lambda p: np.all(np.diff(p) <= 0) and p.sum() <= 1 + 1e-9).all()
    per_run = a["metrics"].groupby("run_id")
    assert per_run.convention.nunique().eq(2).all() and per_run.split.nunique().eq(3).all()
    cov = a["topk_coverage"]
    assert cov.k.tolist() == list(range(1, 101)) and (np.diff(cov["mean"]) > 0).all()
    assert ((cov.p10 <= cov.p50) & (cov.p50 <= cov.p90) & (cov.p90 <= 1)).all()
    search = a["temperature_search"]
    chosen = search[search.chosen].set_index("kind")
    assert sorted(chosen.index) == ["LS", "TS"]
    for kind, part in search.groupby("kind"):  # the chosen value is the val arg-min
        assert chosen.loc[kind, "ece_val"] == part.ece_val.min()
    knobs = runs.set_index("method")
    assert knobs.loc["first_ts", "temperature"] == chosen.loc["TS", "value"]
    assert knobs.loc["first_ls", "smoothing"] == chosen.loc["LS", "value"]


def test_fixture_store_looks_like_the_paper(tmp_path: Path) -> None:
    """Fine-tuned students over-confident, FIRST-TS calibrated; stored ECE = torchmetrics'."""
    from torchmetrics.functional.classification import binary_calibration_error
    import torch

    from first_core import fixtures
    t = _tables(fixtures.write_fixture_store(tmp_path / "f.duckdb", n_examples=200, seed=0))
    preds = t["predictions"].merge(t["runs"][["run_id", "method"]], on="run_id")
    ece = {}
    for (method, split), part in preds.groupby(["method", "split"]):
        ece[method, split] = float(binary_calibration_error(
            torch.tensor(part.confidence_option.to_numpy()),
            torch.tensor(part.correct_option.to_numpy().astype(int)), n_bins=10, norm="l1"))
    stored = t["metrics"].query("convention == 'option' and metric == 'ece'").set_index(
        ["method", "split"]).value
    for key, value in ece.items():
        assert stored[key] == pytest.approx(value, abs=1e-9), key
    for split in ("test", "test_ood"):
        assert ece["student_ft", split] > 2 * ece["first_ts", split]
    over = preds[preds.method == "student_ft"]
    assert over.confidence_option.mean() > over.correct_option.mean() + 0.1
