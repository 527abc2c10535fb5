"""Task data: loaders and validators for multiple-choice and instruction files, the embedded
tasks, Hugging Face data sets.
"""
