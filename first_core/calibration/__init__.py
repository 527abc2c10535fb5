"""Recalibration: FIRST's transform and label smoothing, their searches, the NLL temperature
fit, post-hoc scaling.
"""
