"""Plan size, planning time, per-task start overhead and planner memory of exact and MinHash dedup over
synthetic shard sets of 100k-row shards, next to today's design (every task lists every file it reads).

    python -P bench/plan.py                          # 1k and 10k shards; today's design at 100 and 1k
    python -P bench/plan.py --shards 1000 --old 100  # quicker

No rows are written: the input is a ShardSet of footers (row counts, row groups of 8192 rows, as
thresher's writers leave them) plus a real `_manifest.json` listing every shard's digest, so the planner
sees what it would see at 1B rows. Footer reads by `ShardSet.open` come before planning and are not in
the planning time; their cost per shard is measured on small real files and printed below the table.

Per-task overhead is what a fresh `thresher task` process pays (beyond starting Python) to find that its
task has already finished: read the plan, digest the task's inputs (its shard from the plan, the index
of the phase before it), compare the record's fingerprint, stat its outputs. Earlier phases' records and
indexes are written as synthetic files so the check reads what it would read after a real run. The
figure is the slower of the last two phases' first task, median of three. "warm" is the same check in a
pool worker that has the plan in memory.

Today's design cannot be built at 10k shards (its plan lists shards x buckets paths: gigabytes), so its
10k-shard row is extrapolated from the two smaller sizes it is measured at, as b*n + c*n^2 (size and
time grow with shards x buckets, and buckets grow with shards).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from thresher.pipelines.engine import plan as plan_module
from thresher.pipelines.engine.atomic import write_json
from thresher.pipelines.engine.digest import value_digest
from thresher.pipelines.engine.executor import is_task_done, task_fingerprint
from thresher.pipelines.engine.manifest import FileRecord, InputLineage, Manifest, RowCounts, TaskRecord
from thresher.pipelines.engine.plan import InputDigests, Plan, build_plan, run_identity
from thresher.pipelines.engine.registry import get_stage
from thresher.pipelines.engine.shards import Shard, ShardSet
from thresher.pipelines.engine.stage import PhaseSpec, Stage, StageContext, TaskSpec

ROWS = 100_000
GROUP_ROWS = 8192
SHARD_BYTES = 60 << 20
FAKE = "xxh3-128:" + "0" * 32
STAGES = ("exact-dedup", "minhash-dedup")


def synthetic_input(root: Path, n: int) -> ShardSet:
    groups = (GROUP_ROWS,) * (ROWS // GROUP_ROWS) + ((ROWS % GROUP_ROWS,) if ROWS % GROUP_ROWS else ())
    shards = [Shard(root / f"part-{i:05d}.parquet", ROWS, SHARD_BYTES, None, groups) for i in range(n)]
    manifest = Manifest(
        stage="ingest",
        stage_version="1",
        params={},
        seed=0,
        fingerprint=FAKE,
        input=InputLineage(path=str(root / "raw")),
        tasks=[],
        totals=RowCounts(rows_in=n * ROWS, rows_out=n * ROWS),
        outputs=[
            FileRecord(path=s.name, size=s.size, digest=value_digest(s.name), rows=ROWS) for s in shards
        ],
        seconds=0.0,
        versions={},
    )
    root.mkdir(parents=True)
    manifest.write(root)
    return ShardSet(root, shards, manifest)


# -- today's design, as the engine had it: every task lists every file it reads -----------------------


def old_phases(stage: Stage) -> list[PhaseSpec]:
    assert stage.ctx.input is not None
    shards = stage.ctx.input.shards
    work = stage.ctx.work
    shard_tasks = [(i, s) for i, s in enumerate(shards)]
    if stage.name == "exact-dedup":
        n = stage._n_buckets()  # type: ignore[attr-defined]
        hashes = tuple(str(work / "hashes" / s.name) for s in shards)
        decisions = tuple(str(work / "decisions" / f"bucket-{b:05d}.parquet") for b in range(n))
        return [
            PhaseSpec(
                "hash", [TaskSpec(s.name, (str(s.path),), {"shard": i}, s.num_rows) for i, s in shard_tasks]
            ),
            PhaseSpec("decide", [TaskSpec(f"bucket-{b:05d}", hashes, {"bucket": b}) for b in range(n)]),
            PhaseSpec(
                "filter",
                [
                    TaskSpec(s.name, (str(s.path), *decisions), {"shard": i}, s.num_rows)
                    for i, s in shard_tasks
                ],
            ),
        ]
    bands, rows = stage.lsh_shape()  # type: ignore[attr-defined]
    band_files = tuple(str(work / "bands" / s.name) for s in shards)
    meta_files = tuple(str(work / "meta" / s.name) for s in shards)
    pair_files = tuple(str(work / "pairs" / f"band-{b:04d}.parquet") for b in range(bands))
    shape = {"bands": bands, "rows": rows}
    return [
        PhaseSpec(
            "signatures",
            [TaskSpec(s.name, (str(s.path),), {"shard": i, **shape}, s.num_rows) for i, s in shard_tasks],
        ),
        PhaseSpec("buckets", [TaskSpec(f"band-{b:04d}", band_files, {"band": b}) for b in range(bands)]),
        PhaseSpec("clusters", [TaskSpec("clusters", (*pair_files, *meta_files), shape)]),
        PhaseSpec(
            "filter",
            [
                TaskSpec(s.name, (str(s.path), str(work / "clusters.parquet")), {"shard": i}, s.num_rows)
                for i, s in shard_tasks
            ],
        ),
    ]


def old_write(plan: Plan) -> None:
    """The plan as today's engine writes it: one indented JSON file holding every task's input list."""
    data = {
        **plan.header(),
        "input_files": [f.model_dump() for f in plan.input_files],
        "phases": [{"name": p.name, "tasks": [t.to_json() for t in p.tasks]} for p in plan.phases],
    }
    write_json(plan.state_dir / "plan.json", data)


def old_read(output: Path) -> Plan:
    """Today's `Plan.read`: parse and validate all of it, in every task."""
    data = json.loads((output / "_thresher" / "plan.json").read_bytes())
    return Plan(
        stage=data["stage"],
        stage_version=data["stage_version"],
        params=data["params"],
        seed=data["seed"],
        input_path=data["input_path"],
        input_stage=data["input_stage"],
        input_manifest_digest=data["input_manifest_digest"],
        input_files=[FileRecord.model_validate(f) for f in data["input_files"]],
        fingerprint=data["fingerprint"],
        params_fingerprint=data["params_fingerprint"],
        phases=[PhaseSpec(p["name"], [TaskSpec.from_json(t) for t in p["tasks"]]) for p in data["phases"]],
        output=output.resolve(),
    )


