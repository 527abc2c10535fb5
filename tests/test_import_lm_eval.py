"""`python -m first_core import` of lm-evaluation-harness output (issue 29): a real
`lm_eval --log_samples` run on SmolLM2-135M, the committed fixtures of tests/fixtures/lm_eval
(README there: which are real, which hand-made) and every refusal."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from first_core.store.reads import list_runs, load_examples, load_metrics, load_predictions
from first_core.__main__ import main
from first_core.errors import DataError
from first_core.importer.run import import_file

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "lm_eval"
REAL = FIXTURES / "real-0.4.13"
HAND = FIXTURES / "handmade"


def cli(capsys, *args) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


def hand(name: str) -> Path:
    return next(HAND.glob(f"samples_{name}_*.jsonl"))


def plain_ece(conf: np.ndarray, ok: np.ndarray, n_bins: int = 10) -> float:
    """Equal-width ECE written as a loop (bins (lo, hi], the first one closed at 0)."""
    total = 0.0
    for b in range(n_bins):
        lo, hi = b / n_bins, (b + 1) / n_bins
        members = [i for i, c in enumerate(conf) if (lo < c <= hi) or (b == 0 and c == 0)]
        if members:
            acc = sum(ok[i] for i in members) / len(members)
            mean = sum(conf[i] for i in members) / len(members)
            total += len(members) / len(conf) * abs(acc - mean)
    return total


def softmax(lls: list[float]) -> np.ndarray:
    e = np.exp(np.asarray(lls) - max(lls))
    return e / e.sum()


def check_against_lm_eval(folder: Path, target: Path) -> None:
    """The three checks of issue 29 on an imported lm-eval folder."""
    results_file = next(folder.rglob("results_*.json"))
    results = json.loads(results_file.read_text())
    samples = [json.loads(x) for x in next(folder.rglob("samples_*.jsonl")).read_text()
               .splitlines()]
    task = next(iter(results["results"]))
    run_id = f"{task}/imported/seed0"
    acc = load_metrics(target, run_id, split="test", convention="paper",
                       metric="accuracy")["value"].item()
    assert acc == results["results"][task]["acc,none"]  # exactly
    norm = load_metrics(target, f"{task}-acc_norm/imported/seed0", split="test",
                        convention="paper", metric="accuracy")["value"].item()
    assert norm == results["results"][task]["acc_norm,none"]
    preds = load_predictions(target, run_id, "test").set_index("example_id")
    conf = []
    for s in samples:
        want = softmax([float(r[0]) for r in s["filtered_resps"]])
        got = np.asarray(preds.loc[str(s["doc_id"]), "option_probs"])
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-15)
        conf.append(want.max())
        assert bool(preds.loc[str(s["doc_id"]), "correct"]) == (s["acc"] == 1.0)
    ok = np.asarray([s["acc"] == 1.0 for s in samples])
    ece = load_metrics(target, run_id, split="test", convention="paper",
                       metric="ece")["value"].item()
    assert ece == pytest.approx(plain_ece(np.asarray(conf), ok), abs=1e-12)


# ------------------------------------------------------------------ a real lm_eval run

CSQA_TASK = """task: csqa_first
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "Question: {{{{question}}}}\\nAnswer:"
doc_to_choice: choices
doc_to_target: label
metric_list:
  - metric: acc
  - metric: acc_norm
