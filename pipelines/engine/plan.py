"""A stage run's plan on disk: enough for any process (a pool worker, a Slurm array task) to run one task.

Layout of an output directory while and after a stage runs:
    part-*.parquet, _dropped/part-*.parquet    the shard set
    _manifest.json                              written last: its presence means the stage finished
    _thresher/plan.json                         this plan: params, fingerprints, phase names
    _thresher/plan/<NN>-<phase>.jsonl           its tasks, one line each, with their inputs' digests
    _thresher/plan/inputs.json                  the input shards (or raw files) with digests
    _thresher/tasks/<NN>-<phase>/<index>.json   one record per finished task
    _thresher/phases/<phase>.json               index of a finished phase: every output of its tasks
    _thresher/work/                             files passed between phases, removed on success

A task that reads every output of an earlier phase lists that phase's index as one input instead of
listing each file, so the plan and every record stay O(tasks) whatever the shards x buckets. The index
is built once, when the first task of a later phase needs it, and its digest stands for all the outputs
it lists in that task's fingerprint.

A worker parses the plan once per process, and then only what a task needs: the header, and the line of
its task, which carries the digests of the task's input shards and side inputs. So checking that a task
has finished costs milliseconds at 10k shards, where parsing a whole 5 MB plan cost half a second.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, overload

from thresher.pipelines.engine import storage
from thresher.pipelines.engine.atomic import atomic_open, write_json
from thresher.pipelines.engine.digest import file_digest, value_digest
from thresher.pipelines.engine.errors import ThresherError
from thresher.pipelines.engine.lock import gone_from_this_host
from thresher.pipelines.engine.manifest import MANIFEST_NAME, FileRecord, TaskRecord
from thresher.pipelines.engine.registry import get_stage
from thresher.pipelines.engine.shards import STATE_DIR, Shard, ShardSet, limit_rows
from thresher.pipelines.engine.stage import PhaseSpec, Stage, StageContext, TaskSpec

PLAN_NAME = "plan.json"
PLAN_DIR = "plan"
INPUTS_NAME = "inputs.json"
PHASES_DIR = "phases"
# A builder that has held the index lock this long is presumed dead (another host, so no pid to test).
_STALE_LOCK_SECONDS = 600.0


def phase_index_path(output: Path, phase: str) -> Path:
    """The task input that stands for every output of the earlier phase `phase`."""
    return storage.location(output) / STATE_DIR / PHASES_DIR / f"{phase}.json"


def phase_outputs(output: Path, phase: str) -> list[Path]:
    """Every file the tasks of a finished earlier phase wrote, in task order (read from its index)."""
    data = json.loads(phase_index_path(output, phase).read_bytes())
    root = storage.location(output)
    return [root / rel for rel, _size, _digest in data["outputs"]]


def path_digest(path: Path) -> str:
    """Digest of a file, or of a folder's files and their relative names (a saved dataset, a model)."""
    if path.is_file():
        return file_digest(path)
    files = sorted(p for p in path.rglob("*") if p.is_file())
    return value_digest([(str(p.relative_to(path)), file_digest(p)) for p in files])


def _path_size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _stat_key(path: Path) -> tuple[int, int, int] | None:
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return st.st_ino, st.st_mtime_ns, st.st_size


