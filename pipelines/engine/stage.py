"""The stage / phase / task model every stage plugin is written against.

A stage turns one shard set (or raw files, for ingest) into an output directory. It declares its typed
params and a list of phases; each phase is a list of independent tasks. The executor runs the phases in
order and the tasks of a phase in any order or in parallel, so a task may read only the stage input and
the outputs of earlier phases.
"""

from __future__ import annotations

import contextlib
import typing
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Generic, Literal, TypeVar

import pyarrow as pa
from pydantic import BaseModel, ConfigDict

from thresher.pipelines.engine import storage
from thresher.pipelines.engine.atomic import atomic_path
from thresher.pipelines.engine.digest import file_digest
from thresher.pipelines.engine.errors import UsageError
from thresher.pipelines.engine.manifest import FileRecord, RowCounts, TaskRecord
from thresher.pipelines.engine.shards import DROPPED_DIR, STATE_DIR, ShardSet, ShardWriter

# Where a task's `tc.count` counters are kept in its record's `extra`, and the manifest's `summary`.
COUNTERS_KEY = "counters"


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
    """One task of a phase. `inputs` are the files the task reads, digested into its fingerprint; `names`
    gives them names (name -> how many consecutive inputs), so a task reads `task.input("shard")` rather
    than `task.inputs[0]`. Build named tasks with `TaskSpec.named`."""

    key: str
    inputs: tuple[str, ...] = ()
    args: dict[str, Any] = field(default_factory=dict)
    rows: int | None = None  # rows the task will read, for progress
    names: dict[str, int] = field(default_factory=dict)

    @classmethod
    def named(
        cls,
        key: str,
        inputs: Mapping[str, str | Path | Sequence[str | Path]],
        args: dict[str, Any] | None = None,
        rows: int | None = None,
    ) -> TaskSpec:
        """A task whose inputs are named: a path, or a list of paths, per name."""
        flat: list[str] = []
        names: dict[str, int] = {}
        for name, value in inputs.items():
            paths = [value] if storage.is_path(value) else list(value)
            flat.extend(str(p) for p in paths)
            names[name] = len(paths)
        return cls(key, tuple(flat), args or {}, rows, names)

    def input_list(self, name: str) -> list[Path]:
        """The paths given under `name`."""
        start = 0
        for known, count in self.names.items():
            if known == name:
                return [storage.location(p) for p in self.inputs[start : start + count]]
            start += count
        known_names = ", ".join(self.names) or "none (its inputs are positional)"
        raise KeyError(f"task {self.key} has no input named '{name}'; its inputs: {known_names}")

    def input(self, name: str) -> Path:
        """The one path given under `name`."""
        paths = self.input_list(name)
        if len(paths) != 1:
            raise KeyError(f"task {self.key}: input '{name}' holds {len(paths)} paths; use input_list")
        return paths[0]

    def to_json(self) -> dict[str, Any]:
        data = {"key": self.key, "inputs": list(self.inputs), "args": self.args, "rows": self.rows}
        if self.names:  # left out when empty, so positional tasks plan exactly as before
            data["names"] = self.names
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TaskSpec:
        return cls(data["key"], tuple(data["inputs"]), data["args"], data["rows"], data.get("names") or {})


_M = TypeVar("_M", bound=Callable[..., Any])


def phase(name: str | None = None) -> Callable[[_M], _M]:
    """Bind a stage method `(self, task, tc) -> TaskResult` to the phase of that name (default: the
    method's own name). The stage's `run_task` then dispatches to it, and a planned phase with no bound
    method is an error at planning, not a silent fall-through."""

    def bind(method: _M) -> _M:
        method._thresher_phase = name or method.__name__  # type: ignore[attr-defined]
        return method

    return bind


@dataclass(frozen=True)
class PhaseSpec:
    name: str
    tasks: list[TaskSpec]

    @classmethod
    def of(cls, method: Callable[..., Any], tasks: list[TaskSpec]) -> PhaseSpec:
        """The phase bound to `method` (a `@phase` method), named as the binding names it."""
        name = getattr(method, "_thresher_phase", None)
        if name is None:
            raise TypeError(f"{getattr(method, '__qualname__', method)} is not bound to a phase (use @phase)")
        return cls(name, tasks)


@dataclass
class StageContext:
    """What a stage knows about its run: shared by the planner and every task."""

    input_path: Path
    output: Path
    seed: int
    input: ShardSet | None = None  # None for stages that read raw files (ingest)
    limit: int | None = None  # a trial run: only the first `limit` rows of each input

    @property
    def work(self) -> Path:
        """Scratch space for files passed between phases; removed when the stage succeeds."""
        return self.output / STATE_DIR / "work"


ProgressFn = Callable[[int], None]

