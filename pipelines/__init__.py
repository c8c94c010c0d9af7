"""Shard sets, manifests, the stage/phase/task model and the executors."""