"""


def test_a_real_lm_eval_run_imports_with_its_own_accuracy(tmp_path, shared_csqa,
                                                          smollm2_teacher_dir):
    if importlib.util.find_spec("lm_eval") is None:
        pytest.skip("lm-eval is not installed (requirements-dev.txt)")
    data = tmp_path / "csqa.jsonl"
    with data.open("w") as out:
        for line in shared_csqa.read_text().splitlines()[:12]:
            r = json.loads(line)
            labels = [c["label"] for c in r["question"]["choices"]]
            out.write(json.dumps({"question": r["question"]["stem"],
                                  "choices": [c["text"] for c in r["question"]["choices"]],
                                  "label": labels.index(r["answerKey"])}) + "\n")
    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks" / "csqa_first.yaml").write_text(CSQA_TASK.format(data=data))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_CACHE": str(tmp_path / "hf"),
           "OMP_NUM_THREADS": "2"}
    out_dir = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "lm_eval", "--model", "hf", "--model_args",
         f"pretrained={smollm2_teacher_dir[1]},dtype=float32", "--tasks", "csqa_first",
         "--include_path", str(tmp_path / "tasks"), "--device", "cpu", "--batch_size", "30",
         "--log_samples", "--output_path", str(out_dir)],
        env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    target = tmp_path / "s.duckdb"
    result = import_file(out_dir, store_path=target)
    assert [r[0] for r in result.runs] == ["csqa_first", "csqa_first-acc_norm"]
    assert [r[2] for r in result.runs] == [12, 12]
    check_against_lm_eval(out_dir, target)


# ------------------------------------------------------------------ committed real run

def test_committed_real_run_folder_and_its_cli(tmp_path, capsys):
    target = tmp_path / "s.duckdb"
    code, out, err = cli(capsys, "import", REAL, "--store", target)
    assert code == 0, err
    assert "as pipeline 'csqa_local'" in out and "as pipeline 'csqa_local-acc_norm'" in out
    check_against_lm_eval(REAL, target)
    runs = list_runs(target).set_index("pipeline")
    assert runs.loc["csqa_local", "model"].endswith("SmolLM2-135M-Instruct.Q4_1-3776ab9f")
    assert "acc_norm" in runs.loc["csqa_local-acc_norm", "config"]
    text = load_examples(target, dataset="import:csqa_local").set_index("example_id")
    assert list(text.loc["0", "choices"]) == ["get mad", "compile", "debug", "write code",
                                              "get frustrated"]
    assert text.loc["0", "question"].startswith("Question: The program kept getting errors")


def test_one_samples_file_takes_name_and_zip_of_the_folder_works(tmp_path):
    samples = next(REAL.rglob("samples_*.jsonl"))
    target = tmp_path / "s.duckdb"
    result = import_file(samples, "mine", target)
    assert [r[0] for r in result.runs] == ["mine", "mine-acc_norm"]
    archive = tmp_path / "run.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for p in REAL.rglob("*"):
            z.write(p, Path("out") / p.relative_to(REAL))
    result = import_file(archive, store_path=tmp_path / "z.duckdb")
    assert [r[2] for r in result.runs] == [20, 20]
    check_against_lm_eval(REAL, tmp_path / "z.duckdb")


def test_results_acc_that_the_samples_do_not_give_is_refused(tmp_path):
    folder = tmp_path / "run"
    shutil.copytree(REAL, folder)
    results = next(folder.rglob("results_*.json"))
    record = json.loads(results.read_text())
    record["results"]["csqa_local"]["acc,none"] = 0.35
    results.write_text(json.dumps(record))
    with pytest.raises(DataError, match=r"results\.csqa_local\.acc,none: the tool reports "
                                        r"accuracy 0\.35, its per-item rows give 0\.3"):
        import_file(folder, store_path=tmp_path / "s.duckdb")
    assert not (tmp_path / "s.duckdb").exists()


# ------------------------------------------------------------------ hand-made layouts

def test_0_4_0_json_array_layout_reads_like_the_new_one(tmp_path):
    old = HAND / "pretrained__smollm2_csqa_local.jsonl"
    assert old.read_text().startswith("[")
    import_file(old, "old", tmp_path / "s.duckdb")
    import_file(hand("text_target"), "new", tmp_path / "s.duckdb")
    a = load_predictions(tmp_path / "s.duckdb", "old/imported/seed0")
    b = load_predictions(tmp_path / "s.duckdb", "new/imported/seed0")
    assert len(a) == 5
    np.testing.assert_array_equal(np.stack(a["option_probs"]), np.stack(b["option_probs"]))
    assert a["correct"].tolist() == b["correct"].tolist()


def test_text_target_gives_the_same_gold_as_the_index(tmp_path):
    first = [json.loads(x) for x in next(REAL.rglob("samples_*.jsonl")).read_text()
             .splitlines()[:5]]
    import_file(hand("text_target"), "t", tmp_path / "s.duckdb")
    preds = load_predictions(tmp_path / "s.duckdb", "t/imported/seed0")
    assert preds["gold"].tolist() == ["ABCDE"[int(r["target"])] for r in first]


def test_duplicate_doc_lines_identical_read_once_different_refused(tmp_path, capsys):
    code, out, err = cli(capsys, "import", hand("dup_same"), "--name", "d", "--store",
                         tmp_path / "s.duckdb")
    assert code == 0 and "imported 5 predictions" in out
    assert f"{hand('dup_same')}:6: doc_id 2 (filter 'none') repeats line 3; read once" in err
    code, _, err = cli(capsys, "import", hand("dup_other"), "--name", "e", "--store",
                       tmp_path / "s.duckdb")
    assert code == 2 and f"error: {hand('dup_other')}:6: doc_id: doc_id 2 with filter " \
                         "'none' is already on line 3" in err


def test_mutual_info_keeps_the_first_n_entries(tmp_path):
    import_file(hand("mutual_info"), "mi", tmp_path / "s.duckdb")
    preds = load_predictions(tmp_path / "s.duckdb", "mi/imported/seed0")
    rows = [json.loads(x) for x in hand("mutual_info").read_text().splitlines()]
    for got, r in zip(preds["option_probs"], rows):
        n = len(r["filtered_resps"]) // 2
        np.testing.assert_allclose(got, softmax([float(x[0]) for x in r["filtered_resps"][:n]]))


def test_winogrande_like_text_target_takes_the_gold_from_acc(tmp_path):
    import_file(hand("winogrande_like"), "wg", tmp_path / "s.duckdb")
    preds = load_predictions(tmp_path / "s.duckdb", "wg/imported/seed0")
    assert set(preds["gold"]) == {"B"}  # the gold the hand-made acc was written for
    text = load_examples(tmp_path / "s.duckdb", dataset="import:wg")
    assert all(c[0].startswith("The ") for c in text["choices"])


@pytest.mark.parametrize("name, line, words", [
    ("gsm_like", 1, "arguments: a generate_until sample"),
    ("no_target", 4, "target: missing"),
])
def test_refusals_name_file_line_and_field(tmp_path, capsys, name, line, words):
    code, _, err = cli(capsys, "import", hand(name), "--name", "x", "--store",
                       tmp_path / "s.duckdb")
    assert code == 2 and err.startswith(f"error: {hand(name)}:{line}: {words}"), err
    assert "Traceback" not in err and not (tmp_path / "s.duckdb").exists()


@pytest.mark.parametrize("change, words", [
    (lambda r: r.update(target="nothing like it"), "target: 'nothing like it' is neither an "
                                                   "option index (0-4) nor one of the option"),
    (lambda r: r.update(target="[0, 2]"), "target: several gold options"),
    (lambda r: r.update(acc=1.0 - r["acc"]), "acc: the sample says acc = "),
    (lambda r: r["filtered_resps"].pop(), "filtered_resps: 4 log-likelihoods for 5 requests"),
    (lambda r: r["filtered_resps"][1].__setitem__(0, "nan"), "filtered_resps: not a finite"),
    (lambda r: r.pop("arguments"), "arguments: missing"),
    (lambda r: r.pop("doc_id"), "doc_id: missing"),
    (lambda r: (r.pop("filtered_resps"), r.pop("resps")), "filtered_resps: missing"),
    (lambda r: r["arguments"]["gen_args_1"].update(arg_0=None), "arguments: each request "
                                                                "must hold a context"),
    (lambda r: r.update(filtered_resps=["the answer"] * 5), "filtered_resps: generated text, "
                                                            "not log-likelihoods"),
    (lambda r: (r.update(arguments={"gen_args_0": r["arguments"]["gen_args_0"]}),
                r.update(filtered_resps=r["filtered_resps"][:1])),
     "arguments: 1 options; 2 to 26 can be imported"),
    (lambda r: (r.update(arguments={k: {"arg_0": f"ctx {k}", "arg_1": " same"}
                                    for k in r["arguments"]})),
     "target: '1' is the continuation shared by every option"),
])
def test_a_sample_the_format_does_not_allow_is_refused(tmp_path, capsys, change, words):
    rows = [json.loads(x) for x in next(REAL.rglob("samples_*.jsonl")).read_text()
            .splitlines()[:4]]
    change(rows[2])
    f = tmp_path / "samples_t_2026-01-01T00-00-00.000001.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    code, _, err = cli(capsys, "import", f, "--store", tmp_path / "s.duckdb")
    assert code == 2 and err.startswith(f"error: {f}:3: {words}"), err


def test_a_generate_until_task_in_a_folder_is_left_out_with_a_note(tmp_path, capsys):
    folder = tmp_path / "run"
    shutil.copytree(REAL, folder)
    inner = next(folder.rglob("results_*.json")).parent
    shutil.copy(hand("gsm_like"), inner / hand("gsm_like").name)
    code, out, err = cli(capsys, "import", folder, "--store", tmp_path / "s.duckdb")
    assert code == 2 and "gsm_like" in err and "generate_until" in err
    record = json.loads(next(inner.glob("results_*.json")).read_text())
    record["configs"]["gsm_like"] = {"output_type": "generate_until"}
    next(inner.glob("results_*.json")).write_text(json.dumps(record))
    code, out, err = cli(capsys, "import", folder, "--store", tmp_path / "s.duckdb")
    assert code == 0 and "task gsm_like is generate_until, not multiple_choice; left out" in err


def test_a_zip_that_would_unpack_outside_its_folder_is_refused(tmp_path, capsys):
    archive = tmp_path / "evil.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("../outside.jsonl", "{}\n")
    code, _, err = cli(capsys, "import", archive, "--store", tmp_path / "s.duckdb")
    assert code == 2 and err.startswith(f"error: {archive}: member '../outside.jsonl' would "
                                        "unpack outside the folder"), err
    assert not (tmp_path / "outside.jsonl").exists()


def test_a_folder_of_several_models_asks_for_one(tmp_path, capsys):
    for model in ("m1", "m2"):
        shutil.copytree(REAL / "SmolLM2-135M-Instruct",
                        tmp_path / "out" / model)
    code, _, err = cli(capsys, "import", tmp_path / "out", "--store", tmp_path / "s.duckdb")
    assert code == 2 and "results of 2 models (m1, m2); import one model's folder" in err, err


def test_a_line_that_is_not_an_object_and_a_folder_without_samples(tmp_path, capsys):
    f = tmp_path / "samples_t_2026-01-01T00-00-00.000001.jsonl"
    f.write_text("[1, 2]\n")
    code, _, err = cli(capsys, "import", f, "--format", "lm-eval", "--name", "x", "--store",
                       tmp_path / "s.duckdb")
    assert code == 2 and f"error: {f}:1: each sample must be a JSON object" in err, err
    folder = tmp_path / "out"
    folder.mkdir()
    shutil.copy(next(REAL.rglob("results_*.json")), folder)
    code, _, err = cli(capsys, "import", folder, "--store", tmp_path / "s.duckdb")
    assert code == 2 and f"error: {folder}: no samples_*.jsonl: run lm_eval with " \
                         "--log_samples" in err, err


def test_each_filter_of_a_task_is_its_own_run(tmp_path, capsys):
    rows = [json.loads(x) for x in next(REAL.rglob("samples_*.jsonl")).read_text()
            .splitlines()[:4]]
    other = [dict(r, filter="maj@2", filtered_resps=r["filtered_resps"][::-1],
                  acc=None, acc_norm=None) for r in rows]
    for r in other:
        del r["acc"], r["acc_norm"]
    f = tmp_path / "samples_t_2026-01-01T00-00-00.000001.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in rows + other))
    result = import_file(f, store_path=tmp_path / "s.duckdb")
    assert [r[0] for r in result.runs] == ["t", "t-acc_norm", "t-maj_2"]
    plain = load_predictions(tmp_path / "s.duckdb", "t/imported/seed0")
    flipped = load_predictions(tmp_path / "s.duckdb", "t-maj_2/imported/seed0")
    np.testing.assert_allclose(np.stack(flipped["option_probs"]),
                               np.stack(plain["option_probs"])[:, ::-1])
