"""Top-k store: equals a direct forward, raw probabilities, coverage stats, bad stores, 2 ranks."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from first_core.store.schema import TABLES
from first_core.errors import ConfigError, StoreError
from first_core.models.encoding import answer_token_ids, encode_examples
from first_core.knowledge.answer_topk import examples_hash, extract_topk
from first_core.knowledge.coverage import COVERAGE_BINS, CoverageAccumulator, coverage_table
from first_core.knowledge.manifest import MANIFEST, SCHEMA_VERSION, read_manifest
from first_core.knowledge.reader import load_topk
from helpers.tiny_lm import forbid_full_softmax, load_saved, make_examples, make_model, save_model

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[1]
N, K = 23, 3
INFO = {"teacher": "tiny-teacher", "dataset_hash": "d1", "config_hash": "c1", "split": "train"}


@pytest.fixture(scope="module")
def setup():
    examples = make_examples(N, seed=3, n_options=(2, 4))
    model, tokenizer = make_model(examples, seed=3)
    return model, tokenizer, examples


@pytest.fixture(scope="module")
def direct(setup):
    """Full-vocabulary probabilities from one unbatched forward per example (float64)."""
    model, tokenizer, examples = setup
    with torch.no_grad():
        logits = torch.stack([model(input_ids=torch.tensor([ids])).logits[0, -1] for ids in
                              encode_examples(tokenizer, examples).prompt_ids()])
    return torch.softmax(logits.double(), dim=-1).numpy()


@pytest.fixture(scope="module")
def built(setup, tmp_path_factory):
    model, tokenizer, examples = setup
    out = tmp_path_factory.mktemp("topk") / "train"
    manifest = extract_topk(model, tokenizer, examples, out, k=K, coverage_k=1000,
                            shard_size=10, batch_size=4, manifest_info=INFO, progress=False)
    return out, manifest


def _copy(src: Path, dst: Path) -> Path:
    dst.mkdir()
    for p in src.iterdir():
        (dst / p.name).write_bytes(p.read_bytes())
    return dst


def test_topk_equals_torch_topk_of_a_direct_forward(setup, direct, built):
    _, tokenizer, examples = setup
    top = load_topk(built[0])
    want_p, want_i = torch.topk(torch.from_numpy(direct), K, dim=-1)
    np.testing.assert_array_equal(top.ids, want_i.numpy())
    np.testing.assert_allclose(top.probs, want_p.numpy(), rtol=1e-5, atol=1e-7)
    assert top.ids.dtype == np.int32 and top.probs.dtype == np.float64
    assert top.example_ids.tolist() == [ex.id for ex in examples]
    labels = sorted({lab for ex in examples for lab in ex.labels})
    letter = dict(zip(labels, answer_token_ids(tokenizer, labels)))
    gold = [letter[ex.answer] for ex in examples]
    assert top.gold_ids.tolist() == gold
    rank = [row.index(g) if g in row else -1 for row, g in zip(top.ids.tolist(), gold)]
    assert top.gold_rank.tolist() == rank


def test_probabilities_are_raw_not_renormalised(direct, built):
    top = load_topk(built[0])
    assert np.allclose(direct.sum(axis=1), 1.0)
    assert (top.probs.sum(axis=1) < 1 - 1e-3).all()  # the dropped tail is visible
    assert (np.diff(top.probs, axis=1) <= 0).all()


def test_manifest_records_counts_and_provenance(setup, built):
    model, _, examples = setup
    out, manifest = built
    top = load_topk(out)
    assert manifest == read_manifest(out)
    assert (manifest.k, manifest.n_examples, manifest.vocab_size) == (K, N, model.vocab_size)
    assert manifest.coverage_k == model.vocab_size  # capped at the vocabulary
    assert [s["rows"] for s in manifest.shards] == [10, 10, 3]
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [MANIFEST] + [s["file"] for s in manifest.shards])
    assert (manifest.teacher, manifest.dataset_hash, manifest.config_hash) == ("tiny-teacher",
                                                                              "d1", "c1")
    assert manifest.info == {"split": "train"} and manifest.n_processes == 1
    assert manifest.examples_hash == examples_hash(examples)
    assert manifest.n_gold_in_topk == int((top.gold_rank >= 0).sum())
    assert manifest.schema_version == SCHEMA_VERSION and manifest.dtype == "float32"
    assert not list(out.parent.glob(".*partial"))


def test_coverage_stats_match_numpy(direct, built):
    manifest = built[1]
    cum = np.cumsum(-np.sort(-direct, axis=1), axis=1)
    cov = manifest.coverage
    np.testing.assert_allclose(cov["mean"], cum.mean(axis=0), atol=1e-6)
    for q in (10, 50, 90):
        want = np.percentile(cum, q, axis=0, method="lower")
        np.testing.assert_allclose(cov[f"p{q}"], want, atol=1 / COVERAGE_BINS)
    for col in ("mean", "p10", "p50", "p90"):
        assert np.all(np.diff(cov[col]) >= -1e-9)
        assert cov[col][-1] == pytest.approx(1.0, abs=1e-6)  # K = V holds all the mass
    assert cov["p10"][0] <= cov["p50"][0] <= cov["p90"][0]
    assert cov["p10"][0] < cov["p90"][0]  # the test model's distributions really vary


def test_coverage_accumulator_streams_and_merges_like_one_numpy_pass(tmp_path):
    rng = np.random.default_rng(0)
    probs = -np.sort(-rng.dirichlet(np.full(40, 0.2), size=20_000), axis=1)[:, :30]
    first, second = CoverageAccumulator(30), CoverageAccumulator(30)
    for start in range(0, 12_000, 700):  # several flushes, a ragged last batch
        first.add(probs[start:min(start + 700, 12_000)])
    second.add(probs[12_000:])
    second.save(tmp_path / "r1.npz")
    first.merge(CoverageAccumulator.load(tmp_path / "r1.npz"))
    got, cum = first.summary(), np.cumsum(probs, axis=1)
    assert first.n == 20_000
    np.testing.assert_allclose(got["mean"], cum.mean(axis=0), rtol=1e-12)
    for q in (10, 50, 90):
        np.testing.assert_allclose(got[f"p{q}"], np.percentile(cum, q, axis=0, method="lower"),
                                   atol=1 / COVERAGE_BINS)


def test_coverage_table_matches_store_schema(setup, built):
    model = setup[0]
    out, manifest = built
    table = coverage_table(manifest)
    assert list(table.columns) == [c for c in TABLES["topk_coverage"].columns
                                   if c != "run_id"]
    assert table.k.tolist() == list(range(1, model.vocab_size + 1))
    formula = table.k * (4 + 4)
    others = table.k != K
    np.testing.assert_array_equal(table.bytes_per_position[others], formula[others])
    payload = sum(os.path.getsize(out / s["file"]) for s in manifest.shards) / N
    measured = table.bytes_per_position[table.k == K].item()
    assert 0 < measured < payload  # the ids + probs chunks, not the whole file
    assert (table.full_bytes_per_position == 2 * model.vocab_size).all()
    assert (table.n_positions == N).all() and (table.vocab_size == model.vocab_size).all()
    np.testing.assert_allclose(table["mean"], manifest.coverage["mean"])


def test_float16_store_holds_rounded_probabilities(setup, direct, tmp_path):
    model, tokenizer, examples = setup
    m = extract_topk(model, tokenizer, examples, tmp_path / "h", k=2, coverage_k=4,
                     dtype="float16", shard_size=100, progress=False)
    top = load_topk(tmp_path / "h")
    want = -np.sort(-direct, axis=1)[:, :2]
    np.testing.assert_allclose(top.probs, want.astype(np.float16), rtol=1e-3)
    assert coverage_table(m).bytes_per_position[2:].tolist() == [18.0, 24.0]
    assert m.examples_hash == examples_hash(examples) == m.dataset_hash  # none given


def test_rerun_replaces_an_earlier_store_and_a_stale_partial(setup, tmp_path):
    model, tokenizer, examples = setup
    out = tmp_path / "s"
    extract_topk(model, tokenizer, examples, out, k=4, coverage_k=4, progress=False)
    (tmp_path / ".s.partial").mkdir()
    (tmp_path / ".s.partial" / "part-r000-00009.parquet").write_text("junk from a kill")
    extract_topk(model, tokenizer, examples[:5], out, k=2, coverage_k=2, progress=False)
    top = load_topk(out)
    assert top.ids.shape == (5, 2) and len(list(out.glob("*.parquet"))) == 1


def test_refuses_to_overwrite_a_folder_that_is_not_a_store(setup, tmp_path):
    model, tokenizer, examples = setup
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(StoreError, match="not a top-k store"):
        extract_topk(model, tokenizer, examples[:3], tmp_path / "mine", k=1, coverage_k=1,
                     progress=False)
    assert (tmp_path / "mine" / "notes.txt").exists()


@pytest.mark.parametrize("kwargs, match", [
    ({"k": 0}, r"k must be an integer >= 1, got 0"),
    ({"k": -2}, r"k must be an integer >= 1, got -2"),
    ({"k": 2.5}, r"k must be an integer >= 1, got 2.5"),
    ({"k": "vocab+1"}, r"k=\d+ is larger than the teacher's vocabulary \(\d+ tokens\)"),
    ({"k": 3, "coverage_k": 2}, r"coverage_k must be an integer >= k=3, got 2"),
    ({"dtype": "bfloat16"}, r"dtype must be one of"),
    ({"shard_size": 0}, r"shard_size must be >= 1"),
])
def test_bad_arguments_name_the_argument_and_write_nothing(setup, tmp_path, kwargs, match):
    model, tokenizer, examples = setup
    if kwargs.get("k") == "vocab+1":
        kwargs = {"k": model.vocab_size + 1, "coverage_k": model.vocab_size + 1}
    with pytest.raises(ConfigError, match=match):
        extract_topk(model, tokenizer, examples, tmp_path / "x", progress=False, **kwargs)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("expect, field", [
    ({"expect_vocab_size": 999}, "vocab_size mismatch: the store has 30, expected 999"),
    ({"expect_dataset_hash": "other"}, "dataset_hash mismatch: the store has 'd1', expected "
                                       "'other'"),
    ({"expect_teacher": "llama-7b"}, "teacher mismatch: the store has 'tiny-teacher', expected "
                                     "'llama-7b'"),
])
def test_store_for_another_teacher_or_data_set_is_refused(setup, built, expect, field):
    field = field.replace("30", str(setup[0].vocab_size))
    with pytest.raises(StoreError, match=field.replace("(", r"\(")):
        load_topk(built[0], **expect)


def test_matching_expectations_load(setup, built):
    top = load_topk(built[0], expect_vocab_size=setup[0].vocab_size, expect_dataset_hash="d1",
                    expect_teacher="tiny-teacher")
    assert len(top.ids) == N


def test_missing_manifest(tmp_path):
    with pytest.raises(StoreError, match="no top-k manifest"):
        load_topk(tmp_path)


def test_newer_schema_version_is_refused(built, tmp_path):
    bad = _copy(built[0], tmp_path / "new")
    raw = json.loads((bad / MANIFEST).read_text())
    (bad / MANIFEST).write_text(json.dumps({**raw, "schema_version": SCHEMA_VERSION + 1}))
    with pytest.raises(StoreError, match=f"newer first-lab.*version {SCHEMA_VERSION + 1}"):
        load_topk(bad)


def test_truncated_shard_is_named(built, tmp_path):
    bad = _copy(built[0], tmp_path / "cut")
    shard = bad / read_manifest(bad).shards[1]["file"]
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    with pytest.raises(StoreError, match=f"{shard.name}: unreadable Parquet shard"):
        load_topk(bad)


def test_row_count_mismatch_is_named(built, tmp_path):
    bad = _copy(built[0], tmp_path / "rows")
    raw = json.loads((bad / MANIFEST).read_text())
    raw["shards"][2]["rows"] = 4
    (bad / MANIFEST).write_text(json.dumps(raw))
    with pytest.raises(StoreError, match=f"{raw['shards'][2]['file']}: 3 rows, the manifest "
                                         "says 4"):
        load_topk(bad)


def test_two_processes_give_the_single_process_result(tmp_path):
    """torchrun with two CPU ranks (gloo): same ids, probs and order as one process."""
    n = 11
    model_dir = save_model(make_examples(n, seed=2, n_options=(2, 4)), tmp_path / "m", seed=2)
    model, tokenizer = load_saved(model_dir)
    single = tmp_path / "one"
    extract_topk(model, tokenizer, make_examples(n, seed=2, n_options=(2, 4)), single, k=3,
                 coverage_k=10, shard_size=4, batch_size=3, progress=False,
                 manifest_info={"teacher": "tiny"})
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
           "2", str(ROOT / "tests" / "helpers" / "extract_2proc.py"), str(model_dir),
           str(tmp_path / "two"), str(n), "3"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
        _, err = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the launcher and both of its ranks
        raise
    assert proc.returncode == 0, err[-3000:]
    one, two = load_topk(single), load_topk(tmp_path / "two", expect_teacher="tiny")
    m1, m2 = one.manifest, two.manifest
    assert (m2.n_processes, m1.n_processes) == (2, 1)
    assert [s["file"][:9] for s in m2.shards] == ["part-r000"] * 2 + ["part-r001"] * 2
    assert two.example_ids.tolist() == one.example_ids.tolist()
    np.testing.assert_array_equal(two.ids, one.ids)
    # each rank batches its own slice by length: other padding, float32 rounding apart
    np.testing.assert_allclose(two.probs, one.probs, rtol=1e-5, atol=1e-7)
    np.testing.assert_array_equal(two.gold_rank, one.gold_rank)
    for col in ("mean", "p10", "p50", "p90"):
        np.testing.assert_allclose(m2.coverage[col], m1.coverage[col], atol=1e-6)
    assert (m2.n_examples, m2.n_gold_in_topk, m2.examples_hash) == (
        m1.n_examples, m1.n_gold_in_topk, m1.examples_hash)


def test_extraction_forms_no_full_softmax(setup, built, tmp_path, monkeypatch):
    """topk of the logits + one logsumexp: the same store with every softmax disabled."""
    model, tokenizer, examples = setup

    forbid_full_softmax(monkeypatch, "extraction")
    extract_topk(model, tokenizer, examples, tmp_path / "s", k=K, coverage_k=1000,
                 shard_size=10, batch_size=4, manifest_info=INFO, progress=False)
    a, b = load_topk(built[0]), load_topk(tmp_path / "s")
    np.testing.assert_array_equal(a.ids, b.ids)
    np.testing.assert_array_equal(a.probs, b.probs)
    assert read_manifest(tmp_path / "s").coverage == built[1].coverage


@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_both_stores_round_stored_probabilities_down(dtype):
    """A confident teacher's 0.99985 is float16 1.0 to nearest (the row would sum above 1);
    both stores' shard tables round toward zero instead, so no stored row exceeds its source."""
    from first_core.knowledge.manifest import ANSWER, TOKENS
    from first_core.knowledge.shards import shard_table

    probs = np.array([[0.99985, 1.2e-4, 2.9e-5], [0.5, 0.25, 0.125]])
    assert np.float16(0.99985) == 1.0
    ids = np.array([[5, 6, 7], [1, 2, 3]])
    common = dict(example_id=np.array(["a", "b"], dtype=object), topk_ids=ids, topk_probs=probs,
                  gold_rank_in_topk=np.array([0, -1]))
    tables = [shard_table({**common, "target": np.array([5, 9])}, ANSWER, dtype),
              shard_table({**common, "target": np.array([5, 9]), "position": np.array([0, 1])},
                          TOKENS, dtype)]
    for table in tables:
        stored = np.array(table.column("topk_probs").to_pylist(), dtype=np.float64)
        assert (stored <= probs).all() and (stored.sum(axis=1) <= 1.0).all()
        half = dtype == "float16"  # 2.9e-5 is a float16 subnormal: absolute steps of 6e-8
        np.testing.assert_allclose(stored, probs, rtol=1e-3 if half else 1e-7,
                                   atol=6e-8 if half else 0)
        assert table.column("topk_ids").to_pylist() == ids.tolist()
