"""Is a model folder whole? Cheap checks of its files, before anything trains on it.

A `model.safetensors` cut short (a copy interrupted, a disk that filled up) or a
`tokenizer.json` that is not valid JSON otherwise surfaces deep inside `from_pretrained` as
a `SafetensorError`, a `JSONDecodeError` or a bare `Exception` from the tokenizers library,
and, for a student, only after the teacher's training, top-k and calibration stages. These
checks read the config, every safetensors header (which records where each tensor ends, so
a short file is found without reading the weights) and the tokenizer: a few milliseconds
per folder, so the `models` stage and the check before the first stage can afford them, and
`models.build_model` uses them to tell a damaged cached conversion from a whole one.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..errors import FirstError


def is_load_error(exc: BaseException) -> bool:
    """An exception that says a model's files are damaged, not that the code is wrong:
    OS and value errors (JSON included), safetensors' own error, and the bare `Exception`
    the tokenizers library raises for a tokenizer.json it cannot parse."""
    return (isinstance(exc, (OSError, ValueError, KeyError))
            or type(exc).__name__ == "SafetensorError" or type(exc) is Exception)


def check_folder_layout(path: Path, what: str | None = None) -> None:
    """Fail before `from_pretrained` with a message that says what the directory lacks
    (an empty folder would otherwise say "Should have a `model_type` key")."""
    names = {p.name for p in path.iterdir()}
    missing = []
    if "config.json" not in names:
        missing.append("config.json")
    if not {"model.safetensors", "model.safetensors.index.json"} & names:
        pickled = sorted(n for n in names if n.endswith((".bin", ".pt", ".pth", ".ckpt")))
        hint = (f" (found only pickle weights {pickled}, which are refused for safety; convert "
                "them to safetensors)" if pickled else "")
        missing.append(f"weights: model.safetensors or model.safetensors.index.json{hint}")
    if not {"tokenizer.json", "tokenizer_config.json", "tokenizer.model"} & names:
        missing.append("a tokenizer (tokenizer.json / tokenizer_config.json)")
    if missing:
        head = f"{what}: " if what else ""
        raise FirstError(f"{head}model directory {path}: missing " + "; ".join(missing))


def read_config(folder: Path, what: str) -> dict[str, Any]:
    """config.json of `folder` as a dict; `FirstError` naming the file when it is not JSON."""
    path = folder / "config.json"
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise FirstError(f"{what}: {path}: cannot read it ({exc})") from None
    if not isinstance(config, dict):
        raise FirstError(f"{what}: {path}: not a JSON object")
    return config


def weight_files(folder: Path) -> list[Path]:
    """The safetensors files of `folder`: model.safetensors, or the shards its index names."""
    index = folder / "model.safetensors.index.json"
    if not index.exists():
        return [folder / "model.safetensors"]
    try:
        names = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise FirstError(f"{index}: not a safetensors index ({exc})") from None
    return [folder / name for name in names]


def check_weights(folder: Path, what: str) -> None:
    """Every safetensors file of `folder` opens and is as long as its header says."""
    from safetensors import safe_open
    for path in weight_files(folder):
        if not path.is_file():
            raise FirstError(f"{what}: {path}: missing (the folder needs safetensors weights)")
        try:
            with safe_open(str(path), framework="pt") as f:
                f.keys()
        except Exception as exc:  # noqa: BLE001 - filtered by is_load_error
            if not is_load_error(exc):
                raise
            raise FirstError(f"{what}: {path}: damaged or cut short ({exc}); copy or build "
                             "the model again") from None


def load_tokenizer(folder: Path | str, what: str, trust_remote_code: bool = False):
    """The tokenizer of a folder (or hub id); `FirstError` naming its files when it is
    damaged."""
    from transformers import AutoTokenizer
    try:
        return AutoTokenizer.from_pretrained(str(folder), trust_remote_code=trust_remote_code)
    except Exception as exc:  # noqa: BLE001 - filtered by is_load_error
        if not is_load_error(exc):
            raise
        raise FirstError(f"{what}: the tokenizer of {folder} cannot be read "
                         f"({type(exc).__name__}: {str(exc)[:200]}); tokenizer.json or "
                         "tokenizer_config.json is damaged") from None


def check_model_files(folder: Path | str, what: str, trust_remote_code: bool = False):
    """config.json, the weights' headers and the tokenizer of a local model folder; returns
    the tokenizer. Raises `FirstError` naming `what` (the config key) and the file."""
    folder = Path(folder)
    check_folder_layout(folder, what)
    read_config(folder, what)
    check_weights(folder, what)
    return load_tokenizer(folder, what, trust_remote_code)
