"""The engine every stage stands on: stage model, plan, fingerprints, executors (local, Slurm), shards,
manifest, lock, recipes."""
