"""Metrics: calibration, discrimination and selective prediction, with bootstrap intervals."""
