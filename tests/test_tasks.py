"""The embedded default task (first_core.data.tasks): determinism, shape, difficulty, shift."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from first_core.data.examples import check_file, load_examples
from first_core.data.tasks import SIGMA, SPLITS, task_files, write_task

SIZES = dict(n_train=600, n_val=50, n_test=2000, n_ood=2000)
MAX_WORDS = {"largest", "biggest", "highest"}


@pytest.fixture(scope="module")
def task(tmp_path_factory) -> dict[str, Path]:
    return write_task(tmp_path_factory.mktemp("task"), seed=3, **SIZES)


def records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def readings(recs: list[dict]) -> np.ndarray:
    """The four numbers of each item, parsed back from the option texts."""
    return np.array([[int(c["text"].split()[-1]) for c in r["question"]["choices"]]
                     for r in recs])


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path):
    small = dict(n_train=30, n_val=10, n_test=10, n_ood=10)
    a = write_task(tmp_path / "a", seed=1, **small)
    b = write_task(tmp_path / "b", seed=1, **small)
    c = write_task(tmp_path / "c", seed=2, **small)
    for split in SPLITS:
        assert a[split].read_bytes() == b[split].read_bytes()
        assert a[split].read_bytes() != c[split].read_bytes()
    # Each split has its own random stream: a bigger train set leaves the others unchanged.
    d = write_task(tmp_path / "d", seed=1, **{**small, "n_train": 40})
    assert d["train"].read_bytes() != a["train"].read_bytes()
    assert all(d[s].read_bytes() == a[s].read_bytes() for s in ("val", "test", "test_ood"))


def test_paths_sizes_and_atomic_write(task):
    assert task == task_files(task["train"].parent)
    assert sorted(p.name for p in task["train"].parent.iterdir()) == sorted(
        f"{s}.jsonl" for s in SPLITS)  # no temp files left behind
    asked = dict(zip(SPLITS, SIZES.values()))
    for split, path in task.items():
        assert len(records(path)) == asked[split]
        assert path.stat().st_mode & 0o444 == 0o444


def test_loads_cleanly_through_the_csqa_loader(task):
    ids = []
    for path in task.values():
        assert check_file(path) == [] and check_file(path, "csqa") == []
        exs = load_examples(path)
        assert all(e.labels == ("A", "B", "C", "D") for e in exs)
        ids += [e.id for e in exs]
    assert len(ids) == len(set(ids))


def test_items_are_well_formed(task):
    for split, path in task.items():
        recs = records(path)
        vals = readings(recs)
        assert vals.min() >= 1 and vals.max() <= 20
        assert all(len(set(row)) == 4 for row in vals.tolist())
        for r in recs:
            assert set(r["question"]["stem"].split()) & MAX_WORDS, r


def test_text_is_word_like_with_a_small_vocabulary(task):
    vocab = set()
    for path in task.values():
        for r in records(path):
            vocab |= set(r["question"]["stem"].split())
            for c in r["question"]["choices"]:
                vocab |= set(c["text"].split())
    numbers = {w for w in vocab if re.fullmatch(r"[1-9][0-9]?", w)}
    words = vocab - numbers
    assert all(re.fullmatch(r"[a-z]+|[?.]", w) for w in words), words
    assert len(words) <= 40


def test_gold_labels_balanced(task):
    for split in ("test", "test_ood"):
        gold = np.array([e.answer for e in load_examples(task[split])])
        shares = [(gold == lab).mean() for lab in "ABCD"]
        assert max(abs(s - 0.25) for s in shares) < 0.04, (split, shares)


def test_bayes_probs_match_independent_monte_carlo(task):
    recs = records(task["test_ood"])[:200]
    vals = readings(recs).astype(float)
    noise = np.random.default_rng(0).normal(0, SIGMA, size=(len(recs), 5000, 4))
    winner = (vals[:, None, :] + noise).argmax(axis=2)
    mc = np.stack([(winner == j).mean(axis=1) for j in range(4)], axis=1)
    stored = np.array([r["meta"]["bayes_probs"] for r in recs])
    assert np.abs(stored - mc).max() < 0.035
    assert np.allclose(stored.sum(axis=1), 1, atol=1e-5)
    gold = np.array(["ABCD".index(r["answerKey"]) for r in recs])
    assert np.array_equal(stored[np.arange(len(recs)), gold],
                          [r["meta"]["bayes_p"] for r in recs])


def test_bayes_accuracy_in_band_and_bayes_predictor_calibrated(task):
    """The stored optimum agrees with what happened: the gold labels were drawn fairly."""
    recs = records(task["test"])
    vals = readings(recs)
    probs = np.array([r["meta"]["bayes_probs"] for r in recs])
    pred = vals.argmax(axis=1)
    assert np.array_equal(pred, probs.argmax(axis=1))  # Bayes picks the extreme reading
    correct = pred == np.array(["ABCD".index(r["answerKey"]) for r in recs])
    conf = probs.max(axis=1)
    assert 0.75 <= conf.mean() <= 0.85
    assert 0.75 <= correct.mean() <= 0.85
    assert abs(correct.mean() - conf.mean()) < 0.03
    unsure = conf < 0.7  # near-ties exist and are genuinely uncertain
    assert unsure.mean() > 0.15
    assert abs(correct[unsure].mean() - conf[unsure].mean()) < 0.05


def test_ood_split_is_shifted(task):
    ind = {split: records(task[split]) for split in ("train", "val", "test")}
    ood = records(task["test_ood"])

    def top2_gap(recs):
        v = np.sort(readings(recs), axis=1)
        return (v[:, -1] - v[:, -2]).mean()

    def stems(recs):
        return {r["question"]["stem"] for r in recs}

    in_stems = set().union(*(stems(r) for r in ind.values()))
    assert stems(ood).isdisjoint(in_stems)
    assert top2_gap(ood) < 0.8 * top2_gap(ind["test"])
    bayes = [np.mean([max(r["meta"]["bayes_probs"]) for r in recs]) for recs in
             (ind["test"], ood)]
    assert bayes[1] < bayes[0] - 0.05
    styles = {re.sub(r"\d+", "N", c["text"]) for r in ood for c in r["question"]["choices"]}
    assert styles - {"N"}, "OOD options should sometimes use another style"
    # Shifted phrasing, same vocabulary: a tokenizer trained on train covers OOD.
    train_words = {w for r in ind["train"] for w in r["question"]["stem"].split()}
    ood_words = {w for r in ood for w in r["question"]["stem"].split()}
    ood_words |= {w for r in ood for c in r["question"]["choices"]
                  for w in c["text"].split() if not w.isdigit()}
    assert ood_words <= train_words


def test_tiny_sizes(tmp_path):
    paths = write_task(tmp_path, seed=0, n_train=1, n_val=1, n_test=1, n_ood=1)
    assert [len(load_examples(p)) for p in paths.values()] == [1, 1, 1, 1]


@pytest.mark.parametrize("kwargs, name", [({"n_train": 0}, "n_train"), ({"n_ood": -1}, "n_ood"),
                                          ({"n_val": 2.5}, "n_val"), ({"seed": -1}, "seed")])
def test_bad_arguments(tmp_path, kwargs, name):
    with pytest.raises(ValueError, match=name):
        write_task(tmp_path, **kwargs)
    assert not any(tmp_path.iterdir())
