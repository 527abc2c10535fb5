"""config_diff: which runs of one pipeline are seeds of one config, and what differs."""

from __future__ import annotations

import json

import pandas as pd

from first_core.config.loading import load_config
from first_core.config.diff import NO_PIPELINE, config_notes, flat_config, label_runs


def runs(*rows: tuple[str, str | None, dict | str]) -> pd.DataFrame:
    return pd.DataFrame([{"run_id": r, "pipeline": p, "method": "first_ts",
                          "config": c if isinstance(c, str) else json.dumps(c)}
                         for r, p, c in rows])


def cfg(*sets: str) -> dict:
    return load_config(None, ["name='demo'", *sets]).to_dict()


def test_seed_like_keys_do_not_make_another_config():
    frame = runs(("a", "demo", cfg("seed=0")),
                 ("b", "demo", cfg("seed=5", "seeds=[5, 6]", "runs_dir='x'", "store='y.duckdb'",
                                   "methods=['teacher_ft', 'first_ts']")))
    assert label_runs(frame).to_dict() == {"a": "demo", "b": "demo"}
    assert config_notes(frame) == []


def test_a_key_a_later_version_added_counts_as_its_default():
    old = cfg()
    del old["cpu_kernels"]
    frame = runs(("a", "demo", old), ("b", "demo", cfg()), ("c", "demo", cfg("cpu_kernels='avx2'")))
    assert label_runs(frame).to_dict() == {"a": "demo [config A]", "b": "demo [config A]",
                                           "c": "demo [config B]"}
    (note,) = config_notes(frame)
    assert 'cpu_kernels (A: "native", B: "avx2")' in note and "1 key(s)" in note


def test_other_pipelines_and_unnamed_runs_are_their_own_groups():
    frame = runs(("a", "demo", cfg()), ("b", "other", cfg("distill.ce_weight=0.5")),
                 ("c", None, {"fixture": True}), ("d", "demo", cfg("topk.k=3")))
    assert label_runs(frame).to_dict() == {"a": "demo [config A]", "b": "other",
                                           "c": NO_PIPELINE, "d": "demo [config B]"}
    assert len(config_notes(frame)) == 1
    assert config_notes(frame, "other") == []
    assert config_notes(frame, "demo [config B]") == config_notes(frame, "demo")


def test_flat_config_round_trips_through_json():
    flat = flat_config(load_config(None, ["seeds=[1, 2]"]))
    assert flat["seeds"] == [1, 2] and flat["teacher_train.epochs"] == 3.0
