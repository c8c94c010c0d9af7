"""The surface a stage author writes against: `Stage[P]`, `MapStage.map_batch`, phases bound to methods,
named task inputs, `tc.count` counters, recorded files, `setup()` once per process, and plugins that are
declared wrongly being reported instead of breaking the CLI."""

from __future__ import annotations

import json
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from factories import random_corpus, write_shards
from typer.testing import CliRunner

import thresher.api as api
from thresher.cli.app import app
from thresher.pipelines.engine import registry
from thresher.pipelines.engine.executor import plan_stage, run_stage
from thresher.pipelines.engine.mapping import BatchOutcome, MapStage, map_batches
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
from thresher.pipelines.stages.pii.stage import Pii, PiiParams

# Written to a folder on sys.path with a dist-info beside it, so the entry points are found for real, by
# this process and by the pool's spawned workers (which inherit sys.path).
PROBE_MODULE = """
import os
import uuid
from pathlib import Path

import pyarrow.parquet as pq
from thresher.api import (
    BatchOutcome, MapStage, PhaseSpec, Stage, StageParams, TaskContext, TaskResult, TaskSpec, phase,
)


class ProbeParams(StageParams):
    log_dir: str
    misspell: bool = False


class SetupProbe(MapStage[ProbeParams]):
    name = "setup-probe"
    summary = "Touch a file per setup() and per batch, to count them."
    batch_rows = 50

    def setup(self):
        self.loaded = uuid.uuid4().hex
        Path(self.params.log_dir, f"setup-{os.getpid()}-{self.loaded}").touch()

    def writes_dropped(self):
        return False

    def map_batch(self, batch, offset):
        name = f"batch-{os.getpid()}-{self.loaded}-{offset}-{uuid.uuid4().hex}"
        Path(self.params.log_dir, name).touch()
        return BatchOutcome(batch, counts={"rows_seen": batch.num_rows})


class TwoPhase(Stage[ProbeParams]):
    name = "two-phase"
    summary = "Count rows per shard, then once more."

    def phases(self):
        shards = [TaskSpec.named(s.name, {"shard": s.path}) for s in self.ctx.input.shards]
        if self.params.misspell:
            first = PhaseSpec("count_row", shards)
        else:
            first = PhaseSpec.of(self.count_rows, shards)
        return [first, PhaseSpec.of(self.finish, [TaskSpec("all")])]

    @phase("count_rows")
    def count_rows(self, task: TaskSpec, tc: TaskContext) -> TaskResult:
        tc.count("rows", pq.read_metadata(task.input("shard")).num_rows)
        return TaskResult()

    @phase()
    def finish(self, task: TaskSpec, tc: TaskContext) -> TaskResult:
        tc.count("finished")
        return TaskResult()


class Misnamed(SetupProbe):
    name = "not-its-entry-point"
"""

ENTRY_POINTS = """
[thresher.stages]
setup-probe = thresher_probe_stages:SetupProbe
two-phase = thresher_probe_stages:TwoPhase
wrong-name = thresher_probe_stages:Misnamed
"""


@pytest.fixture
def probe_plugin(tmp_path: Path) -> Iterator[Path]:
    site = tmp_path / "site"
    dist = site / "thresher_probe_stages-0.0.1.dist-info"
    dist.mkdir(parents=True)
    (site / "thresher_probe_stages.py").write_text(textwrap.dedent(PROBE_MODULE))
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: thresher-probe-stages\nVersion: 0.0.1\n")
    (dist / "entry_points.txt").write_text(ENTRY_POINTS)
    sys.path.insert(0, str(site))
    registry.clear_cache()
    try:
        yield tmp_path
    finally:
        sys.path.remove(str(site))
        sys.modules.pop("thresher_probe_stages", None)
        registry.clear_cache()


def corpus(root: Path, rows: int = 400, per_shard: int = 100) -> Path:
    folder = root / "corpus"
    write_shards(random_corpus(rows, seed=5, dup_rate=0.0), folder, rows_per_shard=per_shard)
    return folder


# --- Stage[P] ------------------------------------------------------------------------------------------


class LegacyParams(StageParams):
    n: int = 1


class Legacy(Stage):
    name = "legacy"
    Params = LegacyParams
    summary = "The older way: Params declared by hand, one run_task."

    def phases(self) -> list[PhaseSpec]:
        return [PhaseSpec("anything", [TaskSpec("one")])]

    def run_task(self, phase: str, task: TaskSpec, tc: TaskContext) -> TaskResult:
        return TaskResult(extra={"phase": phase})


def test_the_generic_gives_params_and_the_old_declaration_still_works(tmp_path: Path) -> None:
    assert Pii.Params is PiiParams and Bound.Params is LegacyParams  # neither declares Params
    assert Legacy.Params is LegacyParams
    legacy = Legacy(LegacyParams(), StageContext(tmp_path, tmp_path / "out", 0))
    assert legacy.planned_phases()[0].name == "anything"
    assert legacy.run_task("anything", TaskSpec("one"), TaskContext(legacy)).extra == {"phase": "anything"}


