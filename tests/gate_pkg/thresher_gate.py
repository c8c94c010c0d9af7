"""A test plugin stage that holds each batch until the test opens a gate: lets a test act (requeue a Slurm
task, kill a Ray node) while a task is known to be running. Rows pass through unchanged."""

import os
import time
from pathlib import Path

from thresher.api import BatchOutcome, Field, MapStage, StageParams, pa


class GateParams(StageParams):
    gate: str = Field("", description="Folder: each batch appends to `started`, then waits for `open`.")


class GateWait(MapStage[GateParams]):
    name, summary = "gate-wait", "Pass rows through once the gate folder holds `open` (a test helper)."

    def map_batch(self, batch: pa.RecordBatch, offset: int) -> BatchOutcome:
        gate = Path(self.params.gate)
        with (gate / "started").open("a") as f:
            f.write(f"{os.getpid()} {offset}\n")
        while not (gate / "open").exists():
            time.sleep(0.05)
        return BatchOutcome(batch)
