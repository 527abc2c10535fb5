"""Per-token stores of the instruction setting: coverage along the response, one example's
top-k at every response token before and after the FIRST transform, and where a run's
store lives (`own_run_folder`: only a folder the store's own run wrote is ever read)."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ..calibration.transforms import check_temperature
from .example_rows import top5_text


def token_coverage_by_position(store_dir: str | os.PathLike[str],
                               max_position: int | None = None) -> pd.DataFrame:
    """Per response position of a per-token top-k store (instruction setting): how many tokens
    sit there, and the teacher's mean top-1 and top-k mass at them (streamed shard by shard).

    The coverage curve over K for all response tokens is the store's `topk_coverage` rows
    (the paper's figure 2); this is the same mass seen along the response.
    """
    import pyarrow.compute as pc

    from ..knowledge.manifest import TOKENS, read_manifest
    from ..knowledge.reader import fit_rounding, iter_shards

    manifest = read_manifest(store_dir, TOKENS)
    counts = top1 = topk = np.zeros(0)
    for table in iter_shards(store_dir, columns=["position", "topk_probs"], layout=TOKENS):
        pos = table.column("position").to_numpy().astype(np.int64)
        if max_position is not None:
            pos = np.minimum(pos, max_position)  # the last bin gathers the long tail
        k = table.column("topk_probs").type.list_size
        probs = fit_rounding(pc.list_flatten(table.column("topk_probs")).to_numpy().astype(
            np.float64).reshape(-1, k), manifest, Path(store_dir))  # old float16 rows: as read
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

    from ..calibration.transforms import temperature_scale
    from ..knowledge.manifest import TOKENS, read_manifest
    from ..knowledge.reader import fit_rounding

    check_temperature(c)
    m = read_manifest(store_dir, TOKENS)
    parts = [pq.read_table(os.path.join(store_dir, s["file"]),
                           filters=[("example_id", "==", example_id)]) for s in m.shards]
    table = pa.concat_tables(parts)
    if table.num_rows == 0:
        raise ValueError(f"example_id: {example_id!r} is not in {store_dir}")
    frame = table.to_pandas().sort_values("position", ignore_index=True)
    # float16 rows of older versions can sum a hair above 1: repaired as `load_topk` does
    raw = fit_rounding(np.stack(frame["topk_probs"].to_numpy()).astype(np.float64), m,
                       Path(store_dir))
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
    from ..config.settings import RunConfig

    try:  # a store is data: its config may be anything (not JSON, `data` not an object)
        raw = json.loads(config_json) if isinstance(config_json, str) else (config_json or {})
    except ValueError:
        return None
    data = raw.get("data") if isinstance(raw, Mapping) else None
    if not isinstance(data, Mapping) or data.get("kind") != "instruct":
        return None
    try:
        return RunConfig(name=str(raw["name"]), runs_dir=str(raw["runs_dir"]),
                         seed=int(raw.get("seed", 0)), seeds=raw.get("seeds")).run_dir
    except (KeyError, TypeError, ValueError, OverflowError):
        return None


class RunFolderError(ValueError):
    """A stored config names a folder that is not one of the store's own runs: not read."""


@dataclass(frozen=True)
class RunFolder:
    """The checked paths of a run folder the Coverage page reads (all resolved)."""

    root: Path
    train: Path  # topk/train, per-token store
    val: Path    # topk/val
    tokenizer: Path | None  # models/teacher_ft/final, None when not there


def run_roots(store_path: str | os.PathLike[str]) -> list[Path]:
    """Where the dashboard reads run folders from: the folder holding the store file (a
    store beside its runs, as the tests and a copied experiment keep them) and `runs/` of
    the working directory (the default `runs_dir`, beside the default `data/first.duckdb`)."""
    return [Path(store_path).resolve().parent, Path("runs").resolve()]


# config keys that pick the store and its rows, not what the run folder holds: a rerun that
# only changes them rewrites the folder's config.json but leaves other stores' rows as they were
_NOT_IN_FOLDER = ("store", "methods")


def _inside(path: Path, folder: Path, what: str) -> Path:
    """`path` resolved (symlinks followed), refused unless it stays inside `folder`."""
    resolved = path.resolve()
    if not resolved.is_relative_to(folder):
        raise RunFolderError(f"{what} {path} resolves to {resolved}, outside {folder}")
    return resolved


def _checked_store(folder: Path, root: Path) -> Path:
    """A per-token store inside the run folder whose manifest lists only files inside it."""
    from ..knowledge.manifest import manifest_json

    if not folder.is_dir():
        raise FileNotFoundError(2, "no per-token top-k store", str(folder))
    store_dir = _inside(folder, root, "top-k store")
    where, manifest = manifest_json(store_dir)
    shards = manifest.get("shards")
    files = [s.get("file") if isinstance(s, Mapping) else None
             for s in (shards if isinstance(shards, list) else [None])]
    for name in files:
        if not isinstance(name, str) or name in ("", ".", "..") or Path(name).name != name:
            raise RunFolderError(f"{where}: lists a shard {name!r} that is not a plain file "
                                 "name in its folder")
        _inside(store_dir / name, store_dir, "shard")
    return store_dir


def own_run_folder(config_json: str | Mapping[str, object] | None,
                   roots: Sequence[str | os.PathLike[str]]) -> RunFolder | None:
    """The run folder of an instruction-setting run (`instruct_run_dir`), read only if it is
    one of the store's own runs, else None for a run of another setting.

    Own means: the folder, resolved with its symlinks, lies inside the stored config's
    `runs_dir` (so no `..` in a name) and inside one of `roots` (`run_roots`: the store's
    folder, ./runs), and holds the `config.json` the pipeline wrote for that very run (equal
    to the stored config, up to `_NOT_IN_FOLDER`); each top-k store read from it lists only
    shard files inside it. A folder that is simply absent raises `FileNotFoundError` (the
    run's files are on another machine); any other failure a `RunFolderError`."""
    try:
        return _own_run_folder(config_json, roots)
    except (FileNotFoundError, RunFolderError):
        raise
    except (OSError, ValueError) as exc:  # a NUL byte, a name over 255 bytes, ...
        raise RunFolderError(f"the run folder this run's stored config names cannot be "
                             f"a folder here ({type(exc).__name__}: {exc})") from None


def _own_run_folder(config_json: str | Mapping[str, object] | None,
                    roots: Sequence[str | os.PathLike[str]]) -> RunFolder | None:
    run_dir = instruct_run_dir(config_json)
    if run_dir is None:
        return None
    raw = json.loads(config_json) if isinstance(config_json, str) else dict(config_json or {})
    base = Path(str(raw["runs_dir"])).resolve()
    folder = _inside(run_dir, base, "run folder")
    allowed = [Path(r).resolve() for r in roots]
    if not any(folder.is_relative_to(r) for r in allowed):
        raise RunFolderError(f"run folder {folder}: outside the folders the dashboard reads "
                             f"runs from ({', '.join(map(str, allowed))})")
    if not folder.is_dir():
        raise FileNotFoundError(2, "no such run folder", str(run_dir))
    try:
        written = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise RunFolderError(f"run folder {folder}: no readable config.json, so not a run "
                             "folder of first-lab") from None
    mine = {k: v for k, v in raw.items() if k not in _NOT_IN_FOLDER}
    if not isinstance(written, dict) or {k: v for k, v in written.items()
                                         if k not in _NOT_IN_FOLDER} != mine:
        raise RunFolderError(f"run folder {folder}: its config.json is not this run's config "
                             "(another run's folder)")
    tokenizer = folder / "models" / "teacher_ft" / "final"
    try:
        tokenizer = _inside(tokenizer, folder, "teacher folder") if tokenizer.is_dir() else None
    except RunFolderError:
        tokenizer = None  # token ids instead of their text
    return RunFolder(folder, _checked_store(folder / "topk" / "train", folder),
                     _checked_store(folder / "topk" / "val", folder), tokenizer)


def token_example_ids(store_dir: str | os.PathLike[str]) -> list[str]:
    """The examples of a per-token store, in store order (the per-token view's picker)."""
    from ..knowledge.manifest import TOKENS
    from ..knowledge.reader import iter_shards

    seen: dict[str, None] = {}
    for table in iter_shards(store_dir, columns=["example_id"], layout=TOKENS):
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
        "teacher top-k (raw)": [top5_text(t, p) for t, p in zip(tokens, view["raw_probs"])],
        f"after FIRST, c = {c:g}": [top5_text(t, p)
                                   for t, p in zip(tokens, view["first_probs"])]})
