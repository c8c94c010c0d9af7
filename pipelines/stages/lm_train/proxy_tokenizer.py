"""The phase both proxy-LM stages (`lm train-proxy`, `reweight doremi`) start with: train a byte-level BPE
tokenizer on an evenly spaced sample of the shard set's documents."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from thresher.pipelines.engine import storage
from thresher.pipelines.engine.errors import ThresherError
from thresher.pipelines.engine.shards import ShardSet, iter_batches
from thresher.pipelines.engine.stage import PhaseSpec, TaskContext, TaskResult, TaskSpec


def tokenizer_phase(shard_set: ShardSet, sample_docs: int) -> PhaseSpec:
    """One task over every shard, reading about `sample_docs` documents (every n-th row)."""
    every = max(1, -(-shard_set.num_rows // sample_docs))
    inputs = tuple(str(s.path) for s in shard_set.shards)
    return PhaseSpec("tokenizer", [TaskSpec("tokenizer", inputs, {"every": every}, shard_set.num_rows)])


def train_tokenizer_task(
    task: TaskSpec, tc: TaskContext, text_column: str, vocab_size: int, out: Path
) -> TaskResult:
    """Run the tokenizer task: train, write `out` atomically (recorded in the manifest), report counts."""
    from thresher.pipelines.engine.atomic import atomic_path
    from thresher.pipelines.engine.digest import file_digest
    from thresher.pipelines.engine.manifest import FileRecord
    from thresher.scorers.proxy_lm import train_tokenizer

    every = task.args["every"]
    used = 0

    def texts() -> Iterator[str]:
        nonlocal used
        row = 0
        for path in task.inputs:
            for batch in iter_batches(storage.location(path), [text_column]):
                for text in batch.column(0).to_pylist():
                    if row % every == 0 and text and text.strip():
                        used += 1
                        yield text
                    row += 1
                tc.progress(batch.num_rows)

    tokenizer = train_tokenizer(texts(), vocab_size)
    if used == 0:
        raise ThresherError(f"{tc.stage.ctx.input_path}: no text to train on (every document is empty)")
    with atomic_path(out) as tmp:
        tokenizer.save(str(tmp))
    tc.record(FileRecord(path=str(out), size=out.stat().st_size, digest=file_digest(out)))
    return TaskResult(extra={"docs": used, "vocab_size": tokenizer.get_vocab_size()})
