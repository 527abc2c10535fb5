"""Importing other tools' predictions (tables, lm-eval, OpenAI Batch, lighteval) as pipelines
of the store.
"""
