"""`python -m first_core import` with bad or awkward files (issue 23), as a user meets it: the
CLI's exit status and message, and what the store holds afterwards.

Exit 2 with `FILE:LINE: field: what` and no traceback for anything wrong in the file; nothing
in the store changes unless the import succeeds; an import never touches another pipeline's
or import's rows.
"""

from __future__ import annotations

import json
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pytest

from first_core.store.reads import list_runs, load_examples, load_predictions
from first_core.store.schema import SCHEMA_VERSION
from first_core.__main__ import main
from first_core.fixtures import DATASET, write_fixture_store


def cli(capsys, *args) -> tuple[int, str, str]:
    """`python -m first_core ARGS` in this process: (exit status, stdout, stderr). A bug
    shows as the exception itself, so the test fails with its traceback."""
    code = main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


def imported(capsys, path: Path, name: str, target: Path) -> tuple[int, str, str]:
    return cli(capsys, "import", path, "--name", name, "--store", target)


def option_csv(path: Path, split: str, n: int = 6, question: str = "Q") -> Path:
    rows = [f"{split}-{i},{split},0.6,0.3,A,{question} {i}?" for i in range(n)]
    path.write_text("example_id,split,p_A,p_B,gold,question\n" + "\n".join(rows) + "\n")
    return path


# ------------------------------------------------------------ item 1: namespaces of questions

def test_import_named_after_a_pipelines_dataset_key_is_refused_and_its_questions_survive(
        tmp_path, capsys):
    target = write_fixture_store(tmp_path / "s.duckdb", 10)
    before = load_examples(target)
    f = option_csv(tmp_path / "f.csv", "test")
    code, _, err = imported(capsys, f, DATASET, target)
    assert code == 2 and "Traceback" not in err
    assert f"name {DATASET!r} is the data set key of the runs of pipeline(s) ['fixture']" in err
    pd.testing.assert_frame_equal(load_examples(target), before)
    # an ordinary name files its questions under its own key, never the pipeline's
    assert imported(capsys, f, "mine", target)[0] == 0
    pd.testing.assert_frame_equal(
        load_examples(target, dataset=DATASET).reset_index(drop=True),
        before.reset_index(drop=True))
    runs = list_runs(target)
    key = runs.loc[runs["pipeline"] == "mine", "dataset"].item()
    assert key == "import:mine"  # what the pages look questions up by
    assert len(load_examples(target, dataset=key, split="test")) == 6


def test_reimporting_a_name_replaces_its_questions_whole(tmp_path, capsys):
    target = write_fixture_store(tmp_path / "s.duckdb", 10)
    fixture = load_examples(target, dataset=DATASET)
    assert imported(capsys, option_csv(tmp_path / "a.csv", "val", question="Old"), "mine",
                    target)[0] == 0
    assert imported(capsys, option_csv(tmp_path / "b.csv", "test", question="New"), "mine",
                    target)[0] == 0
    everything = load_examples(target)
    mine = everything[everything["dataset"] != DATASET]
    assert set(mine["split"]) == {"test"}  # the first import's val questions are gone
    assert all(q.startswith("New") for q in mine["question"])
    assert len(everything) == len(fixture) + 6
    assert set(list_runs(target)["dataset"]) == {DATASET, "import:mine"}


def test_a_schema_1_store_with_an_old_import_still_opens_and_is_migrated(tmp_path, capsys):
    target = write_fixture_store(tmp_path / "s.duckdb", 10)
    assert imported(capsys, option_csv(tmp_path / "a.csv", "test"), "old", target)[0] == 0
    with duckdb.connect(str(target)) as con:  # what first-lab wrote before schema 2
        con.execute("UPDATE meta SET value = '1' WHERE key = 'schema_version'")
        con.execute("UPDATE runs SET dataset = 'old' WHERE pipeline = 'old'")
        con.execute("UPDATE examples SET dataset = 'old' WHERE dataset = 'import:old'")
    assert len(load_examples(target, dataset="old")) == 6  # read-only: as it is
    assert imported(capsys, option_csv(tmp_path / "b.csv", "val"), "new", target)[0] == 0
    runs = list_runs(target).set_index("pipeline")["dataset"]
    assert runs["old"] == "import:old" and runs["new"] == "import:new"
    assert len(load_examples(target, dataset="import:old")) == 6
    assert load_examples(target, dataset="old").empty
    with duckdb.connect(str(target), read_only=True) as con:
        version = con.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchall()
    assert version == [(str(SCHEMA_VERSION),)]


# ------------------------------------------------------------ item 3: no tracebacks

def _nested(depth: int) -> str:
    return '{"confidence": 0.5, "correct": true, "x": ' + "[" * depth + "]" * depth + "}"


