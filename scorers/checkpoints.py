"""Training checkpoints that a killed run resumes from exactly: safetensors for tensors, JSON for the rest.

A checkpoint folder `step-00000120/` holds the model weights (`model.safetensors`), the AdamW moments and
the state of every random generator the loop draws from (`optimizer.safetensors`), and the loop's own
state (`state.json`: step, fingerprint, and whatever else the trainer needs, such as DoReMi's domain
weights). Python floats survive the JSON round trip bit for bit, so a resumed run continues exactly as the
uninterrupted one would. Nothing is pickled. The folder is written under a temp name and renamed; only the
newest checkpoint is kept.

`fingerprint` names what is being trained (params, seed, data): a checkpoint with another fingerprint is
never resumed from.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PREFIX = "step-"
# Bumped when the layout changes, so a checkpoint of an older layout is passed over instead of misread.
FORMAT = 1
_GENERATOR = "generator."


def latest_checkpoint(folder: Path, fingerprint: str) -> Path | None:
    """The newest complete checkpoint in `folder` written for `fingerprint`, if any."""
    candidates = sorted(folder.glob(f"{PREFIX}*"), reverse=True) if folder.is_dir() else []
    for path in candidates:
        try:
            state = json.loads((path / "state.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if state.get("fingerprint") == fingerprint and state.get("format") == FORMAT:
            return path
    return None


def save_checkpoint(
    folder: Path,
    model: Any,
    optimizer: Any,
    generators: Mapping[str, Any],
    state: Mapping[str, Any],
) -> Path:
    """Write a checkpoint for `state["step"]` (and `state["fingerprint"]`) and remove older ones."""
    from safetensors.torch import save_file, save_model

    final = folder / f"{PREFIX}{int(state['step']):08d}"
    tmp = folder / f".{final.name}.{os.getpid()}.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_model(model, str(tmp / "model.safetensors"))  # handles tied input/output embeddings
    tensors = {f"{_GENERATOR}{name}": g.get_state() for name, g in generators.items()}
    for index, moments in optimizer.state_dict()["state"].items():
        for name, value in moments.items():
            tensors[f"adamw.{index}.{name}"] = value.detach().cpu().contiguous()
    save_file(tensors, str(tmp / "optimizer.safetensors"))
    (tmp / "state.json").write_text(json.dumps({**state, "format": FORMAT}, indent=1), encoding="utf-8")
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    # One checkpoint is enough to resume from; older ones only cost disk.
    for old in folder.glob(f"{PREFIX}*"):
        if old != final:
            shutil.rmtree(old, ignore_errors=True)
    return final


def load_checkpoint(path: Path, model: Any, optimizer: Any, generators: Mapping[str, Any]) -> dict[str, Any]:
    """Restore the model, the optimizer moments and the generators in place; return the JSON state."""
    from safetensors.torch import load_file, load_model

    load_model(model, str(path / "model.safetensors"))
    tensors = load_file(str(path / "optimizer.safetensors"))
    for name, generator in generators.items():
        generator.set_state(tensors.pop(f"{_GENERATOR}{name}"))
    moments: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        _, index, name = key.split(".", 2)
        moments.setdefault(int(index), {})[name] = value
    groups = optimizer.state_dict()["param_groups"]
    optimizer.load_state_dict({"state": moments, "param_groups": groups})
    state = json.loads((path / "state.json").read_text(encoding="utf-8"))
    state.pop("format", None)
    return state


@dataclass(frozen=True)
class CheckpointPlan:
    """Where a training loop checkpoints, every how many steps, and what a checkpoint must match to be
    resumed from."""

    folder: Path
    fingerprint: str
    every: int

    def due(self, step: int, last: int) -> bool:
        """Checkpoint after `step` (counted from 1)? Not after the last one: the model is saved then."""
        return step % self.every == 0 and step < last

    def save(
        self, step: int, model: Any, optimizer: Any, generators: Mapping[str, Any], **state: Any
    ) -> None:
        save_checkpoint(
            self.folder,
            model,
            optimizer,
            generators,
            {"step": step, "fingerprint": self.fingerprint, **state},
        )

    def resume(self, model: Any, optimizer: Any, generators: Mapping[str, Any]) -> dict[str, Any] | None:
        """Restore the newest matching checkpoint in place and return its state, or None (a fresh run)."""
        found = latest_checkpoint(self.folder, self.fingerprint)
        return None if found is None else load_checkpoint(found, model, optimizer, generators)