def plan_bytes(output: Path) -> int:
    state = output / "_thresher"
    return (state / "plan.json").stat().st_size + sum(f.stat().st_size for f in (state / "plan").glob("*"))


def old_digest_index(plan: Plan, phase_index: int) -> dict[str, str]:
    index = {f.path: f.digest for f in plan.input_files}
    for p in range(phase_index):
        for t in range(len(plan.phases[p].tasks)):
            record = plan.read_record(p, t)
            assert record is not None
            for f in record.outputs:
                index[str((plan.output / f.path).resolve())] = f.digest
    return index


def old_fingerprint(plan: Plan, phase_index: int, task_index: int, digests: dict[str, str]) -> str:
    task = plan.phases[phase_index].tasks[task_index]
    return value_digest(
        {
            "stage": plan.params_fingerprint,
            "phase": plan.phases[phase_index].name,
            "key": task.key,
            "args": task.args,
            "inputs": [digests[str(Path(p).resolve())] for p in task.inputs],
        }
    )


# -- measuring ------------------------------------------------------------------------------------------


def make_plan(name: str, shard_set: ShardSet, output: Path, old: bool) -> Plan:
    cls = get_stage(name)
    stage = cls(cls.Params(), StageContext(shard_set.root, output, 0, shard_set))
    identity = run_identity(stage)
    plan = build_plan(stage, identity)
    output.mkdir(parents=True, exist_ok=True)
    if old:
        plan.phases = old_phases(stage)
        old_write(plan)
    else:
        plan.write()
    return plan


# Where each phase's tasks write, as the stages name their files (a task's key names its shard, its shard
# part or its bucket).
OUTPUTS = {
    "hash": ["_thresher/work/hashes/{key}"],
    "decide": ["_thresher/work/decisions/{key}.parquet"],
    "signatures": ["_thresher/work/meta/{key}", "_thresher/work/bands/{key}"],
    "buckets": ["_thresher/work/pairs/{key}.parquet"],
    "clusters": ["_thresher/work/clusters.parquet"],
    "filter": ["{key}", "_dropped/{key}"],
}


def fake_outputs(plan: Plan, phase_index: int, task_index: int) -> list[FileRecord]:
    """Output records like a real task's, with made-up digests."""
    phase, task = plan.phases[phase_index], plan.phases[phase_index].tasks[task_index]
    names = [n.format(key=task.key) for n in OUTPUTS[phase.name]]
    return [FileRecord(path=n, size=0, digest=value_digest(n)) for n in names]


def write_records(plan: Plan, phase_index: int, inputs: Callable[[int], list[FileRecord]]) -> None:
    phase = plan.phases[phase_index]
    folder = plan.record_path(phase_index, 0).parent
    folder.mkdir(parents=True, exist_ok=True)
    for t, task in enumerate(phase.tasks):
        record = TaskRecord(
            phase=phase.name,
            index=t,
            key=task.key,
            fingerprint=FAKE,
            inputs=inputs(t),
            outputs=fake_outputs(plan, phase_index, t),
            seconds=1.0,
        )
        # Compact, not write_json's indent: only the bytes a reader parses matter here.
        plan.record_path(phase_index, t).write_text(record.model_dump_json())


