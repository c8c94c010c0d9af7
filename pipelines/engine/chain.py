"""Running a recipe: its steps one after another, each a resumable stage run."""

from __future__ import annotations

from pathlib import Path

from thresher.pipelines.engine import storage
from thresher.pipelines.engine.errors import UsageError
from thresher.pipelines.engine.executor import ExecutorFactory, follow, run_stage
from thresher.pipelines.engine.lock import output_lock
from thresher.pipelines.engine.manifest import Manifest
from thresher.pipelines.engine.progress import Reporter
from thresher.pipelines.engine.recipe import Recipe, ResolvedStep, check_side_inputs, resolve
from thresher.pipelines.engine.slurm.executor import DryRun
from thresher.pipelines.engine.status import record_recipe_steps


def stage_input(step: ResolvedStep) -> Path:
    """The folder a stage reads: raw-file stages (ingest) name their files in params instead."""
    source = step.input_path
    return source.parent if step.step.stage.input_kind == "files" and source.is_file() else source


def run_recipe(
    recipe: Recipe,
    input_path: Path,
    output: Path,
    *,
    seed: int = 0,
    workers: int | None = None,
    force: bool = False,
    reporter: Reporter | None = None,
    executor: ExecutorFactory = lambda resources: None,
    limit: int | None = None,
) -> list[Manifest]:
    """Run every step; finished steps are skipped (same params and inputs), unfinished ones resume.
    With `limit`, the steps that read the run's input read its first `limit` rows (of each raw file, or
    of the shard set); the steps after them read what those wrote."""
    source, root = storage.resolved(input_path), storage.resolved(output)
    if source == root or source in root.parents or root in source.parents:
        # Step folders would land inside the input (a rerun would ingest them), or a step folder
        # would replace the input.
        raise UsageError(
            f"{output}: the output folder and the input {input_path} overlap (one is or holds the "
            "other); choose an output folder outside the input"
        )
    steps = resolve(recipe, source, root)
    check_side_inputs(recipe, steps, seed)
    manifests = []
    storage.make_dirs(root)
    follow(executor(steps[0].step.resources), root)
    with output_lock(output):
        record_recipe_steps(output, [(s.output.name, s.step.stage.name) for s in steps])
        for position, step in enumerate(steps):
            step_executor = executor(step.step.resources)
            try:
                manifests.append(
                    run_stage(
                        step.step.stage.name,
                        step.params,
                        stage_input(step),
                        step.output,
                        seed=seed,
                        workers=workers,
                        force=force,
                        reporter=reporter,
                        executor=step_executor,
                        limit=limit if storage.resolved(step.input_path) == source else None,
                    )
                )
            except DryRun:
                # The steps after this one read what it makes, so they cannot be planned yet: show the
                # jobs they will get, with their own resources.
                for later in steps[position + 1 :]:
                    stage = later.step.stage
                    phases = stage.declared_phases() or ["<phase>"]
                    executor(later.step.resources).show_later_step(stage.name, later.output, phases)  # type: ignore[union-attr]
                raise
    return manifests
