"""Post-hoc temperature scaling: the NLL fit against independent references, the logits
divided by T at evaluation (T = 1 gives the same bits), the held validation rows, the
dashboard's fit, and the instruction pipeline's `+ts` rows."""

from __future__ import annotations

import json
import os

import duckdb
import numpy as np
import pytest
import torch
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax, logsumexp

from first_core.metrics.binning import expected_calibration_error
from first_core.calibration import posthoc
from first_core.calibration.temperature_fit import T_MIN, fit_temperature


def nll(z: np.ndarray, gold: np.ndarray, t: float) -> float:
    """Mean NLL of the gold column under softmax(z / t): scipy's log-softmax, row by row."""
    return float(-log_softmax(z / t, axis=1)[np.arange(len(z)), gold].mean())


def scipy_temperature(z: np.ndarray, gold: np.ndarray) -> float:
    """The reference: scipy's bounded Brent search on log T of the same NLL."""
    res = minimize_scalar(lambda lt: nll(z, gold, np.exp(lt)), bounds=(-6, 6),
                          method="bounded", options={"xatol": 1e-10})
    return float(np.exp(res.x))


def random_logits(seed: int, n: int = 400, m: int = 30) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, m)) * rng.uniform(0.3, 6.0)
    gold = np.where(rng.random(n) < rng.uniform(0.2, 0.9), z.argmax(axis=1),
                    rng.integers(0, m, n))
    return z, gold


@pytest.mark.parametrize("seed", range(8))
def test_fitted_temperature_equals_scipy_and_a_dense_grid(seed):
    z, gold = random_logits(seed)
    fit = fit_temperature(z, gold)
    ref = scipy_temperature(z, gold)
    assert fit.temperature == pytest.approx(ref, rel=1e-3)
    grid = np.geomspace(ref / 1.1, ref * 1.1, 2001)  # ~1e-4 apart around the optimum
    dense = grid[np.argmin([nll(z, gold, t) for t in grid])]
    assert fit.temperature == pytest.approx(dense, rel=1e-3)
    assert fit.nll_before == pytest.approx(nll(z, gold, 1.0), rel=1e-12)
    assert fit.nll_after == pytest.approx(nll(z, gold, fit.temperature), rel=1e-12)
    assert fit.nll_after <= fit.nll_before and fit.n_rows == len(z) and not fit.at_limit
    # the check itself can fail: a temperature 1% off is outside the tolerance
    assert fit.temperature * 1.01 != pytest.approx(ref, rel=1e-3)
    # the transposed (m x N) layout the dashboard keeps gives the same fit
    assert fit_temperature(np.ascontiguousarray(z.T), gold, axis=0).temperature == \
        pytest.approx(fit.temperature, rel=1e-12)


def test_fit_recovers_a_known_temperature_from_sampled_labels():
    rng = np.random.default_rng(3)
    z = rng.normal(size=(20000, 8)) * 3.0
    true_t = 2.5
    p = np.exp(z / true_t - logsumexp(z / true_t, axis=1, keepdims=True))
    gold = (p.cumsum(axis=1) < rng.random((len(z), 1))).sum(axis=1).clip(max=7)
    assert fit_temperature(z, gold).temperature == pytest.approx(true_t, rel=0.05)


def test_absent_entries_and_unfittable_rows_and_separable_data():
    z, gold = random_logits(11, n=200, m=6)
    padded = np.hstack([z, np.full((len(z), 2), -np.inf)])  # log 0: weight 0 at every T
    assert fit_temperature(padded, gold).temperature == pytest.approx(
        fit_temperature(z, gold).temperature, rel=1e-10)
    dead = padded.copy()
    dead[:10, gold[:10]] = -np.inf  # gold with probability 0: no likelihood, left out
    fit = fit_temperature(dead, gold)
    assert fit.n_left_out == 10 and fit.n_rows == 190
    assert fit.temperature == pytest.approx(fit_temperature(z[10:], gold[10:]).temperature,
                                            rel=1e-10)
    sep = np.eye(4)[np.arange(40) % 4] * 5.0  # always right: the NLL falls as T -> 0
    fit = fit_temperature(sep, np.arange(40) % 4)
    assert fit.temperature < 0.2 and fit.nll_after < 1e-12 and fit.iterations < 40
    wide = np.eye(4)[np.arange(40) % 4] * 1e-4  # the NLL still falls at T_MIN: clipped there
    fit = fit_temperature(wide, np.arange(40) % 4)
    assert fit.at_limit and fit.temperature == pytest.approx(T_MIN)