@dataclass
class Plan:
    stage: str
    stage_version: str
    params: dict[str, Any]
    seed: int
    input_path: str
    input_stage: str | None
    input_manifest_digest: str | None
    input_files: list[FileRecord]  # input shards, or raw files for ingest, with digests
    fingerprint: str  # of (stage, version, params, seed, all inputs): the whole run
    params_fingerprint: str  # of (stage, version, params, seed): what each task's fingerprint builds on
    phases: list[PhaseSpec]
    output: Path
    # Models, blocklists and other side inputs, digested once at planning: a task that lists one among
    # its inputs takes the digest from here instead of re-reading the file.
    side_files: list[FileRecord] = field(default_factory=list)
    limit: int | None = None  # a trial run: the first `limit` rows of each input (input_files' rows)
    _known: dict[str, str] | None = field(default=None, init=False, repr=False, compare=False)
    _known_all: bool = field(default=False, init=False, repr=False, compare=False)
    _index_digests: dict[int, tuple[Any, str]] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )
    _shard_set: ShardSet | None = field(default=None, init=False, repr=False, compare=False)
    # Paths as the stage wrote them -> resolved path, for digesting task inputs at planning.
    _aliases: dict[str, str] = field(default_factory=dict, init=False, repr=False, compare=False)

    @property
    def state_dir(self) -> Path:
        return self.output / STATE_DIR

    def record_path(self, phase_index: int, task_index: int) -> Path:
        phase = self.phases[phase_index]
        return self.state_dir / "tasks" / f"{phase_index:02d}-{phase.name}" / f"{task_index:06d}.json"

    def failure_path(self, phase_index: int, task_index: int) -> Path:
        return self.record_path(phase_index, task_index).with_suffix(".failed")

    def header(self) -> dict[str, Any]:
        return {
            "stage": self.stage,
            "stage_version": self.stage_version,
            "params": self.params,
            "seed": self.seed,
            "input_path": self.input_path,
            "input_stage": self.input_stage,
            "input_manifest_digest": self.input_manifest_digest,
            "side_files": [f.model_dump() for f in self.side_files],
            "fingerprint": self.fingerprint,
            "params_fingerprint": self.params_fingerprint,
            "phases": [{"name": p.name, "tasks": len(p.tasks)} for p in self.phases],
            **({"limit": self.limit} if self.limit is not None else {}),
        }

    def _task_line(self, task: TaskSpec) -> str:
        digests = {}
        for path in task.inputs:
            resolved = self._aliases.get(path) or str(storage.resolved(path))
            digest = self.known_digest(resolved)
            if digest is not None:
                digests[resolved] = digest
        return json.dumps({**task.to_json(), "digests": digests}, separators=(",", ":"), ensure_ascii=False)

    def write(self) -> None:
        # The task lists first and the header last, each atomically: a reader that finds the header
        # finds the lists it names.
        folder = self.state_dir / PLAN_DIR
        with atomic_open(folder / INPUTS_NAME, "w", encoding="utf-8") as f:
            rows = [[r.path, r.size, r.digest, r.rows] for r in self.input_files]
            json.dump(rows, f, separators=(",", ":"), ensure_ascii=False)
        for i, phase in enumerate(self.phases):
            with atomic_open(folder / f"{i:02d}-{phase.name}.jsonl", "w", encoding="utf-8") as f:
                for task in phase.tasks:
                    f.write(self._task_line(task) + "\n")
        path = self.state_dir / PLAN_NAME
        write_json(path, self.header())
        _loaded.pop(str(path), None)

    @classmethod
    def read(cls, output: Path) -> Plan:
        path = storage.location(output) / STATE_DIR / PLAN_NAME
        try:
            data = json.loads(path.read_bytes())
        except FileNotFoundError:
            raise ThresherError(f"{output}: no stage plan here ({path} is missing)") from None
        folder = path.parent / PLAN_DIR
        known: dict[str, str] = {}
        if data["phases"] and isinstance(data["phases"][0]["tasks"], list):
            # A plan written in one file by an earlier thresher: resume it as it is.
            phases = [
                PhaseSpec(p["name"], [TaskSpec.from_json(t) for t in p["tasks"]]) for p in data["phases"]
            ]
            files: Sequence[FileRecord] = [FileRecord.model_construct(**f) for f in data["input_files"]]
        else:
            phases = [
                PhaseSpec(p["name"], _Tasks(folder / f"{i:02d}-{p['name']}.jsonl", p["tasks"], known))  # type: ignore[arg-type]
                for i, p in enumerate(data["phases"])
            ]
            files = _InputFiles(folder / INPUTS_NAME)
        plan = cls(
            stage=data["stage"],
            stage_version=data["stage_version"],
            params=data["params"],
            seed=data["seed"],
            input_path=data["input_path"],
            input_stage=data["input_stage"],
            input_manifest_digest=data["input_manifest_digest"],
            input_files=files,  # type: ignore[arg-type]
            fingerprint=data["fingerprint"],
            params_fingerprint=data["params_fingerprint"],
            phases=phases,
            output=storage.resolved(output),
            side_files=[FileRecord.model_construct(**f) for f in data.get("side_files", [])],
            limit=data.get("limit"),
        )
        known.update((f.path, f.digest) for f in plan.side_files)
        plan._known = known
        return plan

    @classmethod
    def load(cls, output: Path) -> Plan:
        """The plan, parsed once per process: a pool worker runs many tasks of the same plan. A rewritten
        plan (a new run in the same process) is noticed by its file's identity and read again."""
        path = storage.resolved(output) / STATE_DIR / PLAN_NAME
        key = _stat_key(path)
        cached = _loaded.get(str(path))
        if cached is not None and key is not None and cached[0] == key:
            return cached[1]
        plan = cls.read(storage.location(output))
        if key is not None:
            _loaded[str(path)] = (key, plan)
        return plan

    def build_stage(self) -> Stage:
        """Rebuild the stage from the plan alone, without re-opening every input shard."""
        cls = get_stage(self.stage)
        params = cls.Params.model_validate(self.params)
        if cls.input_kind == "shards" and self._shard_set is None:
            shards = [Shard(storage.location(f.path), f.rows or 0, f.size, None) for f in self.input_files]
            self._shard_set = ShardSet(storage.location(self.input_path), shards, None)
            if self.limit is not None:
                for f in self.input_files:  # their rows are the trial's: read no further
                    limit_rows(storage.location(f.path), f.rows or 0)
        ctx = StageContext(
            storage.location(self.input_path), self.output, self.seed, self._shard_set, self.limit
        )
        return cls(params, ctx)

    def read_record(self, phase_index: int, task_index: int) -> TaskRecord | None:
        path = self.record_path(phase_index, task_index)
        try:
            return TaskRecord.model_validate_json(path.read_bytes())
        except (FileNotFoundError, ValueError):
            return None

    # -- digests of task inputs ----------------------------------------------------------------------------
    def known_digest(self, path: str, everything: bool = True) -> str | None:
        """Digest of an input shard or side input (by resolved path), as digested at planning. A plan
        read from disk knows those of the tasks it has parsed; only with `everything` does it read the
        whole input list for a path none of them lists."""
        if self._known is None:
            self._known = {}
        digest = self._known.get(path)
        if digest is None and everything and not self._known_all:
            self._known.update((f.path, f.digest) for f in [*self.input_files, *self.side_files])
            self._known_all = True
            digest = self._known.get(path)
        return digest

    def index_phase(self, path: str) -> int | None:
        """The phase whose index `path` (resolved) is, or None."""
        folder = str(self.state_dir / PHASES_DIR) + os.sep
        if not path.startswith(folder) or not path.endswith(".json"):
            return None
        name = path[len(folder) : -len(".json")]
        return next((i for i, p in enumerate(self.phases) if p.name == name), None)

    def index_digest(self, phase_index: int) -> str:
        """Digest of a finished phase's index, building the index first if no one has yet."""
        path = phase_index_path(self.output, self.phases[phase_index].name)
        key = _stat_key(path)
        if key is None:
            self._build_index(phase_index)
            key = _stat_key(path)
        cached = self._index_digests.get(phase_index)
        if cached is not None and cached[0] == key:
            return cached[1]
        digest = file_digest(path)
        self._index_digests[phase_index] = (key, digest)
        return digest

    def index_outputs(self, phase_index: int) -> list[tuple[str, int, str]]:
        self.index_digest(phase_index)
        path = phase_index_path(self.output, self.phases[phase_index].name)
        return [tuple(o) for o in json.loads(path.read_bytes())["outputs"]]

    def forget_index(self, phase_index: int) -> None:
        """Drop a phase's index: called before one of its tasks runs, so the index is rebuilt from the
        records the rerun leaves rather than trusted for outputs that are being replaced."""
        storage.remove(phase_index_path(self.output, self.phases[phase_index].name))
        self._index_digests.pop(phase_index, None)

    def _build_index(self, phase_index: int) -> None:
        phase = self.phases[phase_index]
        path = phase_index_path(self.output, phase.name)
        with _index_lock(path) as built:
            if built:
                return
            for stray in path.parent.glob(f".{path.name}.*.tmp"):
                storage.remove(stray)  # a builder killed mid-write; the lock says none is writing now
            outputs: list[list[Any]] = []
            for t in range(len(phase.tasks)):
                record = self.read_record(phase_index, t)
                if record is None:
                    raise ThresherError(
                        f"{self.output}: phase '{phase.name}' task {t} has not finished; "
                        "run earlier phases first"
                    )
                outputs.extend([f.path, f.size, f.digest] for f in record.outputs)
            # Only the outputs, so the digest changes exactly when one of them does.
            with atomic_open(path, "w", encoding="utf-8") as f:
                json.dump({"phase": phase.name, "tasks": len(phase.tasks), "outputs": outputs}, f)
                f.write("\n")


