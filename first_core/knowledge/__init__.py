"""Concentrated knowledge: the teacher's top-k per target position, stored as sharded Parquet
with a manifest. One store format with two layouts (the answer position, one row per example;
every response token, one row per token): `manifest` (the format), `coverage`, `shards`
(writing), `reader` (reading), `extraction` (what both extraction loops share) and the two
loops, `answer_topk` and `token_topk`.
"""