@pytest.mark.parametrize("scores, gold, match", [
    (np.zeros(3), [0, 0, 0], "2-d"),
    (np.zeros((3, 2)), [0, 2, 0], "column indices"),
    (np.zeros((3, 2)), [0.0, 1.0, 0.0], "integer"),
    (np.array([[0.0, np.nan]]), [0], "NaN"),
    (np.array([[0.0, np.inf]]), [0], "NaN or \\+inf"),
    (np.array([[-np.inf, 0.0]]), [0], "no row can be fitted"),
    (np.zeros((0, 2)), np.zeros(0, int), "no rows"),
])
def test_bad_input_is_refused(scores, gold, match):
    with pytest.raises(ValueError, match=match):
        fit_temperature(scores, np.asarray(gold))


# ---------------------------------------------------------------- evaluation at T


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    """A tiny preset teacher (untrained: its logits are random but fixed) and a few examples."""
    from first_core.models.loading import load_model
    from first_core.models.presets import build_preset
    from first_core.data.tasks import write_task
    from first_core.data.examples import load_examples, format_prompt, answer_text

    work = tmp_path_factory.mktemp("posthoc_model")
    files = write_task(work / "data", seed=0, n_train=60, n_val=24, n_test=8, n_ood=8)
    examples = load_examples(files["val"])
    texts = [format_prompt(ex) + answer_text(ex.answer) for ex in load_examples(files["train"])]
    folder = build_preset("tiny-teacher", texts, work / "teacher", seed=0)
    model, tok = load_model(str(folder))
    return model, tok, examples


def test_predict_at_t1_is_bit_identical_and_at_t_rescales_the_raw_logits(tiny_model):
    from first_core.evaluation.evaluate import predict
    from first_core.models.encoding import label_token_ids

    model, tok, examples = tiny_model
    plain = predict(model, tok, examples, k=5, batch_size=8)
    at_one = predict(model, tok, examples, k=5, batch_size=8, temperature=1.0)
    assert plain.equals(at_one)
    at_two = predict(model, tok, examples, k=5, batch_size=8, temperature=2.0)
    for col in ("pred", "correct", "pred_option", "correct_option", "topk_ids"):
        assert plain[col].tolist() == at_two[col].tolist()
    # independent: one unbatched forward per prompt, softmax of logits / 2 in float64
    held = posthoc.answer_logits(model, tok, examples, batch_size=8)
    z = held.rows().astype(np.float64)
    p = np.exp(z / 2 - logsumexp(z / 2, axis=1, keepdims=True))
    np.testing.assert_allclose(at_two["confidence"], p.max(axis=1), rtol=1e-5)
    letter = label_token_ids(tok, examples)
    assert held.gold().tolist() == [letter[ex.answer] for ex in examples]
    with torch.inference_mode():
        from first_core.data.examples import format_prompt
        ids = tok(format_prompt(examples[0]), return_tensors="pt")["input_ids"]
        last = model(input_ids=ids).logits[0, -1].double().numpy()
    np.testing.assert_allclose(z[0], last, rtol=1e-4, atol=1e-4)


def test_held_logits_keep_an_evenly_spaced_subset_within_the_budget():
    rows = torch.arange(100 * 3, dtype=torch.float32).reshape(100, 3)
    gold = np.arange(100) % 3
    held = posthoc.HeldLogits(budget=30 * 3 * 4)  # room for 30 rows
    for lo in range(0, 100, 7):
        held.add(rows[lo:lo + 7], gold[lo:lo + 7])
    assert held.stride == 4 and held.seen == 100
    kept = np.arange(0, 100, 4)
    np.testing.assert_array_equal(held.rows(), rows.numpy()[kept])
    np.testing.assert_array_equal(held.gold(), gold[kept])
    whole = posthoc.HeldLogits()
    whole.add(rows, gold)
    assert whole.stride == 1 and len(whole.rows()) == 100


