"""Per-token top-k extraction under a multi-process launcher (used by tests/test_instruct.py).

    torchrun --nproc_per_node 2 tests/helpers/extract_tokens_2proc.py MODEL_DIR DATA_DIR OUT N
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path[:0] = [str(Path(__file__).resolve().parents[2]), str(Path(__file__).resolve().parents[1])]

from first_core.knowledge.token_topk import extract_token_topk  # noqa: E402
from helpers.tiny_instruct import load_saved, make_examples  # noqa: E402

if __name__ == "__main__":
    torch.set_num_threads(1)
    model_dir, data_dir, out, n = sys.argv[1], Path(sys.argv[2]), sys.argv[3], int(sys.argv[4])
    model, tokenizer = load_saved(Path(model_dir))
    extract_token_topk(model, tokenizer, make_examples(data_dir, n), out, k=3, coverage_k=8,
                       shard_size=40, batch_size=5, max_length=64,
                       manifest_info={"teacher": "tiny"})
