"""The stage / phase / task model every stage plugin is written against.

A stage turns one shard set (or raw files, for ingest) into an output directory. It declares its typed
params and a list of phases; each phase is a list of independent tasks. The executor runs the phases in
order and the tasks of a phase in any order or in parallel, so a task may read only the stage input and
the outputs of earlier phases.
"""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import pyarrow as pa
from pydantic import BaseModel, ConfigDict

from thresher.pipelines.engine.atomic import atomic_path
from thresher.pipelines.engine.digest import file_digest
from thresher.pipelines.engine.manifest import FileRecord, RowCounts, TaskRecord
from thresher.pipelines.engine.shards import DROPPED_DIR, STATE_DIR, ShardSet, ShardWriter


class StageParams(BaseModel):
    """Base of every stage's params: one place for defaults, validation, `--help` text and the manifest."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    def column_flags(self) -> dict[str, str]:
        """Column name -> the option that names it (`text` -> `--text-column`), for a missing-column
        error that says which option to pass; any param named `*_column` or `*_columns` counts."""
        flags: dict[str, str] = {}
        for name, value in self:
            if not name.endswith(("_column", "_columns")):
                continue
            flag = "--" + name.replace("_", "-")
            for column in value if isinstance(value, list) else [value]:
                if isinstance(column, str):
                    flags.setdefault(column, flag)
        return flags


@dataclass(frozen=True)
class TaskSpec:
    key: str
    inputs: tuple[str, ...] = ()
    args: dict[str, Any] = field(default_factory=dict)
    rows: int | None = None  # rows the task will read, for progress

    def to_json(self) -> dict[str, Any]:
        return {"key": self.key, "inputs": list(self.inputs), "args": self.args, "rows": self.rows}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TaskSpec:
        return cls(data["key"], tuple(data["inputs"]), data["args"], data["rows"])


@dataclass(frozen=True)
class PhaseSpec:
    name: str
    tasks: list[TaskSpec]


@dataclass
class StageContext:
    """What a stage knows about its run: shared by the planner and every task."""

    input_path: Path
    output: Path
    seed: int
    input: ShardSet | None = None  # None for stages that read raw files (ingest)

    @property
    def work(self) -> Path:
        """Scratch space for files passed between phases; removed when the stage succeeds."""
        return self.output / STATE_DIR / "work"


ProgressFn = Callable[[int], None]


class TaskContext:
    """Handed to a running task: where to write, and how to report progress. Records every file it writes."""

    def __init__(self, stage: Stage, progress: ProgressFn | None = None) -> None:
        self.stage = stage
        self.outputs: list[FileRecord] = []
        self._progress = progress

    def progress(self, rows: int) -> None:
        if self._progress is not None:
            self._progress(rows)

    def writer(self, path: Path, schema: pa.Schema) -> ShardWriter:
        return ShardWriter(path, schema)

    def record(self, file: FileRecord) -> None:
        rel = Path(file.path).resolve().relative_to(self.stage.ctx.output.resolve())
        self.outputs.append(file.model_copy(update={"path": rel.as_posix()}))

    @contextlib.contextmanager
    def artifact(self, name: str) -> Iterator[Path]:
        """A temp path to write a model or other artifact to; renamed into OUTPUT/name and recorded on
        success, removed on error."""
        path = self.stage.ctx.output / name
        with atomic_path(path) as tmp:
            yield tmp
        self.record(FileRecord(path=str(path), size=path.stat().st_size, digest=file_digest(path)))

    def dropped_path(self, shard_name: str) -> Path:
        return self.stage.ctx.output / DROPPED_DIR / shard_name


@dataclass
class TaskResult:
    counts: RowCounts | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_counter(cls, rows_in: int, rows_out: int, dropped: Counter[str], **extra: Any) -> TaskResult:
        return cls(
            RowCounts(rows_in=rows_in, rows_out=rows_out, dropped=dict(sorted(dropped.items()))), extra
        )


class Stage(ABC):
    """A stage plugin. Subclasses set the class attributes and implement `phases` and `run_task`."""

    name: ClassVar[str]
    version: ClassVar[str] = "1"
    Params: ClassVar[type[StageParams]]
    summary: ClassVar[str]
    example: ClassVar[str] = ""
    # "shards": the input is a shard set; "files": raw files or datasets (ingest).
    input_kind: ClassVar[Literal["shards", "files"]] = "shards"
    # The CLI command that runs it: ("dedup", "exact") is `thresher dedup exact`; None for `thresher apply`.
    command: ClassVar[tuple[str, ...] | None] = None

    def __init__(self, params: StageParams, ctx: StageContext) -> None:
        self.params = params
        self.ctx = ctx

    def _text_column(self) -> list[str]:
        # Most stages read one text column, named by a `text_column` param.
        column = getattr(self.params, "text_column", None)
        return [column] if isinstance(column, str) else []

    def required_columns(self) -> list[str]:
        """Columns every input shard must have; checked before any task runs."""
        return ["id", *self._text_column()]

    def string_columns(self) -> list[str]:
        """Columns that must hold strings."""
        return self._text_column()

    def raw_inputs(self) -> list[Path]:
        """Files or dataset folders a files-kind stage reads; their digests join the fingerprint."""
        return []

    def side_inputs(self) -> list[Path]:
        """Files besides the input shard set that the output depends on (a model, a blocklist, another
        shard set's shards); their digests join the run's fingerprint, so replacing one re-runs the stage."""
        return []

    @abstractmethod
    def phases(self) -> list[PhaseSpec]:
        """The plan: phases in order, each with its tasks. Must be deterministic for the same input."""

    @abstractmethod
    def run_task(self, phase: str, task: TaskSpec, tc: TaskContext) -> TaskResult:
        """Run one task; write outputs through `tc` so they are recorded."""

    def summarize(self, records: list[TaskRecord]) -> dict[str, Any]:
        """Stage-specific figures for the manifest's `summary`."""
        return {}

    def output_shards(self, records: list[TaskRecord]) -> list[FileRecord]:
        """The shard set's shards: by default every top-level Parquet file the tasks wrote."""
        shards = [f for r in records for f in r.outputs if "/" not in f.path and f.path.endswith(".parquet")]
        return sorted(shards, key=lambda f: f.path)
