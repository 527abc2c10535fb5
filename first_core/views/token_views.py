"""Per-token stores of the instruction setting: coverage along the response, one example's
top-k at every response token before and after the FIRST transform, and where a run's
store lives."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from ..calibrate import check_temperature
from .example_rows import _top5_text


def token_coverage_by_position(store_dir: str | os.PathLike[str],
                               max_position: int | None = None) -> pd.DataFrame:
    """Per response position of a per-token top-k store (instruction setting): how many tokens
    sit there, and the teacher's mean top-1 and top-k mass at them (streamed shard by shard).

    The coverage curve over K for all response tokens is the store's `topk_coverage` rows
    (the paper's figure 2); this is the same mass seen along the response.
    """
    import pyarrow.compute as pc

    from ..topk_tokens import iter_token_shards

    counts = top1 = topk = np.zeros(0)
    for table in iter_token_shards(store_dir, columns=["position", "topk_probs"]):
        pos = table.column("position").to_numpy().astype(np.int64)
        if max_position is not None:
            pos = np.minimum(pos, max_position)  # the last bin gathers the long tail
        k = table.column("topk_probs").type.list_size
        probs = pc.list_flatten(table.column("topk_probs")).to_numpy().astype(
            np.float64).reshape(-1, k)
        width = max(len(counts), int(pos.max()) + 1 if len(pos) else 0)
        grow = lambda a: np.pad(a, (0, width - len(a)))  # noqa: E731
        counts = grow(counts) + np.bincount(pos, minlength=width)
        top1 = grow(top1) + np.bincount(pos, weights=probs[:, 0], minlength=width)
        topk = grow(topk) + np.bincount(pos, weights=probs.sum(1), minlength=width)
    seen = counts > 0
    return pd.DataFrame({"position": np.flatnonzero(seen), "n_tokens": counts[seen].astype(int),
                         "mean_top1": top1[seen] / counts[seen],
                         "mean_topk": topk[seen] / counts[seen]})


def token_topk_view(store_dir: str | os.PathLike[str], example_id: str, c: float,
                    tokenizer=None) -> pd.DataFrame:
    """One example of a per-token store: a row per response token with the token, the
    teacher's top-k ids (and their text when a tokenizer is given), the raw probabilities,
    and the same after the FIRST transform softmax(p / c) (what the student is trained on)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from ..calibrate import temperature_scale
    from ..topk_tokens import read_token_manifest

    check_temperature(c)
    m = read_token_manifest(store_dir)
    parts = [pq.read_table(os.path.join(store_dir, s["file"]),
                           filters=[("example_id", "==", example_id)]) for s in m.shards]
    table = pa.concat_tables(parts)
    if table.num_rows == 0:
        raise ValueError(f"example_id: {example_id!r} is not in {store_dir}")
    frame = table.to_pandas().sort_values("position", ignore_index=True)
    raw = np.stack(frame["topk_probs"].to_numpy()).astype(np.float64)
    ids = np.stack(frame["topk_ids"].to_numpy()).astype(np.int64)
    out = pd.DataFrame({"position": frame["position"], "token_id": frame["token_id"],
                        "gold_rank": frame["gold_rank_in_topk"], "topk_ids": ids.tolist(),
                        "raw_probs": raw.tolist(),
                        "first_probs": temperature_scale(raw, c, mode="first").tolist()})
    if tokenizer is not None:
        uniq = np.unique(np.r_[ids.ravel(), out["token_id"].to_numpy()]).tolist()
        text = dict(zip(uniq, tokenizer.batch_decode([[i] for i in uniq])))
        out.insert(2, "token", [text[i] for i in out["token_id"].tolist()])
        out["topk_tokens"] = [[text[i] for i in row] for row in ids.tolist()]
    return out


def instruct_run_dir(config_json: str | Mapping[str, object] | None) -> Path | None:
    """The run folder of a run whose stored config (the runs table's `config`) is of the
    instruction setting (`data.kind = "instruct"`), else None. Resolved as the pipeline does
    (`RunConfig.run_dir`: `runs_dir/name`, `/seed<N>` with `seeds`); a relative `runs_dir` is
    relative to the dashboard's working directory, as it was to the pipeline's."""
    from ..config import RunConfig

    raw = json.loads(config_json) if isinstance(config_json, str) else (config_json or {})
    if not isinstance(raw, Mapping) or (raw.get("data") or {}).get("kind") != "instruct":
        return None
    try:
        return RunConfig(name=str(raw["name"]), runs_dir=str(raw["runs_dir"]),
                         seed=int(raw.get("seed", 0)), seeds=raw.get("seeds")).run_dir
    except (KeyError, TypeError, ValueError):
        return None


def token_example_ids(store_dir: str | os.PathLike[str]) -> list[str]:
    """The examples of a per-token store, in store order (the per-token view's picker)."""
    from ..topk_tokens import iter_token_shards

    seen: dict[str, None] = {}
    for table in iter_token_shards(store_dir, columns=["example_id"]):
        seen.update(dict.fromkeys(table.column("example_id").unique().to_pylist()))
    return list(seen)


def load_tokenizer(folder: str | os.PathLike[str]):
    """The tokenizer saved with a model folder (the fine-tuned teacher's), read locally only."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(folder), local_files_only=True)


def token_view_table(view: pd.DataFrame, c: float) -> pd.DataFrame:
    """`token_topk_view`'s rows as plain-text cells: each response token, the teacher's top-k
    at it before ("raw") and after the FIRST transform at `c`, and whether the token itself
    is among them (its rank, or "-")."""
    tokens = view["topk_tokens"] if "topk_tokens" in view else view["topk_ids"]
    return pd.DataFrame({
        "position": view["position"],
        "token": view["token"] if "token" in view else view["token_id"].astype(str),
        "rank in top-k": [str(r + 1) if r >= 0 else "-" for r in view["gold_rank"]],
        "teacher top-k (raw)": [_top5_text(t, p) for t, p in zip(tokens, view["raw_probs"])],
        f"after FIRST, c = {c:g}": [_top5_text(t, p)
                                    for t, p in zip(tokens, view["first_probs"])]})
