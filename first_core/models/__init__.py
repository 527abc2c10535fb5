"""Models: loading and building (presets, GGUF, layer subsets), whole-folder checks, the checks
that need the models.
"""