# --- phases bound to methods ---------------------------------------------------------------------------


class Bound(Stage[LegacyParams]):
    name = "bound"
    summary = "Two phases bound to methods."
    misspell = False

    def phases(self) -> list[PhaseSpec]:
        if self.misspell:
            return [PhaseSpec("hsh", [TaskSpec("a")])]
        return [PhaseSpec.of(self.hash, [TaskSpec("a")]), PhaseSpec.of(self.merge_buckets, [TaskSpec("b")])]

    @phase()
    def hash(self, task: TaskSpec, tc: TaskContext) -> TaskResult:
        return TaskResult(extra={"ran": "hash"})

    @phase("merge")
    def merge_buckets(self, task: TaskSpec, tc: TaskContext) -> TaskResult:
        return TaskResult(extra={"ran": "merge"})


def test_phases_dispatch_to_their_methods_and_a_misspelt_phase_is_an_error(tmp_path: Path) -> None:
    stage = Bound(LegacyParams(), StageContext(tmp_path, tmp_path / "out", 0))
    assert [p.name for p in stage.planned_phases()] == ["hash", "merge"]
    tc = TaskContext(stage)
    assert stage.run_task("hash", TaskSpec("a"), tc).extra == {"ran": "hash"}
    assert stage.run_task("merge", TaskSpec("b"), tc).extra == {"ran": "merge"}
    with pytest.raises(RuntimeError, match="no phase 'hsh'"):
        stage.run_task("hsh", TaskSpec("a"), tc)
    stage.misspell = True
    with pytest.raises(TypeError, match="plans phase 'hsh'"):
        stage.planned_phases()
    with pytest.raises(TypeError, match="not bound to a phase"):
        PhaseSpec.of(stage.planned_phases, [])


def test_two_methods_for_one_phase_is_an_error_when_the_class_is_made() -> None:
    with pytest.raises(TypeError, match="bound to two methods"):

        class Twice(Bound):
            @phase("hash")
            def hash_again(self, task: TaskSpec, tc: TaskContext) -> TaskResult:
                return TaskResult()


# --- named task inputs ---------------------------------------------------------------------------------


def test_named_task_inputs_round_trip_through_the_plan() -> None:
    task = TaskSpec.named("t", {"shard": Path("/d/a.parquet"), "lists": ["/l/1", "/l/2"]}, {"k": 1}, 10)
    assert task.inputs == ("/d/a.parquet", "/l/1", "/l/2")
    again = TaskSpec.from_json(json.loads(json.dumps(task.to_json())))
    assert again == task
    assert again.input("shard") == Path("/d/a.parquet")
    assert again.input_list("lists") == [Path("/l/1"), Path("/l/2")]
    with pytest.raises(KeyError, match="no input named 'shrad'"):
        again.input("shrad")
    with pytest.raises(KeyError, match="holds 2 paths"):
        again.input("lists")
    # A positional task plans exactly as before.
    assert "names" not in TaskSpec("p", ("/x",)).to_json()


# --- MapStage, BatchOutcome, counters, recorded files --------------------------------------------------


def test_drop_rows_keeps_false_and_null_rows_and_indexes_reasons_by_row() -> None:
    batch = pa.RecordBatch.from_pylist([{"id": str(i), "text": "x"} for i in range(4)])
    outcome = BatchOutcome.drop_rows(
        batch, pa.array([True, None, False, True]), ["a", None, None, "b"], ["d0", None, None, "d3"]
    )
    assert outcome.kept.column("id").to_pylist() == ["1", "2"]
    assert outcome.dropped is not None and not isinstance(outcome.dropped, pa.Table)
    table = outcome.dropped.table("s")
    assert table.to_pylist() == [
        {"id": "0", "stage": "s", "reason": "a", "detail": "d0"},
        {"id": "3", "stage": "s", "reason": "b", "detail": "d3"},
    ]
    unchanged = BatchOutcome.drop_rows(batch, [False] * 4, "never", counts={"n": 4})
    assert unchanged.kept is batch and unchanged.dropped is None and unchanged.counts == {"n": 4}


class EveryThird(MapStage[LegacyParams]):
    name = "every-third"
    summary = "Drop rows whose shard row index is a multiple of 3; count what it saw."
    batch_rows = 7

    def map_batch(self, batch: pa.RecordBatch, offset: int) -> BatchOutcome:
        rows = range(offset, offset + batch.num_rows)
        return BatchOutcome.drop_rows(batch, [r % 3 == 0 for r in rows], "third", counts={"seen": len(rows)})


