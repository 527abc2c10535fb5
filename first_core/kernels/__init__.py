"""Compiled (numba) hot loops: ECE over a temperature grid, the risk-coverage sort, the host
top-k, the bin rule.
"""