# Tasks the local executor runs at once (set in each of its threads and pool workers): a task that shares
# the cores with others reads without Arrow's own thread pool, whose threads would only fight the other
# tasks for the cores (ingest of 1M rows on 2 cores: 2.8 s instead of 3.1 s).
TASKS_SIDE_BY_SIDE: ContextVar[int] = ContextVar("tasks_side_by_side", default=1)


def arrow_threads() -> bool:
    """Whether a reader should let Arrow parse in parallel: only when this task has the cores alone."""
    return TASKS_SIDE_BY_SIDE.get() == 1


class TaskContext:
    """Handed to a running task: where to write, how to report progress, and counters. Every file the
    task writes is recorded here, the one way: through `writer` (recorded on close), `artifact`, or
    `record(path)` for a file written some other way."""

    def __init__(self, stage: Stage[Any], progress: ProgressFn | None = None) -> None:
        self.stage = stage
        self.outputs: list[FileRecord] = []
        self.counters: Counter[str] = Counter()
        self.tokens: int | None = None  # tokens in the output shards written, when they carry n_tokens
        self._progress = progress

    def progress(self, rows: int) -> None:
        if self._progress is not None:
            self._progress(rows)

    def count(self, name: str, n: int = 1) -> None:
        """Add `n` to the task's counter `name`; the engine sums every task's counters into the manifest
        (`summary.counters`) and hands the sums to `summarize` as `self.counters`. A count of 0 still
        makes the name appear."""
        self.counters[name] += int(n)

    def writer(self, path: Path, schema: pa.Schema) -> ShardWriter:
        """A Parquet writer whose `close()` records the file."""
        return _RecordingWriter(path, schema, self)

    def record(self, file: FileRecord | Path) -> FileRecord:
        """Record a written file (a path under the output, or a FileRecord); recording the same path
        again replaces the earlier entry."""
        if not isinstance(file, FileRecord):
            path = storage.location(file)
            file = FileRecord(path=str(path), size=path.stat().st_size, digest=file_digest(path))
        rel = storage.resolved(file.path).relative_to(storage.resolved(self.stage.ctx.output)).as_posix()
        recorded = file.model_copy(update={"path": rel})
        self.outputs = [f for f in self.outputs if f.path != rel]
        self.outputs.append(recorded)
        return recorded

    @contextlib.contextmanager
    def artifact(self, name: str) -> Iterator[Path]:
        """A temp path to write a model or other artifact to; renamed into OUTPUT/name and recorded on
        success, removed on error."""
        path = self.stage.ctx.output / name
        with atomic_path(path) as tmp:
            yield tmp
        self.record(path)

    def dropped_path(self, shard_name: str) -> Path:
        return self.stage.ctx.output / DROPPED_DIR / shard_name

    def record_extra(self, extra: dict[str, Any]) -> dict[str, Any]:
        """The task record's `extra`: what the task returned, plus its counters."""
        if not self.counters:
            return extra
        return {**extra, COUNTERS_KEY: dict(sorted(self.counters.items()))}


class _RecordingWriter(ShardWriter):
    def __init__(self, path: Path, schema: pa.Schema, tc: TaskContext) -> None:
        super().__init__(path, schema)
        self._tc = tc

    def close(self) -> FileRecord:
        record = super().close()
        self._tc.record(record)
        if self.tokens is not None and storage.resolved(self.path.parent) == storage.resolved(
            self._tc.stage.ctx.output
        ):
            self._tc.tokens = (self._tc.tokens or 0) + self.tokens
        return record


def sum_counters(records: Iterable[TaskRecord]) -> dict[str, int]:
    """Every task's `tc.count` counters, summed by name."""
    total: Counter[str] = Counter()
    for r in records:
        for name, n in r.extra.get(COUNTERS_KEY, {}).items():
            total[name] += n
    return dict(sorted(total.items()))


@dataclass
class TaskResult:
    counts: RowCounts | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_counter(cls, rows_in: int, rows_out: int, dropped: Counter[str], **extra: Any) -> TaskResult:
        return cls(
            RowCounts(rows_in=rows_in, rows_out=rows_out, dropped=dict(sorted(dropped.items()))), extra
        )


P = TypeVar("P", bound=StageParams)


