"""Top-k extraction under a multi-process launcher (used by tests/test_topk.py).

    accelerate launch --cpu --num_processes 2 tests/helpers/extract_2proc.py MODEL_DIR OUT N K

Every rank loads the same saved tiny model and builds the same examples; `extract_topk`
splits them between the ranks.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path[:0] = [str(Path(__file__).resolve().parents[2]), str(Path(__file__).resolve().parents[1])]

from first_core.knowledge.answer_topk import extract_topk  # noqa: E402
from helpers.tiny_lm import load_saved, make_examples  # noqa: E402

if __name__ == "__main__":
    torch.set_num_threads(1)
    model_dir, out, n, k = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    model, tokenizer = load_saved(Path(model_dir))
    extract_topk(model, tokenizer, make_examples(n, seed=2, n_options=(2, 4)), out, k=k,
                 coverage_k=10, shard_size=4, batch_size=3, progress=False,
                 manifest_info={"teacher": "tiny"})
