"""What the instruction-tuning selection stages (MoDS's four in this folder, and LESS) share: the
(instruction, input, output) columns and their params, reading those rows, and the per-task plumbing
(torch threads, model files as task inputs, recording a work file, looking rows up in a sorted list).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import Field

from thresher.pipelines.engine import storage
from thresher.pipelines.engine.manifest import FileRecord
from thresher.pipelines.engine.shards import ID_COLUMN
from thresher.pipelines.engine.stage import Stage, StageParams, TaskContext

# The `_dropped/` reason of a row no model can score (no instruction or output, or a non-finite score).
UNSCORABLE = "unscorable"


class InstructionParams(StageParams):
    instruction_column: str = Field("instruction", description="Column holding the instruction.")
    input_column: str = Field(
        "input", description="Column holding the optional input (context); absent column: no input."
    )
    output_column: str = Field("output", description="Column holding the response.")
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="Where models run (auto: a GPU if any)."
    )
    batch_size: int = Field(16, ge=1, description="Rows per model batch (batches are length-bucketed).")
    max_length: int = Field(512, ge=8, description="Token limit per example; longer ones are truncated.")
    threads: int = Field(
        1,
        ge=1,
        description="torch CPU threads per per-shard task (--workers already runs one task per core); "
        "single-task phases (k-center, fine-tuning) use every core.",
    )


def set_torch_threads(n: int) -> None:
    """Per-shard tasks run one per core already, so they ask for few threads; single-task phases all."""
    import torch

    torch.set_num_threads(max(1, n))


def all_cores() -> int:
    """The cores this process may run on (a Slurm or cgroup limit, not the machine's count)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def model_inputs(*models: str | None) -> tuple[str, ...]:
    """The files of the given model folders as task inputs, so replacing a model re-runs its tasks."""
    from thresher.scorers.torch_runtime import model_files

    return tuple(str(f.resolve()) for m in models if m for f in model_files(m))


class InstructionStage(Stage):
    """Column handling and row reading shared by the MoDS stages and LESS."""

    params: Any

    def required_columns(self) -> list[str]:
        p = self.params
        return [ID_COLUMN, p.instruction_column, p.output_column]

    def string_columns(self) -> list[str]:
        p = self.params
        return [p.instruction_column, p.output_column]

    def read_columns(self, path: Path) -> list[str]:
        p = self.params
        names = pq.read_schema(storage.readable(path)).names
        return [
            ID_COLUMN,
            p.instruction_column,
            *([p.input_column] if p.input_column in names else []),
            p.output_column,
        ]

    def row_texts(self, batch: pa.RecordBatch) -> tuple[list[str | None], list[str], list[str | None]]:
        """(instruction, input, output) of a batch; a missing input column reads as empty inputs."""
        p = self.params
        names = batch.schema.names
        inputs = (
            [x or "" for x in batch.column(p.input_column).to_pylist()]
            if p.input_column in names
            else [""] * batch.num_rows
        )
        return (
            batch.column(p.instruction_column).to_pylist(),
            inputs,
            batch.column(p.output_column).to_pylist(),
        )


def record_file(tc: TaskContext, path: Path) -> None:
    """Record a file written without a ShardWriter (raw embeddings, model folders, checkpoints)."""
    from thresher.pipelines.engine.digest import file_digest

    tc.record(FileRecord(path=str(path), size=path.stat().st_size, digest=file_digest(path)))


def lookup_rows(rows: np.ndarray, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each of `rows`: whether it is in sorted `keys`, and its position there (0 where absent)."""
    if not len(keys):
        return np.zeros(len(rows), bool), np.zeros(len(rows), np.int64)
    at = np.minimum(np.searchsorted(keys, rows), len(keys) - 1)
    return keys[at] == rows, at