class Stage(ABC, Generic[P]):
    """A stage plugin, generic in its params: `class Dedup(Stage[DedupParams])` sets `Params` and types
    `self.params`. Subclasses set the class attributes, plan in `phases`, and run tasks in methods bound
    with `@phase` (or, the older way, in one `run_task`). A one-phase stage that maps every shard batch by
    batch is a `MapStage` (in `mapping`)."""

    name: ClassVar[str]
    version: ClassVar[str] = "1"
    Params: ClassVar[type[StageParams]]
    summary: ClassVar[str]
    example: ClassVar[str] = ""
    # "shards": the input is a shard set; "files": raw files or datasets (ingest).
    input_kind: ClassVar[Literal["shards", "files"]] = "shards"
    # How the local executor runs tasks side by side: in a pool of worker processes, or in threads of the
    # main process for stages whose tasks spend their time in Arrow, numpy and hashing, which release the
    # GIL: then the libraries sit in memory once, not once per worker, and no worker has to start.
    parallel: ClassVar[Literal["processes", "threads"]] = "processes"
    # False when no task of the stage needs pandas: then pyarrow's probe for it is not let import it
    # (see no_pandas).
    uses_pandas: ClassVar[bool] = True
    # The CLI command that runs it: ("dedup", "exact") is `thresher dedup exact`; None for `thresher apply`.
    command: ClassVar[tuple[str, ...] | None] = None
    # Phase name -> the name of the method bound to it with @phase, collected from the class and its bases.
    _phase_methods: ClassVar[dict[str, str]] = {}

    params: P
    # Filled by the engine before `summarize`: every task's counters summed, and the stage's row totals.
    counters: dict[str, int]
    totals: RowCounts

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "Params" not in cls.__dict__:
            for base in cls.__dict__.get("__orig_bases__", ()):
                origin, args = typing.get_origin(base), typing.get_args(base)
                param = args[0] if args else None
                is_stage = isinstance(origin, type) and issubclass(origin, Stage)
                if is_stage and isinstance(param, type) and issubclass(param, StageParams):
                    cls.Params = param
        bound = dict(cls._phase_methods)
        for attr, value in cls.__dict__.items():
            phase_name = getattr(value, "_thresher_phase", None)
            if isinstance(phase_name, str):
                if bound.get(phase_name, attr) != attr:
                    raise TypeError(f"{cls.__name__}: phase '{phase_name}' is bound to two methods")
                bound[phase_name] = attr
        cls._phase_methods = bound

    def __init__(self, params: P, ctx: StageContext) -> None:
        self.params = params
        self.ctx = ctx
        self.counters = {}
        self.totals = RowCounts()

    @classmethod
    def declared_phases(cls) -> list[str]:
        """The phase names known without planning (a dry run shows them for steps not planned yet)."""
        return list(cls._phase_methods)

    def setup(self) -> None:
        """Run once per worker process before its first task of this stage (a pool worker, a Slurm array
        task, or the main process with one worker): load models here, onto `self`, not in each task.
        The same instance then runs every task of the stage in that process."""

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

    def check_new_columns(self, columns: list[str]) -> None:
        """A stage that adds these columns stops before any task if an input shard already has one."""
        assert self.ctx.input is not None
        for shard in self.ctx.input.shards:
            names = shard.schema.names if shard.schema is not None else []
            for column in columns:
                if column in names:
                    raise UsageError(
                        f"{shard.path}: already has column '{column}'; drop it before this stage"
                    )

    def side_inputs(self) -> list[Path]:
        """Files besides the input shard set that the output depends on (a model, a blocklist, another
        shard set's shards); their digests join the run's fingerprint, so replacing one re-runs the stage."""
        return []

    @abstractmethod
    def phases(self) -> list[PhaseSpec]:
        """The plan: phases in order, each with its tasks. Must be deterministic for the same input."""

    def planned_phases(self) -> list[PhaseSpec]:
        """`phases()`, checked (`check_phases`)."""
        return self.check_phases(self.phases())

    def check_phases(self, planned: list[PhaseSpec]) -> list[PhaseSpec]:
        """With the default `run_task`, every planned phase must be bound to a method: a misspelt phase
        name is an error at planning, not a task that runs the wrong code."""
        if type(self).run_task is Stage.run_task:
            unbound = [p.name for p in planned if p.name not in self._phase_methods]
            if unbound:
                raise TypeError(
                    f"stage {self.name} plans phase '{unbound[0]}' but no method is bound to it with "
                    f"@phase (bound: {', '.join(self._phase_methods) or 'none'})"
                )
        return planned

    def run_task(self, phase: str, task: TaskSpec, tc: TaskContext) -> TaskResult:
        """Run one task by calling the method bound to its phase; write outputs through `tc`."""
        method = self._phase_methods.get(phase)
        if method is None:
            bound = ", ".join(self._phase_methods) or "none"
            raise RuntimeError(f"stage {self.name} has no phase '{phase}' (bound: {bound})")
        result: TaskResult = getattr(self, method)(task, tc)
        return result

    def counted(self, prefix: str) -> dict[str, int]:
        """The summed counters named `prefix.<key>`, by key: `counted("matches")` -> {"email": 3, ...}."""
        start = prefix + "."
        return {k[len(start) :]: n for k, n in self.counters.items() if k.startswith(start)}

    def summarize(self, records: list[TaskRecord]) -> dict[str, Any]:
        """Stage-specific figures for the manifest's `summary`."""
        return {}

    def output_shards(self, records: list[TaskRecord]) -> list[FileRecord]:
        """The shard set's shards: by default every top-level Parquet file the tasks wrote."""
        shards = [f for r in records for f in r.outputs if "/" not in f.path and f.path.endswith(".parquet")]
        return sorted(shards, key=lambda f: f.path)
