"""Exact global ranks and percentiles over a whole shard set."""