_loaded: dict[str, tuple[tuple[int, int, int], Plan]] = {}


class _Tasks(Sequence[TaskSpec]):
    """A phase's tasks as read from its list, parsed one line at a time on first use: a worker that
    runs task 7 parses task 7, not the other 9,999."""

    def __init__(self, path: Path, count: int, known: dict[str, str]) -> None:
        self._path = path
        self._count = count
        self._known = known
        self._lines: list[bytes] | None = None
        self._parsed: dict[int, TaskSpec] = {}

    def __len__(self) -> int:
        return self._count

    @overload
    def __getitem__(self, index: int) -> TaskSpec: ...
    @overload
    def __getitem__(self, index: slice) -> list[TaskSpec]: ...
    def __getitem__(self, index: int | slice) -> TaskSpec | list[TaskSpec]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(self._count))]
        if index < 0:
            index += self._count
        if not 0 <= index < self._count:
            raise IndexError(index)
        task = self._parsed.get(index)
        if task is None:
            if self._lines is None:
                try:
                    self._lines = self._path.read_bytes().split(b"\n")
                except FileNotFoundError:
                    raise ThresherError(f"{self._path}: missing; plan the stage again") from None
            data = json.loads(self._lines[index])
            self._known.update(data.get("digests", {}))
            task = self._parsed[index] = TaskSpec.from_json(data)
        return task


