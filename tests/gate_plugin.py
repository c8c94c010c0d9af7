"""Makes tests/gate_pkg an installed plugin for child processes without touching the virtualenv: a folder
with the module and a `.dist-info` holding its entry point, put on PYTHONPATH. Slurm tasks and Ray
workers started with that environment find the `gate-wait` stage like any installed plugin."""

from __future__ import annotations

import shutil
from pathlib import Path

SOURCE = Path(__file__).parent / "gate_pkg" / "thresher_gate.py"


def gate_plugin_dir(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(SOURCE, folder / SOURCE.name)
    info = folder / "thresher_gate-0.0.1.dist-info"
    info.mkdir(exist_ok=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: thresher-gate\nVersion: 0.0.1\n")
    (info / "entry_points.txt").write_text("[thresher.stages]\ngate-wait = thresher_gate:GateWait\n")
    return folder


def with_plugin(env: dict[str, str], folder: Path) -> dict[str, str]:
    path = env.get("PYTHONPATH")
    return {**env, "PYTHONPATH": f"{folder}:{path}" if path else str(folder)}
