"""A model folder in and out: `from_pretrained` with safetensors only, and `publish`.

Every model, preset or real, is finally read here: `from_pretrained` on a directory or a hub
id, safetensors only (no pickle from user paths), `trust_remote_code` off unless asked, the
tokenizer given a pad token when it has none. Everything the project writes as a model
folder (presets, GGUF conversions, layer subsets) goes out through `publish`, a rename, so a
folder is either whole or absent. This module knows nothing of presets or built specs
(`loading.load_model` resolves those first), so the builders can load their base from here
without an import cycle.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
from pathlib import Path

import torch

from ..errors import FirstError
from .files import check_folder_layout, is_load_error

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def pick_device(device: str | torch.device | None = None) -> torch.device:
    """`device` if given, else this rank's CUDA device when available, else CPU."""
    if device is not None:
        return torch.device(device)
    if torch.cuda.is_available():  # under torchrun / accelerate each rank owns one GPU
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device("cpu")


_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?")


def looks_like_path(spec: str) -> bool:
    """A hub id is `name` or `org/name`; anything else is meant as a local path (and must
    not fall through to a slow, failing hub download). `org/name` whose `org` is a folder
    here (`models/my-llama`) is a path too: a typo in it would otherwise be retried online."""
    return (spec.startswith((".", "/", "~")) or spec.count("/") > 1 or spec.endswith("/")
            or (os.sep != "/" and os.sep in spec) or not _HUB_ID.fullmatch(spec)
            or ("/" in spec and Path(spec.split("/", 1)[0]).is_dir()))


def load_pretrained(spec: str | os.PathLike[str], *, trust_remote_code: bool = False,
                    dtype: str = "float32", device: str | torch.device | None = None):
    """`(model, tokenizer)` from a saved folder or a hub id (`loading.load_model` is the
    entry point: it refuses presets and builds GGUF / subset specs before calling this)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(spec).expanduser()
    if not path.exists() and looks_like_path(str(spec)):
        raise FirstError(f"model path {path}: no such directory")
    if path.exists():
        if not path.is_dir():
            raise FirstError(f"model path {path}: expected a directory saved with "
                             "save_pretrained, got a file")
        check_folder_layout(path)
    if trust_remote_code:
        log.warning("trust_remote_code is on for %s: its Python code will run on this machine",
                    spec)
    kwargs = dict(trust_remote_code=trust_remote_code)
    try:
        source = str(path) if path.exists() else str(spec)
        tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
        model = AutoModelForCausalLM.from_pretrained(source, dtype=DTYPES[dtype],
                                                     use_safetensors=True, **kwargs)
    except Exception as exc:  # noqa: BLE001 - damaged files only (is_load_error)
        if not is_load_error(exc):
            raise
        raise FirstError(f"model {spec}: cannot load it ({type(exc).__name__}: "
                         f"{str(exc)[:300]})") from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.config.pad_token_id = tokenizer.pad_token_id
    return model.to(pick_device(device)), tokenizer


def publish(model, tokenizer, out: Path) -> Path:
    """save_pretrained model + tokenizer into a temporary sibling, then rename to `out`."""
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
    return out
