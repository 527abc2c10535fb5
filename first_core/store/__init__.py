"""The DuckDB store: its schema, where it is, checked connections, writes and reads (one
module each), and the writes of imported predictions and pretrained coverage."""