def test_map_batches_passes_offsets_counts_and_records_each_file_once(tmp_path: Path) -> None:
    folder = corpus(tmp_path, rows=50, per_shard=50)
    out = tmp_path / "out"
    out.mkdir()
    stage = EveryThird(LegacyParams(), StageContext(folder, out, 0))
    tc = TaskContext(stage)
    shard = sorted(folder.glob("*.parquet"))[0]
    result = map_batches(shard, tc, stage.map_batch, writes_dropped=True, batch_rows=7)
    assert result.counts is not None and result.counts.dropped == {"third": 17}
    kept_ids = pq.read_table(out / shard.name)["id"].to_pylist()
    every = pq.read_table(shard)["id"].to_pylist()
    assert kept_ids == [i for n, i in enumerate(every) if n % 3]
    assert tc.counters == {"seen": 50}
    assert [f.path for f in tc.outputs] == [shard.name, f"_dropped/{shard.name}"]
    # Recording a path again replaces its entry rather than listing the file twice.
    tc.record(out / shard.name)
    assert sorted(f.path for f in tc.outputs) == sorted([shard.name, f"_dropped/{shard.name}"])


# --- through the engine: setup() once per process, counters in the manifest ----------------------------


def test_setup_runs_once_per_worker_process_and_counters_reach_the_manifest(probe_plugin: Path) -> None:
    folder = corpus(probe_plugin, rows=600, per_shard=100)
    logs = probe_plugin / "logs"
    logs.mkdir()
    manifest = run_stage("setup-probe", {"log_dir": str(logs)}, folder, probe_plugin / "out", workers=2)
    setups = [p.name.split("-") for p in logs.glob("setup-*")]
    batches = [p.name.split("-") for p in logs.glob("batch-*")]
    assert len(batches) == 12  # 6 shards x 2 batches of 50
    pids = {pid for _, pid, _ in setups}
    assert 1 <= len(setups) <= 2 and len(pids) == len(setups)  # one setup per process, 2 processes at most
    # Every batch ran on a stage instance set up in its own process.
    assert sorted(int(offset) for *_, offset, _ in batches) == [0] * 6 + [50] * 6
    assert {(pid, loaded) for _, pid, loaded, _, _ in batches} <= {(pid, loaded) for _, pid, loaded in setups}
    assert manifest.summary["counters"] == {"rows_seen": 600}
    assert sum(t.extra["counters"]["rows_seen"] for t in manifest.tasks) == 600


def test_thresher_task_sets_the_stage_up_once_for_the_tasks_it_runs(probe_plugin: Path) -> None:
    folder = corpus(probe_plugin, rows=200, per_shard=100)
    logs = probe_plugin / "logs"
    logs.mkdir()
    plan, _ = plan_stage("setup-probe", {"log_dir": str(logs)}, folder, probe_plugin / "out")
    runner = CliRunner()
    for index in ("0", "1"):
        result = runner.invoke(app, ["task", str(plan.output), "--phase", "map", "--index", index, "-q"])
        assert result.exit_code == 0, result.output
    assert len(list(logs.glob("setup-*"))) == 1 and len(list(logs.glob("batch-*"))) == 4


def test_a_bound_multi_phase_plugin_runs_and_a_misspelt_phase_fails_at_planning(probe_plugin: Path) -> None:
    folder = corpus(probe_plugin, rows=300, per_shard=100)
    params = {"log_dir": str(probe_plugin)}
    manifest = run_stage("two-phase", params, folder, probe_plugin / "out", workers=1)
    assert [t.phase for t in manifest.tasks] == ["count_rows"] * 3 + ["finish"]
    assert manifest.summary == {"counters": {"finished": 1, "rows": 300}}
    with pytest.raises(TypeError, match="plans phase 'count_row'"):
        run_stage("two-phase", {**params, "misspell": True}, folder, probe_plugin / "bad", workers=1)
    assert not (probe_plugin / "bad" / "_thresher" / "plan.json").exists()


def test_a_plugin_named_unlike_its_entry_point_is_reported_not_fatal(probe_plugin: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(app, ["stages"])
    assert result.exit_code == 0, result.output
    assert "setup-probe" in result.output and "exact-dedup" in result.output
    lines = [line for line in result.output.splitlines() if line.startswith("left out:")]
    assert len(lines) == 1
    assert "entry point 'wrong-name' but class name 'not-its-entry-point'" in lines[0]
    assert "wrong-name" not in registry.stages() and "not-its-entry-point" not in registry.stages()
    # Other commands go on working.
    folder = corpus(probe_plugin, rows=100, per_shard=100)
    out = probe_plugin / "out"
    args = ["apply", "setup-probe", str(folder), str(out), "-p", f"log_dir={probe_plugin}", "-q"]
    assert runner.invoke(app, args).exit_code == 0


# --- thresher.api --------------------------------------------------------------------------------------


def test_the_public_api_exports_what_it_lists() -> None:
    assert len(set(api.__all__)) == len(api.__all__)
    for name in api.__all__:
        assert getattr(api, name) is not None
    assert api.MapStage is MapStage and api.phase is phase
    import thresher.pipelines.api as same

    assert same.Stage is api.Stage
