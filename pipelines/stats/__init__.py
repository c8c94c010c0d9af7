"""Exact global ranks and percentiles over a whole shard set, in bounded memory.

- `order`: a float score as an unsigned integer that sorts like it, a seeded tie-break hash of the id,
  and the rule for missing scores.
- `runs`: per-task sorted runs on disk and the exact k-th element of their union, read streaming.
- `top_fraction`: rank keys and the exact cutoff for "keep the best fraction" (`filter --top-fraction`,
  `select less`).
- `percentile_buckets`: exact percentiles and cc_net's head/middle/tail buckets, overall or per group
  (`perplexity`).

Missing scores, one rule for all of them: a score that is null or NaN is missing. A missing score is not
part of the population that is ranked: a fraction is a share of the rows that have a score, percentiles
are taken over those rows only, a row with a missing score is never in a top fraction and gets a null
bucket. Every other value is a number, -0.0 equal to 0.0, and -inf and +inf rank below and above every
finite score (in percentiles too).
"""
