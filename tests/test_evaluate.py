"""predict() against a direct forward, both conventions; compute_metrics() against metrics."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sklearn.metrics import roc_auc_score

from first_core.metrics import selective as selective_metrics
from first_core.metrics.binning import expected_calibration_error, maximum_calibration_error
from first_core.metrics.intervals import bootstrap_interval
from first_core.metrics.point_scores import accuracy, trust_score
from first_core.store.connection import open_readonly
from first_core.store.reads import load_metrics, load_predictions
from first_core.store.schema import TABLES, RunRecord
from first_core.store.writes import Store
from first_core.errors import ConfigError
from first_core.evaluation.evaluate import compute_metrics, predict
from first_core.models.encoding import answer_token_ids, encode_examples
from helpers.tiny_lm import forbid_full_softmax, make_examples, make_model

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def setup():
    examples = make_examples(17, seed=4, n_options=(2, 3, 4))
    model, tokenizer = make_model(examples, seed=4)
    return model, tokenizer, examples


def _direct_probs(model, tokenizer, examples) -> np.ndarray:
    with torch.no_grad():
        logits = torch.stack([model(input_ids=torch.tensor([ids])).logits[0, -1] for ids in
                              encode_examples(tokenizer, examples).prompt_ids()])
    return torch.softmax(logits.double(), dim=-1).numpy()


def _letters(tokenizer) -> dict[str, int]:
    return dict(zip("ABCD", answer_token_ids(tokenizer, list("ABCD"))))


def _biased_towards(model, token_id: int, bias: float = 30.0):
    """The same model with a bias on one output token, so its top-1 is that token."""
    head = torch.nn.Linear(model.lm_head.in_features, model.lm_head.out_features, bias=True)
    with torch.no_grad():
        head.weight.copy_(model.lm_head.weight)
        head.bias.zero_()
        head.bias[token_id] = bias
    model.lm_head = head
    return model


@pytest.fixture(scope="module")
def pred(setup):
    model, tokenizer, examples = setup
    return predict(model, tokenizer, examples, k=4, batch_size=5, progress=False)


def test_columns_are_the_store_predictions_columns(pred):
    want = [c for c in TABLES["predictions"].columns if c not in ("run_id", "split")]
    assert list(pred.columns) == want
    assert pred.confidence.dtype == np.float64 and pred.confidence_option.dtype == np.float64
    assert pred.correct.dtype == bool and pred.correct_option.dtype == bool
    assert all(isinstance(v, list) for c in ("option_labels", "option_probs", "topk_ids",
                                             "topk_probs", "topk_tokens") for v in pred[c])


def test_paper_convention_matches_a_direct_forward(setup, pred):
    model, tokenizer, examples = setup
    probs = _direct_probs(model, tokenizer, examples)
    want_p, want_i = torch.topk(torch.from_numpy(probs), 4, dim=-1)
    assert pred.topk_ids.tolist() == want_i.tolist()
    np.testing.assert_allclose(np.array(pred.topk_probs.tolist()), want_p.numpy(), rtol=1e-5)
    np.testing.assert_allclose(pred.confidence, probs.max(axis=1), rtol=1e-5)
    letters = _letters(tokenizer)
    gold = np.array([letters[ex.answer] for ex in examples])
    np.testing.assert_array_equal(pred.correct, probs.argmax(axis=1) == gold)
    id_letter = {v: k for k, v in letters.items()}
    top1 = probs.argmax(axis=1)
    assert pred.pred.tolist() == [id_letter.get(i, tokenizer.decode([i])) for i in top1]
    assert pred.topk_tokens.tolist() == [[tokenizer.decode([i]) for i in row]
                                         for row in want_i.tolist()]
    assert pred.example_id.tolist() == [ex.id for ex in examples]
    assert pred.gold.tolist() == [ex.answer for ex in examples]


def test_option_convention_handles_different_option_counts(setup, pred):
    model, tokenizer, examples = setup
    assert {len(ex.labels) for ex in examples} == {2, 3, 4}
    probs = _direct_probs(model, tokenizer, examples)
    letters = _letters(tokenizer)
    for ex, row, p in zip(examples, pred.itertuples(), probs):
        raw = np.array([p[letters[lab]] for lab in ex.labels])
        assert row.option_labels == list(ex.labels)
        np.testing.assert_allclose(row.option_probs, raw, rtol=1e-5)
        renorm = raw / raw.sum()
        best = int(np.argmax(renorm))
        assert row.pred_option == ex.labels[best]
        assert row.confidence_option == pytest.approx(renorm[best], rel=1e-5)
        assert row.correct_option == (ex.labels[best] == ex.answer)
    assert (pred.confidence_option >= 1 / pred.option_labels.map(len) - 1e-12).all()


def test_a_letter_top1_is_reported_as_the_letter(setup):
    _, tokenizer, examples = setup
    model, _ = make_model(examples, seed=4)
    model = _biased_towards(model, _letters(tokenizer)["B"])
    p = predict(model, tokenizer, examples, k=2, progress=False)
    assert (p.pred == "B").all() and (p.pred_option == "B").all()
    np.testing.assert_array_equal(p.correct, [ex.answer == "B" for ex in examples])
    np.testing.assert_array_equal(p.correct, p.correct_option)
    assert (p.confidence > 0.99).all()


@pytest.mark.parametrize("k, match", [(0, "k must be an integer >= 1, got 0"),
                                      (10_000, r"k=10000 is larger than the teacher's vocab")])
def test_bad_k(setup, k, match):
    model, tokenizer, examples = setup
    with pytest.raises(ConfigError, match=match):
        predict(model, tokenizer, examples, k=k, progress=False)


def test_compute_metrics_equals_first_core_metrics(pred):
    m = compute_metrics(pred, n_bins=5, n_boot=200, seed=3)
    assert list(m.columns) == [c for c in TABLES["metrics"].columns
                               if c not in ("run_id", "split")]
    got = {(r.convention, r.metric): r for r in m.itertuples()}
    assert set(got) == {(c, x) for c in ("paper", "option") for x in
                        ("accuracy", "confidence", "ece", "mce", "trust", "auroc", "aurc")} | {
                            ("option", "brier"), ("option", "nll")}
    for conv, conf, ok in (("paper", pred.confidence, pred.correct),
                           ("option", pred.confidence_option, pred.correct_option)):
        conf, ok = conf.to_numpy(), ok.to_numpy()
        acc = accuracy(ok)
        ece = expected_calibration_error(conf, ok, n_bins=5)
        assert got[conv, "accuracy"].value == pytest.approx(acc)
        assert got[conv, "confidence"].value == pytest.approx(float(np.mean(conf)))
        assert got[conv, "ece"].value == pytest.approx(ece)
        assert got[conv, "mce"].value == pytest.approx(
            maximum_calibration_error(conf, ok, n_bins=5))
        assert got[conv, "trust"].value == pytest.approx(trust_score(acc, ece))
        _, low, high = bootstrap_interval("ece", conf, ok, n_bins=5, n_boot=200, seed=3)
        assert (got[conv, "ece"].ci_low, got[conv, "ece"].ci_high) == pytest.approx((low, high))
        assert np.isnan(got[conv, "accuracy"].ci_low)
        # discrimination: scikit-learn's AUROC, and the intervals of the same resamples
        sel = selective_metrics.bootstrap_intervals(conf, ok, n_boot=200, seed=3)
        for name in ("auroc", "aurc"):
            row = got[conv, name]
            assert (row.value, row.ci_low, row.ci_high) == pytest.approx(sel[name], nan_ok=True)
        if 0 < ok.sum() < len(ok):
            assert got[conv, "auroc"].value == pytest.approx(roc_auc_score(ok, conf))
        else:
            assert np.isnan(got[conv, "auroc"].value)
    # Brier and NLL over the renormalised options, computed row by row here.
    brier, nll = [], []
    for row in pred.itertuples():
        q = np.array(row.option_probs) / np.sum(row.option_probs)
        y = np.eye(len(q))[row.option_labels.index(row.gold)]
        brier.append(((q - y) ** 2).sum())
        nll.append(-np.log(q[row.option_labels.index(row.gold)]))
    assert got["option", "brier"].value == pytest.approx(np.mean(brier))
    assert got["option", "nll"].value == pytest.approx(np.mean(nll))


def test_predictions_and_metrics_round_trip_through_the_store(pred, tmp_path):
    path = tmp_path / "s.duckdb"
    run = RunRecord(run_id="r/teacher_ft/seed0", method="teacher_ft", model="tiny",
                    dataset="d", seed=0)
    Store(path).write_run(run, pred.assign(split="test"),
                          compute_metrics(pred, n_boot=50).assign(split="test"))
    back = load_predictions(path, run.run_id, "test")
    assert len(back) == len(pred)
    back = back.set_index("example_id").loc[pred.example_id]
    np.testing.assert_allclose(back.confidence, pred.confidence)
    assert back.correct_option.tolist() == pred.correct_option.tolist()
    assert [list(v) for v in back.topk_ids] == pred.topk_ids.tolist()
    assert [list(v) for v in back.option_labels] == pred.option_labels.tolist()
    assert len(load_metrics(path, run.run_id)) == 16  # 7 per convention + Brier, NLL


def test_auroc_is_stored_as_null_when_every_answer_is_right_or_wrong(pred, tmp_path):
    """AUROC needs right and wrong answers: without both it is missing, not a crash; AURC
    stays defined (0 or 1)."""
    frame = pred.assign(correct=True, correct_option=False)
    path = tmp_path / "s.duckdb"
    run = RunRecord(run_id="r/student_ft/seed0", method="student_ft", model="tiny",
                    dataset="d", seed=0)
    Store(path).write_run(run, frame.assign(split="test"),
                          compute_metrics(frame, n_boot=20).assign(split="test"))
    with open_readonly(path) as con:
        rows = dict(((c, m), v) for c, m, v in con.execute(
            "SELECT convention, metric, value FROM metrics WHERE metric IN ('auroc', 'aurc')"
        ).fetchall())
    assert rows == {("paper", "auroc"): None, ("option", "auroc"): None,
                    ("paper", "aurc"): 0.0, ("option", "aurc"): 1.0}


def test_empty_examples(setup):
    model, tokenizer, _ = setup
    with pytest.raises(ValueError, match="examples"):
        predict(model, tokenizer, [], progress=False)


def test_predict_forms_no_full_softmax(setup, pred, monkeypatch):
    """Confidences come from topk + logsumexp: the same rows with every softmax disabled."""
    model, tokenizer, examples = setup

    forbid_full_softmax(monkeypatch, "predict")
    again = predict(model, tokenizer, examples, k=4, batch_size=5, progress=False)
    np.testing.assert_array_equal(again.confidence, pred.confidence)
    assert again.option_probs.tolist() == pred.option_probs.tolist()
