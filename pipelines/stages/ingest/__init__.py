"""Raw files into a shard set."""