BAD_JSONL = {
    "not utf-8": (b'{"confidence": 0.5, "correct": true}\n{"confidence": 0.5, "correct": "\xff"}\n',
                  2, "not valid UTF-8"),
    "random bytes": (bytes(np.random.default_rng(0).integers(0, 256, 3000, dtype=np.uint8)),
                     1, ""),
    "nested 100k deep": (('{"confidence": 0.5, "correct": true}\n' + _nested(100_000)
                          + "\n").encode(), 2, "nested too deeply"),
    "lone surrogate": (b'{"confidence": 0.5, "correct": true, "example_id": "\\ud800"}\n', 1,
                       "surrogate"),
    "5000-digit integer": (b'{"confidence": 0.5, "correct": true}\n{"confidence": 0.5, '
                           b'"correct": true, "example_id": ' + b"7" * 5000 + b"}\n", 2,
                           "digits"),
}


@pytest.mark.parametrize("case", list(BAD_JSONL))
def test_unreadable_jsonl_is_a_clean_error_naming_file_and_line(tmp_path, capsys, case):
    content, line, words = BAD_JSONL[case]
    f = tmp_path / "f.jsonl"
    f.write_bytes(content)
    code, _, err = imported(capsys, f, "x", tmp_path / "s.duckdb")
    assert code == 2 and err.startswith(f"error: {f}:{line}: "), err[:500]
    assert words in err and "Traceback" not in err
    assert not (tmp_path / "s.duckdb").exists()


def test_store_path_under_a_file_is_a_clean_error(tmp_path, capsys):
    good = option_csv(tmp_path / "good.csv", "test")
    code, _, err = imported(capsys, good, "x", good / "x.duckdb")
    assert code == 2 and f"{good} is a file, not a folder" in err


# ------------------------------------------------------------ item 8: no silent mangling

@pytest.mark.parametrize("header, words", [
    ("p_A,p_A,gold", "duplicate column(s) ['p_A']"),
    ("p_A,p_B ,gold", "column 'p_B ' has spaces around its name"),
])
def test_csv_header_that_pandas_would_rename_is_refused(tmp_path, capsys, header, words):
    f = tmp_path / "f.csv"
    f.write_text(f"{header}\n0.5,0.4,A\n")
    code, _, err = imported(capsys, f, "x", tmp_path / "s.duckdb")
    assert code == 2 and f"error: {f}:1: " in err and words in err


@pytest.mark.parametrize("values, words", [
    ([b"Fine?", b"What?"], "question: bytes, not text"),
    ([{"text": "Fine?"}, {"text": "What?"}], "question: dict, not text"),
])
def test_parquet_question_that_is_not_text_is_refused(tmp_path, capsys, values, words):
    import pyarrow as pa
    import pyarrow.parquet as pq

    f = tmp_path / "f.parquet"
    pq.write_table(pa.table({"confidence": [0.5, 0.7], "correct": [True, False],
                             "question": pa.array(values)}), f)
    code, _, err = imported(capsys, f, "x", tmp_path / "s.duckdb")
    assert code == 2 and f"error: {f}:1: {words}" in err, err


# ------------------------------------------------------------ item 10: messages that mislead

def test_a_softmax_rounded_to_six_decimals_is_accepted(tmp_path, capsys):
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 2, (2000, 5))
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    text = "\n".join(",".join(f"{p:.6f}" for p in row) + ",A" for row in probs)
    assert any(sum(float(f"{p:.6f}") for p in row) > 1 + 1e-6 for row in probs)
    f = tmp_path / "soft.csv"
    f.write_text("p_A,p_B,p_C,p_D,p_E,gold\n" + text + "\n")
    code, _, err = imported(capsys, f, "soft", tmp_path / "s.duckdb")
    assert code == 0, err[:2000]


def test_a_sum_over_one_shows_the_sum(tmp_path, capsys):
    f = tmp_path / "f.csv"
    f.write_text("p_A,p_B,gold\n0.7,0.2,A\n0.7,0.5,A\n")
    code, _, err = imported(capsys, f, "x", tmp_path / "s.duckdb")
    assert code == 2 and f"{f}:3: p_A/p_B: " in err and "sum to 1.2" in err


def test_jsonl_nan_is_not_called_missing(tmp_path, capsys):
    f = tmp_path / "f.jsonl"
    f.write_text('{"confidence": 0.5, "correct": true}\n{"confidence": NaN, "correct": true}\n'
                 '{"correct": true}\n')
    code, _, err = imported(capsys, f, "x", tmp_path / "s.duckdb")
    assert code == 2 and f"{f}:2: confidence: NaN is not a probability" in err
    assert f"{f}:3: confidence: missing value" in err


def test_missing_example_ids_are_reported_once_without_bogus_duplicates(tmp_path, capsys):
    f = tmp_path / "f.jsonl"
    f.write_text("".join(json.dumps({"confidence": 0.5, "correct": True,
                                     **({"example_id": f"e{i}"} if i < 2 else {})}) + "\n"
                         for i in range(6)))
    code, _, err = imported(capsys, f, "x", tmp_path / "s.duckdb")
    err = err.replace(str(tmp_path), "")
    assert code == 2 and "duplicate" not in err
    assert err.count("example_id") == 1 and "missing on 4 of 6 rows (lines 3, 4, 5, 6)" in err