def test_fit_posthoc_records_the_nll_and_the_ece_minimising_temperature():
    z, gold = random_logits(5, n=600, m=12)
    held = posthoc.HeldLogits()
    held.add(torch.from_numpy(z.astype(np.float32)), gold)
    fit = posthoc.fit_posthoc(held, n_bins=10)
    z32 = z.astype(np.float32).astype(np.float64)
    assert fit.temperature == pytest.approx(scipy_temperature(z32, gold), rel=1e-3)
    correct = z32.argmax(axis=1) == gold

    def ece(t: float) -> float:  # independent: scipy's softmax, then the plain binned ECE
        conf = np.exp(z32 / t - logsumexp(z32 / t, axis=1, keepdims=True)).max(axis=1)
        bins = np.clip(np.ceil(conf * 10) - 1, 0, 9).astype(int)
        return sum(abs(conf[bins == b].mean() - correct[bins == b].mean()) * (bins == b).mean()
                   for b in range(10) if (bins == b).any())

    curve = [ece(t) for t in fit.grid]
    np.testing.assert_allclose(fit.ece_grid, curve, atol=1e-9)
    assert fit.temperature_ece == fit.grid[int(np.argmin(curve))]
    assert fit.ece_before == pytest.approx(ece(1.0), abs=1e-9)
    assert fit.ece_after == pytest.approx(ece(fit.temperature), abs=1e-9)
    assert fit.temperature in fit.grid and fit.stride == 1 and fit.n_positions == 600
    conf = posthoc.top1_confidence(z.astype(np.float32), 1.0)
    assert expected_calibration_error(conf, correct) == pytest.approx(fit.ece_before)


# ---------------------------------------------------------------- the dashboard's fit


def test_dashboard_fit_minimises_the_pages_nll_card(tmp_path):
    from first_core.fixtures import write_fixture_store
    from first_core.store.reads import list_runs, load_predictions
    from first_core.views import rescaling, run_arrays

    path = write_fixture_store(tmp_path / "f.duckdb", 300, seed=1)
    runs = list_runs(path)
    frame = load_predictions(path, run_ids=runs["run_id"].iloc[1], split="val")
    arrays = run_arrays.prediction_arrays(frame)
    for mode in ("logit", "first"):
        c = rescaling.fit_temperature(arrays, mode)

        def card(t: float) -> float:
            return rescaling.rescale(arrays, float(t), mode, "option").nll

        ref = np.exp(minimize_scalar(lambda lt: card(np.exp(lt)), bounds=(-6, 6),
                                     method="bounded", options={"xatol": 1e-10}).x)
        assert c == pytest.approx(ref, rel=1e-3)
        assert card(c) <= min(card(c * 0.99), card(c * 1.01))
    with pytest.raises(ValueError, match="mode"):
        rescaling.fit_temperature(arrays, "renorm")


# ---------------------------------------------------------------- the instruction setting


def test_instruct_pipeline_stores_posthoc_rows_per_token_and_ood(tiny_instruct_run):
    work, proc = tiny_instruct_run
    con = duckdb.connect(str(work / "first.duckdb"), read_only=True)
    runs = con.execute("select run_id, method, temperature from runs").df()
    trained = set(runs.method[~runs.method.str.endswith("+ts")])
    assert set(runs.method) == trained | {m + "+ts" for m in trained}
    mets = con.execute("select r.method, m.split, m.convention, m.metric, m.value "
                       "from metrics m join runs r using (run_id)").df()
    for method in trained:
        fit = json.loads((next((work / "runs").glob("*/eval")) / f"{method}+ts" / "fit.json")
                         .read_text())
        assert runs.set_index("method").loc[f"{method}+ts", "temperature"] == fit["temperature"]
        assert fit["n_positions"] > 0 and fit["nll_after"] <= fit["nll_before"]
        mine = mets[mets.method == method].set_index(["split", "convention", "metric"]).value
        ts = mets[mets.method == f"{method}+ts"].set_index(["split", "convention",
                                                            "metric"]).value
        assert set(mine.index) == set(ts.index)  # every metric the model's own row has
        for split in ("val", "test", "test_ood"):  # the answers never move with T
            assert ts[split, "paper", "accuracy"] == mine[split, "paper", "accuracy"]
    ood = con.execute("select r.method, p.example_id, p.pred from predictions p join runs r "
                      "using (run_id) where p.split = 'test_ood' order by all").df()
    for method in trained:
        assert (ood[ood.method == method].pred.tolist()
                == ood[ood.method == f"{method}+ts"].pred.tolist())


