"""Shard sets, manifests, the stage/phase/task model and the executors."""

import os

# Arrow's default allocator (mimalloc) keeps what a task freed committed, in every thread's heap, even
# after `release_unused`: a task that briefly decoded a big row group left its process 100+ MB larger
# for good: MinHash of 1M documents peaked at 447 MiB, and at 365 MiB with the system allocator, trimmed
# after each task (the executor calls `release_unused`, which trims it), at about the same CPU time.
# Set before pyarrow loads (it reads the choice once) and passed on to spawned workers; a value the user
# exported wins.
os.environ.setdefault("ARROW_DEFAULT_MEMORY_POOL", "system")
