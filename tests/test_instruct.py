"""The instruction-tuning setting: per-token SFT, top-k, distillation, and the pipeline end to
end on configs/instruct-tiny.toml."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pytest
import torch

from first_core.config.settings import TrainConfig
from first_core.training.distill import distill_tokens, distill_trainer, teacher_targets
from first_core.errors import ConfigError, FirstError
from first_core.evaluation.instruct_eval import token_confidences
from first_core.models.encoding import encode_responses
from first_core.training.sft import SFTTrainer, finetune_responses
from first_core.training.targets import (LOGITS_MODES, TargetCollator, TargetDataset,
                                         logits_mode, target_logits)
from first_core.training.trainer import training_arguments
from first_core.knowledge.coverage import coverage_table
from first_core.knowledge.manifest import TOKENS, read_manifest
from first_core.knowledge.reader import load_topk
from first_core.knowledge.token_topk import extract_token_topk
from helpers.instruct_run import cli as _cli, run_instruct_tiny
from helpers.tiny_instruct import make_examples, make_model, save_model

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder = tmp_path_factory.mktemp("instruct")
    examples = make_examples(folder, n=24)
    model, tok = make_model(examples)
    return folder, examples, model, tok


def _batch(tok, examples, max_length=64):
    enc = encode_responses(tok, examples, max_length)
    items = [{"input_ids": s, "target_start": r, "index": i}
             for i, (s, r) in enumerate(zip(enc.input_ids, enc.target_start))]
    return enc, TargetCollator(tok.pad_token_id, "response")(items)


def _reference_rows(model, tok, examples, max_length=64):
    """Per example, unbatched full forward: logits at t - 1 for every response token t."""
    enc = encode_responses(tok, examples, max_length)
    rows, targets = [], []
    with torch.no_grad():
        for ids, start in zip(enc.input_ids, enc.target_start):
            logits = model(input_ids=torch.tensor([ids])).logits[0]
            rows.append(logits[start - 1:len(ids) - 1])
            targets += ids[start:]
    return torch.cat(rows), torch.tensor(targets)


def test_encoding_appends_eos_and_cuts_long_pairs(tiny) -> None:
    _, examples, _, tok = tiny
    enc = encode_responses(tok, examples[:3], 64)
    for ex, ids, start in zip(examples, enc.input_ids, enc.target_start):
        assert ids[:start] == tok(ex.prompt)["input_ids"]
        assert ids[start:] == tok(ex.response, add_special_tokens=False)["input_ids"] + [
            tok.eos_token_id]
    short = encode_responses(tok, examples[:3], 12)
    assert all(len(s) <= 12 and len(s) - r >= 1 for s, r in
               zip(short.input_ids, short.target_start))
    assert all(s[0] == tok.bos_token_id for s in short.input_ids)


def test_response_logits_are_the_full_forward_at_the_response_tokens(tiny) -> None:
    _, examples, model, tok = tiny
    _, batch = _batch(tok, examples[:7])
    ref, ref_t = _reference_rows(model, tok, examples[:7])
    assert logits_mode(model) == "mask"  # Llama slices its hidden states by a boolean mask
    for mode in LOGITS_MODES:
        with torch.no_grad():
            logits, targets = target_logits(model, batch, keep_only=mode)
        assert logits.shape == ref.shape and (targets == ref_t).all(), mode
        torch.testing.assert_close(logits, ref, atol=1e-5, rtol=1e-5)


def test_response_sft_loss_is_the_models_own_loss_on_response_labels(tiny, tmp_path) -> None:
    _, examples, model, tok = tiny
    _, batch = _batch(tok, examples[:6])
    trainer = SFTTrainer(model=model, args=training_arguments(
        tmp_path, TrainConfig(loss_on="response"), 0), processing_class=tok,
        data_collator=TargetCollator(tok.pad_token_id, "response"),
        train_dataset=TargetDataset(encode_responses(tok, examples[:6], 64)), per_token=True)
    with torch.no_grad():
        mine = trainer.compute_loss(model, batch)
        hf = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                   labels=batch["labels"]).loss  # transformers' causal-LM loss, mean over labels
    torch.testing.assert_close(mine, hf, atol=1e-5, rtol=1e-5)
    with pytest.raises(ConfigError, match='loss_on = "response"'):
        finetune_responses(model, tok, examples, tmp_path / "x", TrainConfig(), seed=0)


def test_token_topk_has_a_row_per_response_token_equal_to_the_reference(tiny, tmp_path) -> None:
    _, examples, model, tok = tiny
    m = extract_token_topk(model, tok, examples, tmp_path / "s", k=3, coverage_k=8,
                           shard_size=40, batch_size=5, max_length=64,
                           manifest_info={"teacher": "tiny", "dataset_hash": "d"})
    store = load_topk(tmp_path / "s", expect_teacher="tiny", expect_dataset_hash="d",
                      layout=TOKENS)
    enc = encode_responses(tok, examples, 64)
    assert m.n_positions == enc.n_tokens() == len(store.ids) and m.n_examples == len(examples)
    assert len(m.shards) == -(-m.n_positions // 40)  # ceil: sharded by rows
    counts = [enc.n_targets(i) for i in range(len(enc))]
    assert store.example_ids.tolist() == [e.id for e, c in zip(examples, counts)
                                          for _ in range(c)]
    assert store.positions.tolist() == [p for c in counts for p in range(c)]
    ref, ref_t = _reference_rows(model, tok, examples)
    p, i = torch.topk(torch.softmax(ref, -1), 3)
    np.testing.assert_array_equal(store.ids, i.numpy())
    np.testing.assert_allclose(store.probs, p.numpy(), atol=1e-5)
    np.testing.assert_array_equal(store.gold_ids, ref_t.numpy())
    gold = np.where((i == ref_t[:, None]).any(1), (i == ref_t[:, None]).int().argmax(1), -1)
    np.testing.assert_array_equal(store.gold_rank, gold)
    # coverage over all response tokens: mean cumulative top-K mass
    full = torch.softmax(ref, -1).sort(descending=True).values.cumsum(-1)[:, :8].mean(0)
    np.testing.assert_allclose(m.coverage["mean"], full.numpy(), atol=1e-5)
    cov = coverage_table(m)
    assert cov.n_positions.iloc[0] == m.n_positions and cov.bytes_per_position.iloc[2] > 0
    from first_core.errors import StoreError
    with pytest.raises(StoreError, match="teacher mismatch"):
        load_topk(tmp_path / "s", expect_teacher="other", layout=TOKENS)


def test_token_extraction_with_two_processes_matches_one(tiny, tmp_path) -> None:
    folder, examples, _, _ = tiny
    model_dir = save_model(examples, tmp_path / "m")
    from helpers.tiny_instruct import load_saved
    model, tok = load_saved(model_dir)
    extract_token_topk(model, tok, examples, tmp_path / "one", k=3, coverage_k=8,
                       shard_size=40, batch_size=5, max_length=64,
                       manifest_info={"teacher": "tiny"})
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
           "2", str(ROOT / "tests" / "helpers" / "extract_tokens_2proc.py"), str(model_dir),
           str(tmp_path / "data"), str(tmp_path / "two"), str(len(examples))]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
        _, err = proc.communicate(timeout=180)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        raise
    assert proc.returncode == 0, err[-3000:]
    one, two = (load_topk(tmp_path / name, layout=TOKENS) for name in ("one", "two"))
    assert (two.manifest.n_processes, two.manifest.n_positions) == (2, one.manifest.n_positions)
    assert {s["file"][:9] for s in two.manifest.shards} == {"part-r000", "part-r001"}
    assert two.example_ids.tolist() == one.example_ids.tolist()
    np.testing.assert_array_equal(two.ids, one.ids)
    np.testing.assert_allclose(two.probs, one.probs, atol=1e-6)
    np.testing.assert_allclose(two.manifest.coverage["mean"], one.manifest.coverage["mean"],
                               atol=1e-9)


def _store_and_targets(model, tok, examples, folder):
    extract_token_topk(model, tok, examples, folder, k=4, coverage_k=8, batch_size=6,
                       max_length=64)
    s = load_topk(folder, layout=TOKENS)
    return s, teacher_targets(s.probs, "first", 0.3)


def _grads(model) -> torch.Tensor:
    return torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])


def test_distillation_mean_over_step_tokens_under_gradient_accumulation(tiny, tmp_path) -> None:
    """One step of 8 examples (accumulation 1) and of 2 x 4 (accumulation 2): the same
    gradient, equal to that of the mean per-token KL computed independently."""
    _, examples, teacher, tok = tiny
    ex = examples[:8]
    s, q = _store_and_targets(teacher, tok, ex, tmp_path / "s")
    grads = {}
    for ga, bs in ((1, 8), (2, 4)):
        student, _ = make_model(examples, seed=5)
        cfg = TrainConfig(loss_on="response", batch_size=bs, gradient_accumulation_steps=ga)
        tr = distill_trainer(student, tok, encode_responses(tok, ex, cfg.max_length),
                             s.example_ids, s.ids, q, tmp_path / f"o{ga}", cfg,
                             store_token_ids=s.gold_ids)
        items = [tr.train_dataset[i] for i in range(8)]
        batches = [tr.data_collator(items[j:j + bs]) for j in range(0, 8, bs)]
        n_items = tr._get_num_items_in_batch(batches, torch.device("cpu"))
        assert int(n_items) == len(s.ids)  # the Trainer counts every response token
        tr.current_gradient_accumulation_steps = ga
        student.zero_grad()
        for b in batches:
            tr.training_step(student, b, n_items)
        grads[ga] = _grads(student)
    torch.testing.assert_close(grads[2], grads[1], atol=1e-6, rtol=1e-5)
    # independent: per example unbatched full forward, sum of the KL over every token / T
    student, _ = make_model(examples, seed=5)
    enc = encode_responses(tok, ex, 64)
    losses = []
    for ids, start in zip(enc.input_ids, enc.target_start):
        losses.append(student(input_ids=torch.tensor([ids])).logits[0, start - 1:len(ids) - 1])
    log_q = torch.log_softmax(torch.cat(losses), -1).gather(1, torch.as_tensor(s.ids).long())
    qt = torch.as_tensor(q, dtype=torch.float32)
    kl = (qt * (torch.log(qt) - log_q)).sum(1).mean()
    kl.backward()
    torch.testing.assert_close(grads[1], _grads(student), atol=1e-6, rtol=1e-4)


def test_distillation_refuses_a_store_of_other_tokens(tiny, tmp_path) -> None:
    _, examples, teacher, tok = tiny
    s, q = _store_and_targets(teacher, tok, examples[:6], tmp_path / "s")
    student, _ = make_model(examples, seed=1)
    cfg = TrainConfig(loss_on="response", batch_size=4, epochs=1)
    wrong = s.gold_ids.copy()
    wrong[3] += 1
    with pytest.raises(FirstError, match="differ from its response tokens"):
        distill_tokens(student, tok, examples[:6], s.example_ids, wrong, s.ids, q,
                       tmp_path / "o", cfg)
    with pytest.raises(FirstError, match="no stored rows"):
        distill_tokens(student, tok, examples[:7], s.example_ids, s.gold_ids, s.ids, q,
                       tmp_path / "o", cfg)
    short = TrainConfig(loss_on="response", batch_size=4, epochs=1, max_length=16)
    with pytest.raises(FirstError, match="target tokens but"):
        distill_tokens(student, tok, examples[:6], s.example_ids, s.gold_ids, s.ids, q,
                       tmp_path / "o", short)


@pytest.mark.parametrize("content, match", [
    (None, "no top-k manifest"),
    ("{not json", "unreadable manifest"),
    ("[1, 2]", "not a JSON object"),
    ('{"k": 5, "schema_version": 1}', "not a per-token top-k store \\(layout None\\)"),
    ('{"layout": "long-per-token", "schema_version": 99}', "newer first-lab"),
    ('{"layout": "long-per-token", "schema_version": 1}', "lacks fields"),
])
def test_a_bad_token_manifest_is_one_clear_error(tmp_path, content, match) -> None:
    if content is not None:
        (tmp_path / "manifest.json").write_text(content, encoding="utf-8")
    with pytest.raises(FirstError, match=match) as err:
        read_manifest(tmp_path, TOKENS)
    assert str(tmp_path / "manifest.json") in str(err.value)


def test_token_confidences_match_the_reference(tiny) -> None:
    _, examples, model, tok = tiny
    conf, correct = token_confidences(model, tok, examples[:9], batch_size=4, max_length=64)
    ref, t = _reference_rows(model, tok, examples[:9])
    p, i = torch.softmax(ref.double(), -1).max(-1)
    np.testing.assert_allclose(conf, p.numpy(), atol=1e-6)
    np.testing.assert_array_equal(correct, (i == t).numpy())


def test_token_metrics_rank_the_tokens_as_the_answer_position_does() -> None:
    """Per-token evaluation (the instruction setting's in-domain split) stores AUROC and AURC
    beside ECE, as every evaluation does (issue 21): AUROC equal to scikit-learn's."""
    from sklearn.metrics import roc_auc_score

    from first_core.evaluation.instruct_eval import token_metrics
    from first_core.metrics.selective import aurc

    rng = np.random.default_rng(3)
    conf = rng.choice([0.3, 0.5, 0.7, 0.9], size=400)  # ties, as real confidences have
    correct = rng.random(400) < conf
    rows = token_metrics(conf, correct, n_boot=50).set_index("metric")
    assert rows.loc["auroc", "value"] == pytest.approx(roc_auc_score(correct, conf))
    assert rows.loc["aurc", "value"] == pytest.approx(aurc(conf, correct))
    for name in ("auroc", "aurc"):
        assert rows.loc[name, "ci_low"] <= rows.loc[name, "value"] <= rows.loc[name, "ci_high"]


# ------------------------------------------------------------------ end to end


def test_instruct_tiny_end_to_end(tiny_instruct_run) -> None:
    work, proc = tiny_instruct_run
    run = work / "runs" / "instruct-tiny"
    rec = lambda stage: json.loads((run / "stages" / f"{stage}.json").read_text())
    from first_core.data.instruct_data import load_instruct
    from first_core.pipeline.instruct_stages import instruct_template
    from first_core.config.loading import load_config
    from first_core.models.loading import load_model
    cfg = load_config(ROOT / "configs" / "instruct-tiny.toml")
    _, tok = load_model(str(run / "models" / "teacher_ft" / "final"))
    # top-k stored at every response token of every split, checked against a re-tokenisation
    for split in ("train", "val", "test"):
        ex = load_instruct(work / rec("data")["instruct_files"][split], "auto",
                           instruct_template(cfg))
        enc = encode_responses(tok, ex, cfg.teacher_train.max_length)
        store = load_topk(run / "topk" / split, layout=TOKENS)
        assert store.manifest.n_positions == enc.n_tokens() > len(ex)
        keys = pd.MultiIndex.from_arrays([store.example_ids, store.positions])
        want = pd.MultiIndex.from_tuples([(e.id, p) for i, e in enumerate(ex)
                                          for p in range(enc.n_targets(i))])
        assert keys.equals(want)
    n_train = read_manifest(run / "topk" / "train", TOKENS).n_positions
    # the students were distilled over all of them, and their weights moved
    from safetensors.torch import load_file
    init = load_file(run / "models" / "student_init" / "model.safetensors")
    for m in ("student_distill", "first_ls", "first_ts"):
        assert rec(m)["n_train_tokens"] == n_train
        trained = load_file(run / "models" / m / "final" / "model.safetensors")
        assert any(not torch.equal(init[k], trained[k]) for k in init)
    n_val = read_manifest(run / "topk" / "val", TOKENS).n_positions
    assert rec("calibrate")["n_val_tokens"] == n_val
    # first_ts evaluated on the multiple-choice OOD split, token metrics on val / test
    con = duckdb.connect(str(work / "first.duckdb"), read_only=True)
    preds = con.execute("SELECT split, count(*) FROM predictions WHERE run_id = "
                        "'instruct-tiny/first_ts/seed0' GROUP BY split").fetchall()
    assert preds == [("test_ood", cfg.data.n_test)]
    mets = con.execute("SELECT split, metric FROM metrics WHERE run_id = "
                       "'instruct-tiny/first_ts/seed0' AND convention = 'paper'").fetchall()
    assert {("val", "ece"), ("test", "accuracy"), ("test", "auroc"), ("test", "aurc"),
            ("test_ood", "ece"), ("test_ood", "trust")} <= set(mets)
    cov = con.execute("SELECT max(n_positions) FROM topk_coverage").fetchone()[0]
    assert cov == n_train
    assert "OOD Acc" in proc.stdout and "| first_ts |" in proc.stdout  # Table 1 printed


def test_instruct_rerun_skips_and_bad_config_is_one_line(tiny_instruct_run, tmp_path) -> None:
    work, _ = tiny_instruct_run
    again = run_instruct_tiny(work)
    assert again.returncode == 0 and again.stdout.count("done earlier, skipped") == 20
    bad = _cli("run", "--config", str(ROOT / "configs" / "instruct-tiny.toml"),
               "--set", "teacher_train.loss_on='answer'", "--set", f"runs_dir='{tmp_path}'",
               cwd=tmp_path)
    assert bad.returncode == 2 and bad.stderr.startswith("error: ")
    assert 'teacher_train.loss_on: data.kind = "instruct"' in bad.stderr.splitlines()[0]
    assert "Traceback" not in bad.stderr


def test_views_of_a_per_token_store(tiny, tmp_path) -> None:
    from first_core.calibration.transforms import temperature_scale
    from first_core.views.token_views import token_coverage_by_position, token_topk_view
    _, examples, model, tok = tiny
    extract_token_topk(model, tok, examples, tmp_path / "s", k=3, coverage_k=3, shard_size=25,
                       batch_size=5, max_length=64)
    s = load_topk(tmp_path / "s", layout=TOKENS)
    by_pos = token_coverage_by_position(tmp_path / "s")
    frame = pd.DataFrame({"position": s.positions, "top1": s.probs[:, 0],
                          "topk": s.probs.sum(1)}).groupby("position")
    np.testing.assert_array_equal(by_pos.n_tokens, frame.size().to_numpy())
    np.testing.assert_allclose(by_pos.mean_top1, frame.top1.mean().to_numpy(), atol=1e-6)
    np.testing.assert_allclose(by_pos.mean_topk, frame.topk.mean().to_numpy(), atol=1e-6)
    capped = token_coverage_by_position(tmp_path / "s", max_position=2)
    assert capped.position.tolist() == [0, 1, 2] and capped.n_tokens.sum() == len(s.ids)
    ex = examples[4]
    view = token_topk_view(tmp_path / "s", ex.id, 0.3, tokenizer=tok)
    rows = s.example_ids == ex.id
    assert view.position.tolist() == list(range(rows.sum()))
    assert " ".join(view.token[:-1]) == ex.response and view.token.iloc[-1] == tok.eos_token
    np.testing.assert_allclose(np.array(view.raw_probs.tolist()), s.probs[rows], atol=1e-6)
    np.testing.assert_allclose(np.array(view.first_probs.tolist()),
                               temperature_scale(s.probs[rows], 0.3, mode="first"), atol=1e-9)
    with pytest.raises(ValueError, match="not in"):
        token_topk_view(tmp_path / "s", "nope", 0.3)