def finish_for_check(plan: Plan, phase_index: int, old: bool) -> None:
    """Write the first task's record with its true fingerprint and create its outputs."""
    if old:
        fingerprint = old_fingerprint(plan, phase_index, 0, old_digest_index(plan, phase_index))
    else:
        fingerprint = task_fingerprint(plan, phase_index, 0, InputDigests(plan, phase_index))
    outputs = fake_outputs(plan, phase_index, 0)
    for f in outputs:
        (plan.output / f.path).parent.mkdir(parents=True, exist_ok=True)
        (plan.output / f.path).touch()
    phase, task = plan.phases[phase_index], plan.phases[phase_index].tasks[0]
    record = TaskRecord(
        phase=phase.name,
        index=0,
        key=task.key,
        fingerprint=fingerprint,
        inputs=[],
        outputs=outputs,
        seconds=1,
    )
    plan.record_path(phase_index, 0).parent.mkdir(parents=True, exist_ok=True)
    plan.record_path(phase_index, 0).write_text(record.model_dump_json())


def check_seconds(output: Path, phase_index: int, old: bool, warm: bool) -> float:
    """Seconds a task start takes to find its task finished."""
    if not warm:
        plan_module._loaded.clear()
    start = time.perf_counter()
    if old:
        plan = old_read(output)
        fingerprint = old_fingerprint(plan, phase_index, 0, old_digest_index(plan, phase_index))
        record = plan.read_record(phase_index, 0)
        done = record is not None and record.fingerprint == fingerprint
        done = done and all((plan.output / f.path).is_file() for f in record.outputs)  # type: ignore[union-attr]
    else:
        plan = Plan.load(output)
        digests = InputDigests(plan, phase_index)
        done = is_task_done(plan, phase_index, 0, task_fingerprint(plan, phase_index, 0, digests))
    seconds = time.perf_counter() - start
    assert done, "the checked task should count as finished"
    return seconds


def measure(name: str, n: int, old: bool, root: Path) -> dict[str, float]:
    work = root / f"{name}-{n}-{'old' if old else 'new'}"
    shard_set = synthetic_input(work / "in", n)
    start = time.perf_counter()
    plan = make_plan(name, shard_set, work / "out", old)
    planning = time.perf_counter() - start
    size = plan_bytes(work / "out")
    shutil.rmtree(work / "out")
    tracemalloc.start()
    make_plan(name, shard_set, work / "out", old)
    memory = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    plan = old_read(work / "out") if old else Plan.read(work / "out")

    # Earlier phases finished: records, as the real tasks leave them (today's list every input).
    last = len(plan.phases) - 1
    index_build = 0.0
    for p in range(last):
        tasks = plan.phases[p].tasks
        write_records(
            plan, p, lambda t, tasks=tasks: [FileRecord(path=i, size=0, digest=FAKE) for i in tasks[t].inputs]
        )
    if not old:
        for p in range(last):
            start = time.perf_counter()
            plan.index_digest(p)
            index_build = max(index_build, time.perf_counter() - start)
    checks = []
    for p in (last - 1, last):
        finish_for_check(plan, p, old)
        # Median of three: the first call also pays one-off costs a fresh process pays at import.
        cold = sorted(check_seconds(work / "out", p, old, warm=False) for _ in range(3))[1]
        checks.append((cold, check_seconds(work / "out", p, old, warm=True)))
    shutil.rmtree(work)
    return {
        "plan_mb": size / 1e6,
        "planning_s": planning,
        "task_ms": max(c[0] for c in checks) * 1e3,
        "warm_ms": max(c[1] for c in checks) * 1e3,
        "memory_mb": memory / 1e6,
        "index_s": index_build,
        "tasks": sum(len(p.tasks) for p in plan.phases),
    }


def extrapolate(points: dict[int, dict[str, float]], n: int) -> dict[str, float]:
    """Through the two measured sizes as b*n + c*n^2 (c >= 0): the shards x buckets term dominates."""
    (n1, a), (n2, b) = sorted(points.items())
    out = {}
    for key in a:
        c = max(0.0, (b[key] / n2 - a[key] / n1) / (n2 - n1))
        linear = b[key] / n2 - c * n2
        out[key] = max(0.0, linear * n + c * n * n)
    return out


