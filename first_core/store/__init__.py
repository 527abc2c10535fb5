"""The DuckDB store: schema, writes, reads."""
