"""The top-k store's format: its two layouts, its `manifest.json`, and reading that back.

One store format holds the teacher's top-k at every *target position*, in one of two layouts:

- `ANSWER`: one row per example, at the answer position (the multiple-choice setting: an
  answer is a response one token long). Its manifest records no `layout` (the stores of
  earlier versions did not), which is how it is told apart.
- `TOKENS` (`"long-per-token"`): one row per response token (the instruction setting), long
  format; the manifest says `layout = "long-per-token"`.

One `Manifest` type describes both. Its JSON is written with each layout's own field names
(the ones earlier versions wrote: `n_tokens` and `bytes_per_token_measured` for tokens,
`template` for answers), so a store is written byte for byte as before and a store of an
earlier version is read as it is (`to_json` / `from_json`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from ..errors import StoreError

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
ANSWER = "answer-position"  # never written: a manifest without `layout` is of this layout
TOKENS = "long-per-token"
DTYPES = {"float16": (pa.float16(), np.float16), "float32": (pa.float32(), np.float32)}
# the column that holds each row's target token (the gold answer letter, or the response
# token the row's distribution predicts)
TARGET_COLUMN = {ANSWER: "gold_token_id", TOKENS: "token_id"}
_NAMES = {ANSWER: "an answer-position", TOKENS: "a per-token"}

# manifest.json per layout: the shared fields under their own names, and these (field ->
# name in the JSON); what a layout does not list is not written for it
_SHARED = ("k", "coverage_k", "vocab_size", "dtype", "teacher", "dataset_hash",
           "examples_hash", "config_hash", "n_examples", "n_gold_in_topk", "n_processes",
           "shards", "coverage", "info", "schema_version")
_OWN = {ANSWER: {"bytes_per_position_measured": "bytes_per_position_measured",
                 "template": "template"},
        TOKENS: {"n_positions": "n_tokens", "bytes_per_position_measured":
                 "bytes_per_token_measured", "max_length": "max_length", "layout": "layout"}}
_OPTIONAL = {"info", "template"}  # a manifest of an earlier version may lack them


@dataclass(frozen=True)
class Manifest:
    """What a top-k store holds and where it came from (`manifest.json`)."""

    layout: str  # ANSWER or TOKENS
    k: int
    coverage_k: int
    vocab_size: int
    dtype: str
    teacher: str
    dataset_hash: str  # the caller's data-set hash, else `examples_hash`
    examples_hash: str  # content hash of the examples (and the answer layout's template)
    config_hash: str
    n_examples: int
    n_positions: int  # rows: one per example (ANSWER), one per response token (TOKENS)
    n_gold_in_topk: int
    n_processes: int
    shards: list[dict[str, Any]]  # [{"file": name, "rows": n}] in row order
    coverage: dict[str, list[float]]  # mean / p10 / p50 / p90 for K = 1..coverage_k
    bytes_per_position_measured: float  # topk_ids + topk_probs on disk / n_positions
    template: dict[str, str] = field(default_factory=dict)  # ANSWER: the prompt template
    max_length: int | None = None  # TOKENS: the tokens a sequence was cut to
    info: dict[str, Any] = field(default_factory=dict)  # the rest of `manifest_info`
    schema_version: int = SCHEMA_VERSION

    def to_json(self) -> dict[str, Any]:
        """The JSON object of `manifest.json`, with this layout's field names."""
        own = _OWN[self.layout]
        return {**{n: getattr(self, n) for n in _SHARED},
                **{name: getattr(self, f) for f, name in own.items()}}

    @classmethod
    def from_json(cls, raw: Mapping[str, Any], where: str | Path,
                  layout: str | None = None) -> Manifest:
        """Read a manifest of either layout; `StoreError` when it is not one, is of another
        layout than `layout` (when given), too new, or lacks a field."""
        on_disk = raw.get("layout")
        have = ANSWER if on_disk is None else TOKENS if on_disk == TOKENS else None
        if have is None or (layout is not None and have != layout):
            raise StoreError(f"{where}: not {_NAMES.get(layout, 'a')} top-k store "
                             f"(layout {raw.get('layout')!r})")
        version = raw.get("schema_version")
        if not isinstance(version, int):
            raise StoreError(f"{where}: schema_version is missing or not an integer")
        if version > SCHEMA_VERSION:
            raise StoreError(f"{where}: written by a newer first-lab (top-k schema version "
                             f"{version}; this one reads up to {SCHEMA_VERSION}); upgrade")
        own = {name: f for f, name in _OWN[have].items() if f != "layout"}
        missing = [n for n in (*_SHARED, *own) if n not in raw and n not in _OPTIONAL]
        if missing:
            raise StoreError(f"{where}: manifest lacks fields {missing}")
        values = {n: raw[n] for n in _SHARED if n in raw}
        values.update({f: raw[name] for name, f in own.items() if name in raw})
        if have == ANSWER:
            values["n_positions"] = raw["n_examples"]  # one row per example
        return cls(layout=have, **values)


def write_manifest(folder: Path, manifest: Manifest) -> None:
    """`manifest.json` of `manifest`; written last, so the store is done when it exists."""
    (folder / MANIFEST).write_text(json.dumps(manifest.to_json(), indent=2, sort_keys=True),
                                   encoding="utf-8")


def manifest_json(store_dir: str | os.PathLike[str]) -> tuple[Path, dict[str, Any]]:
    """(path, JSON object) of a store's manifest; `StoreError` when missing or unreadable."""
    path = Path(store_dir) / MANIFEST
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise StoreError(f"{path}: no top-k manifest; the top-k stage has not finished "
                         "(rerun it)") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise StoreError(f"{path}: unreadable manifest: {exc}") from None
    if not isinstance(raw, dict):
        raise StoreError(f"{path}: manifest is not a JSON object")
    return path, raw


def read_manifest(store_dir: str | os.PathLike[str], layout: str | None = None) -> Manifest:
    """The manifest of a finished store; `StoreError` when missing, unreadable, too new or
    (with `layout`) of the other layout."""
    path, raw = manifest_json(store_dir)
    return Manifest.from_json(raw, path, layout)


def store_matches(store_dir: str | os.PathLike[str], **expected: Any) -> bool:
    """A finished store whose manifest has these values: the top-k stages' resume test, per
    split (a split whose store matches is kept after a kill)."""
    try:
        m = read_manifest(store_dir)
    except StoreError:
        return False
    return all(getattr(m, key) == value for key, value in expected.items())


def check_expected(manifest: Manifest, where: Path, **expected: Any) -> None:
    """Refuse a store made for another teacher, data set or vocabulary (`None`: unchecked)."""
    for name, want in expected.items():
        have = getattr(manifest, name)
        if want is not None and have != want:
            raise StoreError(f"{where}: {name} mismatch: the store has {have!r}, expected "
                             f"{want!r}; re-extract the top-k for this teacher and data set")

