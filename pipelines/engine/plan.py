"""A stage run's plan on disk: enough for any process (a pool worker, a Slurm array task) to run one task.

Layout of an output directory while and after a stage runs:
    part-*.parquet, _dropped/part-*.parquet    the shard set
    _manifest.json                              written last: its presence means the stage finished
    _thresher/plan.json                         this plan
    _thresher/tasks/<NN>-<phase>/<index>.json   one record per finished task
    _thresher/work/                             files passed between phases, removed on success
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from thresher.pipelines.engine.atomic import write_json
from thresher.pipelines.engine.errors import ThresherError
from thresher.pipelines.engine.manifest import FileRecord, TaskRecord
from thresher.pipelines.engine.registry import get_stage
from thresher.pipelines.engine.shards import STATE_DIR, Shard, ShardSet
from thresher.pipelines.engine.stage import PhaseSpec, Stage, StageContext, TaskSpec

PLAN_NAME = "plan.json"


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

    @property
    def state_dir(self) -> Path:
        return self.output / STATE_DIR

    def record_path(self, phase_index: int, task_index: int) -> Path:
        phase = self.phases[phase_index]
        return self.state_dir / "tasks" / f"{phase_index:02d}-{phase.name}" / f"{task_index:06d}.json"

    def failure_path(self, phase_index: int, task_index: int) -> Path:
        return self.record_path(phase_index, task_index).with_suffix(".failed")

    def to_json(self) -> dict[str, Any]:
        return {
            "stage": self.stage,
            "stage_version": self.stage_version,
            "params": self.params,
            "seed": self.seed,
            "input_path": self.input_path,
            "input_stage": self.input_stage,
            "input_manifest_digest": self.input_manifest_digest,
            "input_files": [f.model_dump() for f in self.input_files],
            "fingerprint": self.fingerprint,
            "params_fingerprint": self.params_fingerprint,
            "phases": [{"name": p.name, "tasks": [t.to_json() for t in p.tasks]} for p in self.phases],
        }

    def write(self) -> None:
        write_json(self.state_dir / PLAN_NAME, self.to_json())

    @classmethod
    def read(cls, output: Path) -> Plan:
        path = Path(output) / STATE_DIR / PLAN_NAME
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise ThresherError(f"{output}: no stage plan here ({path} is missing)") from None
        return cls(
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
            phases=[
                PhaseSpec(p["name"], [TaskSpec.from_json(t) for t in p["tasks"]]) for p in data["phases"]
            ],
            output=Path(output).resolve(),
        )

    def build_stage(self) -> Stage:
        """Rebuild the stage from the plan alone, without re-opening every input shard."""
        cls = get_stage(self.stage)
        params = cls.Params.model_validate(self.params)
        shard_set = None
        if cls.input_kind == "shards":
            shards = [Shard(Path(f.path), f.rows or 0, f.size, None) for f in self.input_files]
            shard_set = ShardSet(Path(self.input_path), shards, None)
        ctx = StageContext(Path(self.input_path), self.output, self.seed, shard_set)
        return cls(params, ctx)

    def read_record(self, phase_index: int, task_index: int) -> TaskRecord | None:
        path = self.record_path(phase_index, task_index)
        try:
            return TaskRecord.model_validate_json(path.read_bytes())
        except (FileNotFoundError, ValueError):
            return None
