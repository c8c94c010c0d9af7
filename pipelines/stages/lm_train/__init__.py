"""Training small LMs from shard sets (KenLM, GPT-2 proxy)."""
