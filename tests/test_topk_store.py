"""One top-k store format with two layouts (issue 28): the answer position (one row per
example) and every response token (one row per token), one manifest type, one reader.

The stores in tests/fixtures/old_topk_stores were written by the version before that change
(21e4f1d, `make_old_stores.py`): they are read as they are, their manifests are written back
byte for byte, a reader asked for one layout refuses the other, and float16 rows that older
versions rounded to nearest are repaired on read in both layouts.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from first_core.errors import StoreError
from first_core.knowledge import shards
from first_core.knowledge.coverage import coverage_table
from first_core.knowledge.manifest import (ANSWER, MANIFEST, TARGET_COLUMN, TOKENS,
                                           read_manifest, write_manifest)
from first_core.knowledge.reader import load_topk

FIXTURES = Path(__file__).parent / "fixtures" / "old_topk_stores"
LAYOUTS = {"answer": ANSWER, "tokens": TOKENS}


def _stored_probs(folder: Path) -> np.ndarray:
    """The probabilities as they are on disk, shard by shard, as float64."""
    return np.concatenate([np.array(pq.read_table(folder / s["file"]).column("topk_probs")
                                    .to_pylist(), dtype=np.float64)
                           for s in read_manifest(folder).shards])


@pytest.mark.parametrize("name", ["answer", "tokens"])
def test_a_store_of_the_previous_version_is_read_and_its_manifest_written_back_unchanged(
        name, tmp_path):
    folder, layout = FIXTURES / name, LAYOUTS[name]
    raw = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    m = read_manifest(folder)
    assert m.layout == layout and len(m.shards) == 3 and m.dtype == "float16"
    write_manifest(tmp_path, m)  # the same fields under the same names: the same bytes
    assert (tmp_path / MANIFEST).read_bytes() == (folder / MANIFEST).read_bytes()

    top = load_topk(folder, expect_teacher="tiny-teacher", expect_dataset_hash="d1",
                    layout=layout)
    n = raw["n_tokens"] if layout == TOKENS else raw["n_examples"]
    assert m.n_positions == n and top.ids.shape == top.probs.shape == (n, 3)
    np.testing.assert_array_equal(top.probs, _stored_probs(folder))  # nothing to repair
    assert (np.diff(top.probs, axis=1) <= 0).all() and (top.probs.sum(1) <= 1).all()
    rank = [row.index(g) if g in row else -1 for row, g in zip(top.ids.tolist(), top.gold_ids)]
    assert top.gold_rank.tolist() == rank and m.n_gold_in_topk == sum(r >= 0 for r in rank)
    examples = list(dict.fromkeys(top.example_ids))
    assert m.n_examples == len(examples) == raw["n_examples"]
    if layout == TOKENS:  # positions 0, 1, ... along each response, example by example
        want = [p for e in examples for p in range(int((top.example_ids == e).sum()))]
        assert top.positions.tolist() == want and n > len(examples)
    else:  # an answer is a response one token long
        assert (top.positions == 0).all() and list(top.example_ids) == examples
    table = coverage_table(m)
    assert (table.n_positions == n).all()
    assert table.bytes_per_position[2] == raw.get("bytes_per_token_measured",
                                                  raw.get("bytes_per_position_measured"))


def test_a_reader_asked_for_one_layout_refuses_the_other() -> None:
    with pytest.raises(StoreError, match=r"not a per-token top-k store \(layout None\)"):
        load_topk(FIXTURES / "answer", layout=TOKENS)
    with pytest.raises(StoreError, match="not an answer-position top-k store "
                                         r"\(layout 'long-per-token'\)"):
        read_manifest(FIXTURES / "tokens", ANSWER)
    assert load_topk(FIXTURES / "tokens").manifest.layout == TOKENS  # no layout asked: either


@pytest.mark.parametrize("name", ["answer", "tokens"])
def test_float16_rows_rounded_to_nearest_by_older_versions_are_repaired(name, tmp_path,
                                                                       monkeypatch) -> None:
    """Before `round_down`, float16 stores were written to nearest: a confident teacher's
    0.99985 became 1.0 and its row summed above 1. Both layouts' rows are scaled back to 1
    on read (before issue 28 only the answer position's were)."""
    folder, layout = shutil.copytree(FIXTURES / name, tmp_path / name), LAYOUTS[name]
    confident = np.array([0.99985, 1.2e-4, 2.9e-5])
    monkeypatch.setattr(shards, "round_down", lambda values, np_type: values.astype(np_type))
    for shard in read_manifest(folder).shards:  # each shard rewritten the old way
        path = folder / shard["file"]
        table = pq.read_table(path)
        cols = {"example_id": table.column("example_id").to_numpy(zero_copy_only=False),
                "target": table.column(TARGET_COLUMN[layout]).to_numpy(),
                "gold_rank_in_topk": table.column("gold_rank_in_topk").to_numpy(),
                "topk_ids": np.array(table.column("topk_ids").to_pylist()),
                "topk_probs": np.tile(confident, (table.num_rows, 1))}
        if layout == TOKENS:
            cols["position"] = table.column("position").to_numpy()
        pq.write_table(shards.shard_table(cols, layout, "float16"), path)
    assert (_stored_probs(folder).sum(1) > 1).all()  # the case this test is about
    probs = load_topk(folder, layout=layout).probs
    np.testing.assert_allclose(probs.sum(1), 1.0, rtol=0, atol=1e-12)
    np.testing.assert_allclose(probs, np.tile(confident, (len(probs), 1)), atol=2.0 ** -10)
    if layout == TOKENS:  # the dashboard's per-token view and coverage read the same rows
        from first_core.views.token_views import token_coverage_by_position, token_topk_view

        example = str(pq.read_table(folder / read_manifest(folder).shards[0]["file"])
                      .column("example_id")[0])
        view = np.array(token_topk_view(folder, example, 0.3)["raw_probs"].tolist())
        np.testing.assert_allclose(view.sum(1), 1.0, rtol=0, atol=1e-12)
        assert (token_coverage_by_position(folder)["mean_topk"] <= 1.0 + 1e-12).all()