def footer_seconds(root: Path, files: int = 200) -> float:
    """Seconds ShardSet.open spends per shard (footer and schema checks), on small real files."""
    root.mkdir(parents=True)
    table = pa.table({"id": [str(i) for i in range(GROUP_ROWS * 2)], "text": ["x"] * (GROUP_ROWS * 2)})
    for i in range(files):
        pq.write_table(table, root / f"part-{i:05d}.parquet", row_group_size=GROUP_ROWS // 8)
    start = time.perf_counter()
    ShardSet.open(root, ["id", "text"], ["text"])
    return (time.perf_counter() - start) / files


def one_big_shard(root: Path, rows: int) -> dict[int, tuple[int, float, float]]:
    """MinHash over one real shard of `rows` rows (row groups of 8192, as thresher writes them), with one
    and two workers: (signatures tasks, their summed seconds, wall seconds of the phase). With two
    workers the wall time includes starting the pool (spawned Pythons, about a second)."""
    import numpy as np

    from thresher.pipelines.engine.executor import run_stage
    from thresher.pipelines.engine.progress import SilentReporter

    class PhaseClock(SilentReporter):
        def __init__(self) -> None:
            self.started: dict[str, float] = {}
            self.seconds: dict[str, float] = {}

        def phase_started(self, stage: str, phase: str, tasks: int, skipped: int, rows: int | None) -> None:
            self.started[phase] = time.perf_counter()

        def phase_finished(self, phase: str) -> None:
            self.seconds[phase] = time.perf_counter() - self.started[phase]

    rng = np.random.default_rng(0)
    vocab = np.array([f"w{i}" for i in range(5000)])
    texts = [" ".join(w) for w in vocab[rng.integers(0, len(vocab), size=(rows, 60))]]
    corpus = root / "big"
    corpus.mkdir(parents=True)
    table = pa.table({"id": [f"doc-{i:09d}" for i in range(rows)], "text": texts})
    pq.write_table(table, corpus / "part-00000.parquet", row_group_size=GROUP_ROWS)
    result = {}
    for workers in (1, 2):
        clock = PhaseClock()
        manifest = run_stage(
            "minhash-dedup", {}, corpus, root / f"big-{workers}", workers=workers, reporter=clock
        )
        tasks = [t for t in manifest.tasks if t.phase == "signatures"]
        result[workers] = (len(tasks), sum(t.seconds for t in tasks), clock.seconds["signatures"])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shards", type=int, nargs="+", default=[1000, 10_000])
    parser.add_argument(
        "--old", type=int, nargs=2, default=[100, 1000], help="shards today's design is run at"
    )
    parser.add_argument("--real-rows", type=int, default=100_000, help="rows of the one real shard; 0: skip")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="thresher-bench-plan-"))
    rows: list[tuple[str, int, str, dict[str, float], bool]] = []
    try:
        for name in STAGES:
            old = {n: measure(name, n, True, root) for n in args.old}
            for n in args.shards:
                if n in old:
                    rows.append((name, n, "today", old[n], False))
                else:
                    rows.append((name, n, "today", extrapolate(old, n), True))
                rows.append((name, n, "phase index", measure(name, n, False, root), False))
        per_footer = footer_seconds(root / "footers")
        big = one_big_shard(root / "real", args.real_rows) if args.real_rows else {}
    finally:
        shutil.rmtree(root, ignore_errors=True)

    head = f"{'stage':<14} {'shards':>7} {'rows':>6} {'design':<12} {'tasks':>9} {'plan MB':>9} "
    head += f"{'plan s':>8} {'task ms':>9} {'warm ms':>8} {'planner MB':>11} {'index s':>8}"
    print(head)
    for name, n, design, m, est in rows:
        mark = "~" if est else " "
        tasks = f"{m['tasks']:,.0f}" if not est else "-"
        print(
            f"{name:<14} {n:>7,} {n * ROWS / 1e9:>5.1f}B {design:<12} {tasks:>9} {mark}{m['plan_mb']:>8,.1f} "
            f"{mark}{m['planning_s']:>7.2f} {mark}{m['task_ms']:>8.1f} {mark}{m['warm_ms']:>7.1f} "
            f"{mark}{m['memory_mb']:>10,.0f} {m.get('index_s', 0.0) if not est else 0.0:>8.2f}"
        )
    print(f"~ extrapolated from today's design measured at {args.old[0]:,} and {args.old[1]:,} shards")
    print(
        f"footer reads before planning (ShardSet.open): {per_footer * 1e3:.2f} ms a shard, "
        f"~{per_footer * max(args.shards):.1f} s at {max(args.shards):,} shards"
    )
    for workers, (tasks, busy, wall) in big.items():
        print(
            f"real data, MinHash signatures over one {args.real_rows:,}-row shard, {workers} worker(s): "
            f"{tasks} tasks, {busy:.1f} s of task time in {wall:.1f} s wall"
        )
    print(
        f"python {sys.version.split()[0]}, {os.cpu_count()} cores; targets: plan <= 20 MB, planning <= 30 s,"
    )
    print("per-task overhead <= 50 ms at 10k shards x 100k rows")


if __name__ == "__main__":
    main()
