"""Which model a spec names, checked early, and the one entry point that loads it.

A spec is a preset name (`presets`), a GGUF file or a layer subset (`builds`: built once into
a safetensors folder), or a folder / hub id. `check_model_spec` fails at config time, naming
the key, when a spec meant as a local path points at nothing; `load_model` refuses a preset
that was never built, builds what must be built, and reads the folder through
`pretrained.load_pretrained` (safetensors only, no remote code unless asked).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch

from ..errors import ConfigError, FirstError
from .builds import build_model, gguf_path, is_gguf, is_subset, needs_build, parse_subset
from .presets import PRESETS, is_preset
from .pretrained import DTYPES, load_pretrained, looks_like_path


def check_model_spec(spec: str, where: str) -> None:
    """Fail at once (naming the config key `where`) when `spec` is meant as a local path and
    nothing is there, instead of after the stages before the first load. A GGUF spec must
    name a file that exists (in its package), a layer subset a base that passes this check."""
    if is_subset(spec):
        return check_model_spec(parse_subset(str(spec))[1], where)
    if is_gguf(spec):
        try:
            gguf_path(spec)
        except FirstError as exc:
            raise ConfigError(f"{where}: {exc}") from None
        return None
    local = not is_preset(spec) and looks_like_path(str(spec))
    if local and not Path(spec).expanduser().exists():
        raise ConfigError(f"{where}: model path {spec!r} does not exist (a preset "
                          f"{sorted(PRESETS)}, a Hugging Face id `org/name` or a local folder)")


def load_model(spec: str | os.PathLike[str], *, trust_remote_code: bool = False,
               dtype: str = "float32", device: str | torch.device | None = None,
               build_dir: str | os.PathLike[str] | None = None):
    """Load `(model, tokenizer)` from a local directory or a Hugging Face hub id.

    A GGUF or layer-subset spec (see `build_model`) is first built into a folder under
    `build_dir` (default: `first-lab-models` in the temporary directory), once.

    Weights are read from safetensors only. The tokenizer gets a pad token (its eos) when it
    has none, because training and batched inference pad. Errors a user can cause (missing
    files, an unreachable hub id, a preset name that was never built) raise `FirstError`.
    """
    if is_preset(spec):
        raise FirstError(f"model {spec!r} is a preset: build it first with "
                         "build_preset(name, texts, out_dir, seed) and load out_dir")
    if dtype not in DTYPES:
        raise ConfigError(f"model.dtype: expected one of {sorted(DTYPES)}, got {dtype!r}")
    if needs_build(spec):  # GGUF / layer subset: built once into a folder, then loaded as one
        spec = build_model(spec, build_dir or Path(tempfile.gettempdir()) / "first-lab-models")
    return load_pretrained(spec, trust_remote_code=trust_remote_code, dtype=dtype,
                           device=device)
