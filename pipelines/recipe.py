"""Recipes: a YAML chain of stages, validated whole before anything runs.

    name: web-pretrain
    stages:
      - stage: ingest
        params: {rows_per_shard: 1000}
      - stage: exact-dedup
      - stage: minhash-dedup
        params: {threshold: 0.8}

Each step writes `OUTPUT/NN-<id>/` (id defaults to the stage name). A step reads the previous step's
output unless it says `input: <step id>` (or `input: input` for the run's --input). String params may
name other outputs as `{input}`, `{output}` or `{steps.<id>}`, e.g.
`model: "{steps.quality-train}/model.bin"`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from thresher.pipelines.errors import ThresherError, UsageError
from thresher.pipelines.registry import get_stage, stages
from thresher.pipelines.stage import Stage, StageParams

_REF = re.compile(r"\{(input|output|steps\.[A-Za-z0-9_.-]+)\}")
STEP_KEYS = {"stage", "id", "input", "params"}


@dataclass
class Step:
    index: int
    id: str
    stage: type[Stage]
    input: str | None  # a step id, "input", or None for the previous step
    params: dict[str, Any]
    line: int

    @property
    def folder(self) -> str:
        return f"{self.index:02d}-{self.id}"


@dataclass
class Recipe:
    path: Path
    name: str
    steps: list[Step] = field(default_factory=list)
    seed: int | None = None

    def where(self, step: Step) -> str:
        return f"{self.path}:{step.line}"


def _line_of(node: yaml.Node) -> int:
    return node.start_mark.line + 1


def load_recipe(path: Path) -> Recipe:
    """Parse and check a recipe: known stages, valid params, references only to earlier steps."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"{path}: recipe file does not exist")
    text = path.read_text(encoding="utf-8")
    try:
        root = yaml.compose(text)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f":{mark.line + 1}" if mark else ""
        raise ThresherError(f"{path}{line}: not valid YAML ({getattr(exc, 'problem', exc)})") from None
    if not isinstance(data, dict) or not isinstance(data.get("stages"), list) or not data["stages"]:
        raise ThresherError(f"{path}: a recipe is a mapping with a non-empty `stages:` list")
    unknown_top = set(data) - {"name", "description", "stages", "seed"}
    if unknown_top:
        raise ThresherError(f"{path}: unknown recipe key(s): {', '.join(sorted(unknown_top))}")
    stage_nodes = next(v for k, v in root.value if k.value == "stages").value
    recipe = Recipe(path, str(data.get("name") or path.stem), seed=data.get("seed"))
    seen: set[str] = set()
    for index, (item, node) in enumerate(zip(data["stages"], stage_nodes, strict=True)):
        line = _line_of(node)
        where = f"{path}:{line}"
        if not isinstance(item, dict) or "stage" not in item:
            raise ThresherError(f"{where}: each step needs `stage: <name>`")
        extra = set(item) - STEP_KEYS
        if extra:
            raise ThresherError(
                f"{where}: unknown step key(s) {', '.join(sorted(extra))}; allowed: "
                f"{', '.join(sorted(STEP_KEYS))}"
            )
        if item["stage"] not in stages():
            raise ThresherError(f"{where}: unknown stage '{item['stage']}'; installed: {', '.join(stages())}")
        step_id = str(item.get("id") or item["stage"])
        if step_id in seen:
            raise ThresherError(f"{where}: step id '{step_id}' is used twice; give one of them `id:`")
        params = item.get("params") or {}
        if not isinstance(params, dict):
            raise ThresherError(f"{where}: `params:` must be a mapping")
        step = Step(index, step_id, get_stage(item["stage"]), item.get("input"), params, line)
        for ref in [step.input, *_references(params)]:
            if ref in (None, "input", "output"):
                continue
            target = ref.removeprefix("steps.")
            if target not in seen:
                later = target == step_id or any(
                    str(s.get("id") or s.get("stage")) == target
                    for s in data["stages"]
                    if isinstance(s, dict)
                )
                problem = "a later step or itself (a cycle)" if later else "no such step"
                raise ThresherError(f"{where}: step '{step_id}' refers to '{target}': {problem}")
        _check_params(step, where)
        recipe.steps.append(step)
        seen.add(step_id)
    if recipe.steps[0].input is None and recipe.steps[0].stage.input_kind == "shards":
        recipe.steps[0].input = "input"
    return recipe


def _references(value: Any) -> list[str]:
    if isinstance(value, str):
        return _REF.findall(value)
    if isinstance(value, dict):
        return [r for v in value.values() for r in _references(v)]
    if isinstance(value, list):
        return [r for v in value for r in _references(v)]
    return []


def _check_params(step: Step, where: str) -> None:
    fields = step.stage.Params.model_fields
    unknown = sorted(set(step.params) - set(fields))
    if unknown:
        raise ThresherError(
            f"{where}: stage {step.stage.name} has no param(s) {', '.join(unknown)}; "
            f"its params: {', '.join(fields)}"
        )
    try:
        # Placeholders stand in for paths not known yet; types are still checked.
        step.stage.Params.model_validate(_substitute(step.params, lambda ref: f"/{ref}", files_stage=step))
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise ThresherError(f"{where}: stage {step.stage.name}: {problems}") from None


def _substitute(value: Any, resolve: Any, files_stage: Step | None = None) -> Any:
    if isinstance(value, str):
        return _REF.sub(lambda m: resolve(m.group(1)), value)
    if isinstance(value, dict):
        out = {k: _substitute(v, resolve) for k, v in value.items()}
        if files_stage is not None and files_stage.stage.input_kind == "files":
            out.setdefault("inputs", ["/input"])
        return out
    if isinstance(value, list):
        return [_substitute(v, resolve) for v in value]
    return value


@dataclass
class ResolvedStep:
    step: Step
    input_path: Path
    output: Path
    params: StageParams


def resolve(recipe: Recipe, input_path: Path, output: Path) -> list[ResolvedStep]:
    """Concrete input/output folders and params of every step for one run."""
    folders = {s.id: output / s.folder for s in recipe.steps}
    resolved = []
    previous: Path | None = None
    for step in recipe.steps:

        def lookup(ref: str, step: Step = step) -> str:
            if ref == "input":
                return str(input_path)
            if ref == "output":
                return str(folders[step.id])
            return str(folders[ref.removeprefix("steps.")])

        params = _substitute(step.params, lookup)
        if step.input == "input" or (step.input is None and previous is None):
            source = input_path
        elif step.input is None:
            source = previous  # type: ignore[assignment]
        else:
            source = folders[step.input]
        if step.stage.input_kind == "files":
            params.setdefault("inputs", [str(Path(source).resolve())])
        resolved.append(
            ResolvedStep(step, Path(source), folders[step.id], step.stage.Params.model_validate(params))
        )
        previous = folders[step.id]
    return resolved
