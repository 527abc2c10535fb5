"""Configuration: the TOML schema and its checks, comparing recorded configs, `report_to`
values.
"""
