"""Comparing recorded configs: a config as flat `section.key` values, and the runs of one
pipeline told apart by the config they were made with.

The resume check (`pipeline.check_same_config`) compares a run directory's recorded config
with the new one through `flat_config`. The report, Home and Compare average the seeds of
one pipeline; runs of one pipeline name made with different settings (the same `name`, run
again with other epochs, say) are not seeds of one experiment, so `label_runs` gives each
config of such a pipeline its own label, `NAME [config A]`, `NAME [config B]`, ..., and
`config_notes` says which keys differ. Keys that only pick the seed, the run directory, the
store or which methods are stored (`SEED_LIKE`) do not make another config.
"""

from __future__ import annotations

import json
from typing import Any

import pandas as pd

from .settings import RUN_METHODS, RunConfig

# they choose the seed, where the run is written and which of its runs are stored, not what
# a run of a given method computes
SEED_LIKE = ("seed", "seeds", "name", "runs_dir", "store", "methods")
NO_PIPELINE = "(no pipeline)"
MAX_KEYS_LISTED = 12
MAX_VALUE_CHARS = 40


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(flatten(v, f"{prefix}{k}.") if isinstance(v, dict) else {prefix + k: v})
    return out


def flat_config(cfg: RunConfig) -> dict[str, Any]:
    """The config as config.json records it (through JSON: tuples become lists), flattened."""
    return flatten(json.loads(json.dumps(cfg.to_dict())))


def _recorded(text: Any, method: str) -> dict[str, Any]:
    """A `runs.config` JSON text, flattened; a pipeline run's config lacking a key that a later
    version added counts as that key's default (what the older code did)."""
    try:
        raw = json.loads(text) if isinstance(text, str) and text else {}
    except ValueError:
        raw = {"<unreadable config>": text}
    flat = flatten(raw) if isinstance(raw, dict) else {"<config>": raw}
    if method in RUN_METHODS and "model" in raw:
        flat = {**flat_config(RunConfig()), **flat}
    return {k: v for k, v in flat.items() if k.split(".", 1)[0] not in SEED_LIKE}


def _fingerprint(flat: dict[str, Any]) -> str:
    return json.dumps(flat, sort_keys=True, default=str)


def _letter(i: int) -> str:
    return chr(ord("A") + i) if i < 26 else str(i + 1)


def _groups(runs: pd.DataFrame) -> pd.DataFrame:
    """run_id, pipeline, label, letter (None when the pipeline has one config), flat config."""
    pipeline = (runs["pipeline"] if "pipeline" in runs else pd.Series(None, index=runs.index))
    pipeline = pipeline.fillna(NO_PIPELINE).astype(str)
    configs = runs["config"] if "config" in runs else pd.Series("", index=runs.index)
    methods = runs["method"] if "method" in runs else pd.Series("", index=runs.index)
    flat = [_recorded(c, m) for c, m in zip(configs, methods)]
    out = pd.DataFrame({"run_id": runs["run_id"].to_numpy(), "pipeline": pipeline.to_numpy(),
                        "print": [_fingerprint(f) for f in flat], "flat": flat})
    letters: list[str | None] = [None] * len(out)
    for _, part in out.groupby("pipeline", sort=False):
        order = {p: i for i, p in enumerate(dict.fromkeys(part["print"]))}  # oldest first
        if len(order) > 1:
            for i, p in zip(part.index, part["print"]):
                letters[out.index.get_loc(i)] = _letter(order[p])
    out["letter"] = letters
    out["label"] = [p if x is None else f"{p} [config {x}]"
                    for p, x in zip(out["pipeline"], letters)]
    return out


def label_runs(runs: pd.DataFrame) -> pd.Series:
    """run_id -> the label its rows are grouped under: the pipeline's name (NO_PIPELINE where
    unnamed), or `NAME [config X]` when the pipeline's runs were made with different configs
    (X = A, B, ... in order of the oldest run of each; `runs` as `store.list_runs` gives them,
    oldest first)."""
    if runs.empty:
        return pd.Series(dtype=object)
    groups = _groups(runs)
    return pd.Series(groups["label"].to_numpy(), index=groups["run_id"].to_numpy(),
                     dtype=object)


def _short(value: Any) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= MAX_VALUE_CHARS else text[:MAX_VALUE_CHARS - 3] + "..."


def config_notes(runs: pd.DataFrame, pipeline: str | None = None) -> list[str]:
    """One plain-text line per pipeline split by config: its labels and the keys that differ,
    with each config's value. `pipeline` (a name or a label) keeps that pipeline's line."""
    if runs.empty:
        return []
    groups = _groups(runs)
    notes = []
    for name, part in groups[groups["letter"].notna()].groupby("pipeline", sort=False):
        if pipeline is not None and pipeline != name and pipeline not in set(part["label"]):
            continue
        firsts = part.drop_duplicates("letter")
        keys = sorted(set().union(*(f.keys() for f in firsts["flat"])))
        differ = [k for k in keys if len({_fingerprint({k: f.get(k)}) for f in firsts["flat"]}) > 1]
        listed = [f"{k} (" + ", ".join(f"{x}: {_short(f.get(k))}" for x, f in
                                       zip(firsts["letter"], firsts["flat"])) + ")"
                  for k in differ[:MAX_KEYS_LISTED]]
        more = (f"; and {len(differ) - MAX_KEYS_LISTED} more key(s)"
                if len(differ) > MAX_KEYS_LISTED else "")
        notes.append(f"Pipeline {name!r} holds runs made with {len(firsts)} different configs, "
                     f"so they are not averaged as seeds of one experiment: each config is its "
                     f"own row ({', '.join(firsts['label'])}). They differ in "
                     f"{len(differ)} key(s): {'; '.join(listed)}{more}. Give each config its "
                     "own `name` to keep them apart.")
    return notes