class _InputFiles(Sequence[FileRecord]):
    """The plan's input files, read when first used (building a stage, or a digest no task line has)."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._files: list[FileRecord] | None = None

    def _all(self) -> list[FileRecord]:
        if self._files is None:
            rows = json.loads(self._path.read_bytes())
            # model_construct: the planner wrote these; validating 10k of them per worker is waste.
            self._files = [
                FileRecord.model_construct(path=p, size=size, digest=d, rows=r) for p, size, d, r in rows
            ]
        return self._files

    def __len__(self) -> int:
        return len(self._all())

    @overload
    def __getitem__(self, index: int) -> FileRecord: ...
    @overload
    def __getitem__(self, index: slice) -> list[FileRecord]: ...
    def __getitem__(self, index: int | slice) -> FileRecord | list[FileRecord]:
        return self._all()[index]


def _holder_gone(lock: Path) -> bool:
    try:
        age = time.time() - lock.stat().st_mtime
        text = lock.read_text()
    except OSError:
        return False  # just removed: look again
    try:
        host, pid = text.split()
    except ValueError:
        return age > 10.0  # its holder died between creating and filling it
    if host != socket.gethostname():
        return age > _STALE_LOCK_SECONDS
    return gone_from_this_host(host, pid)


@contextlib.contextmanager
def _index_lock(path: Path) -> Iterator[bool]:
    """One builder per index: the hundreds of array tasks of a Slurm phase start together, and each
    would otherwise read every record of the phase before it. Yields True when another process built
    the index meanwhile."""
    lock = path.with_name(path.name + ".lock")
    storage.make_dirs(lock.parent)
    while True:
        if path.exists():
            yield True
            return
        if storage.create_exclusive(lock, f"{socket.gethostname()} {os.getpid()}\n".encode()):
            break
        if _holder_gone(lock):
            storage.remove(lock)
        else:
            time.sleep(0.1)
    try:
        yield path.exists()
    finally:
        storage.remove(lock)


class InputDigests:
    """Digests of the files the tasks of one phase list: input shards and side inputs from the plan,
    earlier phases' indexes, and (for stages that list earlier outputs one by one) those outputs as the
    indexes record them. Built lazily, so a task that lists only its shard and an index reads nothing."""

    def __init__(self, plan: Plan, phase_index: int) -> None:
        self.plan = plan
        self.phase_index = phase_index
        self._earlier: dict[str, str] | None = None

    def get(self, path: str) -> str | None:
        known = self.plan.known_digest(path, everything=False)
        if known is not None:
            return known
        index = self.plan.index_phase(path)
        if index is not None:
            if index >= self.phase_index:
                raise ThresherError(
                    f"{self.plan.output}: phase '{self.plan.phases[self.phase_index].name}' lists the "
                    f"index of phase '{self.plan.phases[index].name}', which does not run before it"
                )
            return self.plan.index_digest(index)
        if self._earlier is None:
            root = str(self.plan.output)
            self._earlier = {
                os.path.join(root, rel): digest
                for p in range(self.phase_index)
                for rel, _size, digest in self.plan.index_outputs(p)
            }
        return self._earlier.get(path) or self.plan.known_digest(path)


# ---------------------------------------------------------------------------------------------------------
# Building a plan


@dataclass
class RunIdentity:
    """What a run is made of, digested: decides whether an output is already up to date."""

    input_files: list[FileRecord]
    side_files: list[FileRecord]
    params_fingerprint: str
    fingerprint: str
    aliases: dict[str, str] = field(default_factory=dict)  # path as given -> resolved path


def run_identity(stage: Stage) -> RunIdentity:
    aliases: dict[str, str] = {}
    if stage.ctx.input is not None:
        shard_set = stage.ctx.input
        files = []
        for s in shard_set.shards:
            aliases[str(s.path)] = str(s.path.resolve())
            files.append(
                FileRecord(
                    path=aliases[str(s.path)], size=s.size, digest=shard_set.digest(s), rows=s.num_rows
                )
            )
    else:
        raw = list(stage.raw_inputs())
        # Raw files are digested side by side: xxh3 runs at memory speed with the GIL released, so the
        # reads overlap (1M rows of JSON lines, 380 MB in 10 files: 0.2 s on one core).
        with ThreadPoolExecutor(max_workers=min(8, max(1, len(raw)))) as pool:
            digests = list(pool.map(path_digest, raw))
        files = [
            FileRecord(path=str(p.resolve()), size=p.stat().st_size, digest=d)
            for p, d in zip(raw, digests, strict=True)
        ]
    side = [
        FileRecord(path=str(p.resolve()), size=_path_size(p), digest=path_digest(p))
        for p in stage.side_inputs()
    ]
    # Side inputs (a model, a blocklist) shape every task's output, so they join what every task's
    # fingerprint builds on: replacing the model reruns all tasks.
    params_fingerprint = value_digest(
        {
            "stage": stage.name,
            "version": stage.version,
            "params": stage.params.model_dump(mode="json"),
            "seed": stage.ctx.seed,
            "side_inputs": [f.digest for f in side],
            # Only when set: a full run's fingerprints stay what they were.
            **({"limit": stage.ctx.limit} if stage.ctx.limit is not None else {}),
        }
    )
    fingerprint = value_digest({"params": params_fingerprint, "inputs": [f.digest for f in files]})
    return RunIdentity(files, side, params_fingerprint, fingerprint, aliases)


def build_plan(stage: Stage, identity: RunIdentity) -> Plan:
    """The plan of a stage whose inputs `identity` digested: phases and tasks, not yet written."""
    manifest = stage.ctx.input.manifest if stage.ctx.input is not None else None
    input_path = stage.ctx.input_path
    phases = stage.planned_phases()  # checked: every phase is bound to a method
    names = [p.name for p in phases]
    if len(set(names)) != len(names):
        raise RuntimeError(f"stage {stage.name}: phase names repeat: {names}")
    plan = Plan(
        stage=stage.name,
        stage_version=stage.version,
        params=stage.params.model_dump(mode="json"),
        seed=stage.ctx.seed,
        input_path=str(storage.resolved(input_path)),
        input_stage=manifest.stage if manifest else None,
        input_manifest_digest=file_digest(storage.location(input_path) / MANIFEST_NAME) if manifest else None,
        input_files=identity.input_files,
        fingerprint=identity.fingerprint,
        params_fingerprint=identity.params_fingerprint,
        phases=phases,
        output=storage.resolved(stage.ctx.output),
        side_files=identity.side_files,
        limit=stage.ctx.limit,
    )
    plan._aliases = identity.aliases
    return plan
