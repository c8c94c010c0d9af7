"""thresher's public surface: what a stage plugin or a Python user imports, and the only module whose
names are promised to stay put. Everything here is re-exported from the engine, where it lives.

pyproject.toml installs this folder as `thresher.api`; as a subpackage of `thresher.pipelines` it is also
importable as `thresher.pipelines.api`. Both names load the same definitions (this module defines
nothing of its own), so a class imported through either is the same class. `pa` and `pc` are pyarrow and
pyarrow.compute, the modules batches are made of, and `Field` is pydantic's, so a plugin needs no other
import.

A map stage in full:

    from thresher.api import BatchOutcome, Field, MapStage, StageParams, pc

    class ShortParams(StageParams):
        min_chars: int = Field(100, ge=0, description="Drop rows with fewer characters.")

    class DropShort(MapStage[ShortParams]):
        name = "drop-short"
        summary = "Drop rows under --min-chars characters."

        def map_batch(self, batch, offset):
            short = pc.less(pc.utf8_length(batch.column("text")), self.params.min_chars)
            return BatchOutcome.drop_rows(batch, short, "too_short")
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field

from thresher.pipelines.engine.errors import ThresherError, UsageError
from thresher.pipelines.engine.executor import run_stage
from thresher.pipelines.engine.manifest import FileRecord, Manifest, RowCounts, TaskRecord
from thresher.pipelines.engine.mapping import BatchOutcome, Drops, MapStage, map_batches, map_shard
from thresher.pipelines.engine.registry import get_stage, stages
from thresher.pipelines.engine.shards import (
    DROPPED_SCHEMA,
    ID_COLUMN,
    ShardSet,
    ShardWriter,
    dropped_table,
    iter_batches,
    read_schema,
)
from thresher.pipelines.engine.stage import (
    PhaseSpec,
    Stage,
    StageContext,
    StageParams,
    TaskContext,
    TaskResult,
    TaskSpec,
    phase,
)

__all__ = [
    "DROPPED_SCHEMA",
    "ID_COLUMN",
    "BatchOutcome",
    "Drops",
    "Field",
    "FileRecord",
    "Manifest",
    "MapStage",
    "PhaseSpec",
    "RowCounts",
    "ShardSet",
    "ShardWriter",
    "Stage",
    "StageContext",
    "StageParams",
    "TaskContext",
    "TaskRecord",
    "TaskResult",
    "TaskSpec",
    "ThresherError",
    "UsageError",
    "dropped_table",
    "get_stage",
    "iter_batches",
    "map_batches",
    "map_shard",
    "pa",
    "pc",
    "phase",
    "read_schema",
    "run_stage",
    "stages",
]
