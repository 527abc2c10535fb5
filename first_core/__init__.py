"""first-lab: trustworthy distillation (FIRST, Shum et al. 2024) of language models.

The package reads like the pipeline: data -> models -> finetune -> topk -> calibrate ->
distill -> evaluate -> store. See docs/DESIGN.md for the contracts between modules.
"""

__version__ = "0.1.0"
