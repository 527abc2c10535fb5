"""Concentrated knowledge: the teacher's top-k per target position, stored as sharded Parquet
with a manifest.
"""
