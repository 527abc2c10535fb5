"""Evaluation: a trained model's predictions and metrics on each split."""