@pytest.mark.parametrize("content, line, words", [
    ('example_id,p_A,p_B,gold\na,0.5,0.5,A\n"b\nc",0.5,0.5,A\n\nd,0.5,oops,A\n', 6,
     "p_B: not a number: 'oops'"),
    ("p_A,p_B,gold\n0.5,0.5,A\n\n0.5,0.5,A,extra\n", 4, "4 fields, the header has 3"),
    ('p_A,p_B,gold\n0.5,0.5,A\n0.5,0.5,"A\n\n', 3, "quote"),
])
def test_csv_problems_are_named_by_their_file_line(tmp_path, capsys, content, line, words):
    f = tmp_path / "f.csv"
    f.write_text(content)
    code, _, err = imported(capsys, f, "x", tmp_path / "s.duckdb")
    assert code == 2 and f"error: {f}:{line}: " in err and words in err, err


# ------------------------------------------------------------ issue 30, items 3, 4 and 10

def test_a_name_with_a_trailing_newline_is_refused(tmp_path, capsys):
    f = option_csv(tmp_path / "f.csv", "test")
    target = tmp_path / "s.duckdb"
    assert imported(capsys, f, "tiny", target)[0] == 0
    code, _, err = imported(capsys, f, "tiny\n", target)
    assert code == 2 and "--name: 1-64 letters" in err and "'tiny\\n'" in err
    assert list_runs(target)["pipeline"].tolist() == ["tiny"]


@pytest.mark.parametrize("row_sum", [1 + 2e-6, 1 + 5e-5, 1 + 1e-4])
def test_rows_the_importer_accepts_the_reliability_page_shows(tmp_path, capsys, row_sum):
    """One tolerance on both sides: what imports builds the page's validated arrays."""
    from first_core.views.run_arrays import PredictionArrays

    f = tmp_path / "f.csv"
    f.write_text(f"p_A,p_B,gold\n{0.5 * row_sum!r},{0.5 * row_sum!r},A\n0.6,0.3,B\n")
    code, _, err = imported(capsys, f, "x", tmp_path / "s.duckdb")
    assert code == 0, err
    preds = load_predictions(tmp_path / "s.duckdb", "x/imported/seed0")
    arrays = PredictionArrays(np.stack(preds["topk_probs"]), preds["correct"].to_numpy(),
                              np.stack(preds["option_probs"]), np.array([0, 1]))
    assert len(arrays) == 2


def test_rows_over_the_shared_tolerance_are_refused_at_import(tmp_path, capsys):
    f = tmp_path / "f.csv"
    f.write_text("p_A,p_B,gold\n0.50006,0.50006,A\n")
    code, _, err = imported(capsys, f, "x", tmp_path / "s.duckdb")
    assert code == 2 and "sum to 1.00012" in err and "+0.0001 for rounding" in err


def test_a_confidence_of_exactly_zero_is_refused_at_import(tmp_path, capsys):
    f = tmp_path / "f.csv"
    f.write_text("confidence,correct\n0.7,1\n0,0\n0.0,1\n")
    code, _, err = imported(capsys, f, "x", tmp_path / "s.duckdb")
    assert code == 2 and f"{f}:3: confidence: is 0, but a model's probability" in err
    assert f"{f}:4: confidence: is 0" in err and not (tmp_path / "s.duckdb").exists()


def test_parquet_whose_pandas_metadata_disagrees_with_a_column(tmp_path, capsys):
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pandas(pd.DataFrame({"confidence": [0.5, 0.7],
                                               "correct": [True, False]}),
                                 preserve_index=False)
    meta = json.loads(table.schema.metadata[b"pandas"])
    for column in meta["columns"]:
        if column["name"] == "confidence":
            column["numpy_type"] = "Int64"
    f = tmp_path / "f.parquet"
    pq.write_table(table.replace_schema_metadata({b"pandas": json.dumps(meta).encode()}), f)
    code, _, err = imported(capsys, f, "x", tmp_path / "s.duckdb")
    assert code == 2 and "Traceback" not in err
    assert err.startswith(f"error: {f}: confidence: the file's pandas metadata says 'Int64', "
                          "but the column holds double"), err


# ------------------------------------------------------------ issue 30 item 17: minor messages

def test_a_parquet_decimal_column_is_a_number(tmp_path, capsys):
    import decimal

    import pyarrow as pa
    import pyarrow.parquet as pq

    f = tmp_path / "d.parquet"
    pq.write_table(pa.table({"confidence": pa.array([decimal.Decimal("0.50"),
                                                     decimal.Decimal("0.75")],
                                                    pa.decimal128(4, 2)),
                             "correct": [True, False]}), f)
    code, _, err = imported(capsys, f, "dec", tmp_path / "s.duckdb")
    assert code == 0, err
    conf = load_predictions(tmp_path / "s.duckdb", columns=["confidence"])["confidence"]
    assert sorted(conf) == [0.5, 0.75]


def test_a_null_boolean_is_called_missing(tmp_path, capsys):
    import pyarrow as pa
    import pyarrow.parquet as pq

    f = tmp_path / "b.parquet"
    pq.write_table(pa.table({"confidence": [0.5, 0.7], "correct": pa.array([True, None])}), f)
    code, _, err = imported(capsys, f, "nb", tmp_path / "s.duckdb")
    assert code == 2 and f"{f}:2: correct: missing value" in err, err
    assert "true/false" not in err
