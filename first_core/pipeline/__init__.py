"""The pipeline: stages of both settings, resume, locks, names, the demo's coverage step."""
