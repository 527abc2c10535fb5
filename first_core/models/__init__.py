"""Models: loading (specs, `load_model`, the `from_pretrained` path), building (presets, GGUF,
layer subsets), token encodings with a target span, whole-folder checks, the checks that need
the models.
"""
