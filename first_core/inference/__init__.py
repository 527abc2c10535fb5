"""Batched forward passes and reductions where the logits are."""
