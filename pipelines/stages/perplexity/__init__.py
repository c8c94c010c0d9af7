"""Perplexity under a small LM, with cc_net buckets."""