def test_learn_lesson_rescaling_keeps_accuracy_and_does_not_transfer_out_of_domain():
    from first_core.views import teaching

    t, table = teaching.rescale_lesson(0.7, 2.0, 0.45, 3.5)
    assert t == pytest.approx(2.0, rel=0.1)  # the simulator's exaggeration is s = 2
    rows = table.set_index(["sample", "confidence"])
    for sample in ("in-domain test", "out-of-domain test"):
        before, after = rows.loc[sample].iloc[0], rows.loc[sample].iloc[1]
        assert after["accuracy"] == before["accuracy"]
        assert after["ECE"] < before["ECE"]
        assert after["AUROC"] == pytest.approx(before["AUROC"], abs=0.01)
    ece_in = rows.loc["in-domain test"].iloc[1]["ECE"]
    ece_out = rows.loc["out-of-domain test"].iloc[1]["ECE"]
    assert ece_in < 0.03 < 0.1 < ece_out


def test_learn_page_shows_the_rescaling_lesson(monkeypatch, tmp_path):
    from test_app import open_app

    from first_core.fixtures import write_fixture_store

    at = open_app(monkeypatch, write_fixture_store(tmp_path / "f.duckdb", 30), "pages/learn.py")
    assert any(h.value == "Why not just rescale?" for h in at.header)
    lesson = [d.value for d in at.dataframe if "sample" in d.value.columns]
    assert lesson and len(lesson[0]) == 4
    at.slider(key="learn_ood_s").set_value(5.0).run()
    assert not at.exception
    assert any("s = 5" in c.value for c in at.caption)


def test_the_fit_is_the_same_bits_on_a_cpu_without_avx512(tmp_path):
    """fit.json must be the same on every x86 CPU (the pinned configs' promise): the ECE
    curve came from numpy's float64 exp, whose AVX-512 kernel gave other last bits than its
    AVX2 path, so scripts/cpu_repro_check.py found every student's fit.json different on a
    simulated CPU. A fresh interpreter told there is no AVX-512 (numpy's and numba's own
    switches) must now store the same fit, and give the same confidences (one last bit of
    a confidence is mostly absorbed by the ECE's sums), bit for bit. More rows and columns
    than one block of the compiled kernel."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    sys.path.insert(0, str(root / "scripts"))
    from cpu_repro_check import no_avx512_env

    z, gold = random_logits(11, n=700, m=600)
    np.save(tmp_path / "z.npy", z.astype(np.float32))
    np.save(tmp_path / "gold.npy", gold)
    code = f"""
import json, numpy as np, torch
from first_core.calibration import posthoc
held = posthoc.HeldLogits()
z, gold = np.load({str(tmp_path / "z.npy")!r}), np.load({str(tmp_path / "gold.npy")!r})
held.add(torch.from_numpy(z), gold)
conf = [posthoc.top1_confidence(held.rows(), t).tolist() for t in (0.37, 1.0, 2.3)]
print(json.dumps([posthoc.fit_posthoc(held).to_dict(), conf]))
"""
    runs = [subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True,
                           text=True, check=True, env={**os.environ, **env}).stdout
            for env in ({}, no_avx512_env())]
    assert json.loads(runs[0]) == json.loads(runs[1])
