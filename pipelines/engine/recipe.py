"""Recipes: a YAML chain of stages, validated whole before anything runs.

    name: web-pretrain
    stages:
      - stage: ingest
        params: {rows_per_shard: 1000}
      - stage: exact-dedup
      - stage: minhash-dedup
        params: {threshold: 0.8}

Each step writes `OUTPUT/NN-<id>/` (id defaults to the stage name; a plain name of letters, digits, `_`,
`.` and `-`). A step reads the previous step's output unless it says `input: <step id>` (or `input: input`
for the run's --input). String params may name other outputs as `{input}`, `{output}` or
`{steps.<id>}`, e.g. `model: "{steps.quality-train}/model.bin"`.

Relative paths in params (blocklists, models, target sets) are relative to the recipe's folder, so a
recipe means the same files from any working directory. Every step's side inputs are checked before the
first stage runs.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from thresher.pipelines.engine import storage
from thresher.pipelines.engine.errors import ThresherError, UsageError
from thresher.pipelines.engine.manifest import MANIFEST_NAME
from thresher.pipelines.engine.registry import get_stage, stages
from thresher.pipelines.engine.stage import Stage, StageContext, StageParams

_REF = re.compile(r"\{(input|output|steps\.[A-Za-z0-9_.-]+)\}")
STEP_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
# What a step may ask of each executor, overriding the command line's options for that step only, e.g.
#   slurm: {gres: "gpu:1", mem: 16G}     ray: {num_gpus: 1}
RESOURCE_KEYS = {
    "slurm": {"partition", "time", "cpus", "mem", "gres", "max_concurrent", "args", "tasks_per_job"},
    "ray": {"num_cpus", "num_gpus", "memory"},
}
STEP_KEYS = {"stage", "id", "input", "params", *RESOURCE_KEYS}
# Nodes that aliases may add to a recipe once expanded, and how deep it may nest. A recipe needs a few
# dozen of either; nine nested aliases of nine ("billion laughs") expand to 387 million nodes.
ALIAS_BUDGET = 10_000
MAX_DEPTH = 100


@dataclass
class Step:
    index: int
    id: str
    stage: type[Stage]
    input: str | None  # a step id, "input", or None for the previous step
    params: dict[str, Any]
    line: int
    # Path-like values found neither beside the recipe nor in the working directory (a typo, a hub
    # model name): named in the hint when a side input is missing.
    unresolved: list[str] = field(default_factory=list)
    resources: dict[str, dict[str, Any]] = field(default_factory=dict)

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


class _RecipeLoader(yaml.SafeLoader):
    """SafeLoader that sizes every node as it is composed, counting aliases expanded: a small file of
    nested aliases would otherwise become millions of objects before any check could look at it."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._sizes: dict[int, int] = {}
        self._aliased = 0
        self._depth = 0

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node:
        alias = self.check_event(yaml.AliasEvent)
        mark = self.peek_event().start_mark
        self._depth += 1
        if self._depth > MAX_DEPTH:
            raise yaml.composer.ComposerError(None, None, f"nested more than {MAX_DEPTH} levels deep", mark)
        try:
            node = super().compose_node(parent, index)
        finally:
            self._depth -= 1
        if alias:
            size = self._sizes.get(id(node))
            if size is None:  # the anchored node is still being composed: it contains its own alias
                raise yaml.composer.ComposerError(None, None, "recursive alias (a node inside itself)", mark)
            self._aliased += size
            if self._aliased > ALIAS_BUDGET:
                raise yaml.composer.ComposerError(
                    None, None, f"aliases expand to more than {ALIAS_BUDGET} nodes (an alias bomb?)", mark
                )
            return node
        if isinstance(node, yaml.SequenceNode):
            children = node.value
        elif isinstance(node, yaml.MappingNode):
            children = [n for pair in node.value for n in pair]
        else:
            children = []
        self._sizes[id(node)] = 1 + sum(self._sizes[id(c)] for c in children)
        return node


def _parse(text: str) -> tuple[yaml.Node | None, Any]:
    loader = _RecipeLoader(text)
    try:
        root = loader.get_single_node()
        return root, loader.construct_document(root) if root is not None else None
    finally:
        loader.dispose()


def load_recipe(path: Path) -> Recipe:
    """Parse and check a recipe: known stages, valid params, references only to earlier steps."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"{path}: recipe file does not exist")
    text = path.read_text(encoding="utf-8")
    try:
        root, data = _parse(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f":{mark.line + 1}" if mark else ""
        raise ThresherError(f"{path}{line}: not valid YAML ({getattr(exc, 'problem', exc)})") from None
    if not isinstance(data, dict) or not isinstance(data.get("stages"), list) or not data["stages"]:
        raise ThresherError(f"{path}: a recipe is a mapping with a non-empty `stages:` list")
    unknown_top = set(data) - {"name", "description", "stages", "seed", "ablate"}
    if unknown_top:
        raise ThresherError(f"{path}: unknown recipe key(s): {', '.join(sorted(unknown_top))}")
    assert root is not None
    stage_nodes = next(v for k, v in root.value if k.value == "stages").value
    folder = path.parent.resolve()
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
        if not STEP_ID.fullmatch(step_id):
            raise ThresherError(
                f"{where}: step id {step_id!r} is not a plain name (letters, digits, '_', '.', '-'); it "
                "names the step's folder inside --output"
            )
        if step_id == "input":
            raise ThresherError(f"{where}: step id 'input' is reserved (`input: input` is the run's --input)")
        if step_id in seen:
            raise ThresherError(f"{where}: step id '{step_id}' is used twice; give one of them `id:`")
        params = item.get("params") or {}
        if not isinstance(params, dict):
            raise ThresherError(f"{where}: `params:` must be a mapping")
        params, unresolved = _recipe_relative(params, folder, where)
        step = Step(index, step_id, get_stage(item["stage"]), item.get("input"), params, line, unresolved)
        step.resources = _resources(item, where)
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
    if "ablate" in data:
        node = next(v for k, v in root.value if k.value == "ablate")
        recipe.steps.append(_ablation_step(recipe, data["ablate"], folder, _line_of(node)))
    return recipe


def _ablation_step(recipe: Recipe, spec: Any, folder: Path, line: int) -> Step:
    """`ablate: {baseline: input, eval: {clean: held-out/}, tokens: ...}` at the end of a recipe: one more
    step that trains proxy LMs on the baseline and on the recipe's output and compares them (the ablate
    stage), so the run answers whether the recipe helped. `baseline: input` is the run's input as a shard
    set (the first step's output when that step ingests raw files); a step id names that step's output."""
    where = f"{recipe.path}:{line}"
    if not isinstance(spec, dict) or not isinstance(spec.get("eval"), dict) or not spec["eval"]:
        raise ThresherError(f"{where}: `ablate:` needs `eval: {{NAME: shard set folder, ...}}`")
    spec = dict(spec)
    baseline = str(spec.pop("baseline", "input"))
    step_id = str(spec.pop("id", "ablate"))
    resources = {k: spec.pop(k) for k in RESOURCE_KEYS if k in spec}
    ids = [s.id for s in recipe.steps]
    if step_id in ids or not STEP_ID.fullmatch(step_id):
        raise ThresherError(f"{where}: `ablate:` step id {step_id!r} is taken or not a plain name; set `id:`")
    if baseline == "input":
        first = recipe.steps[0]
        source = f"{{steps.{first.id}}}" if first.stage.input_kind == "files" else "{input}"
    elif baseline in ids:
        source = f"{{steps.{baseline}}}"
    else:
        raise ThresherError(
            f"{where}: `ablate: baseline: {baseline}`: not `input` nor a step id ({', '.join(ids)})"
        )
    last = recipe.steps[-1].id
    if baseline == last:
        raise ThresherError(f"{where}: `ablate: baseline: {baseline}` is the recipe's output itself")
    params = {**spec, "train": {baseline: source, recipe.name: f"{{steps.{last}}}"}}
    params, unresolved = _recipe_relative(params, folder, where)
    step = Step(len(recipe.steps), step_id, get_stage("ablate"), None, params, line, unresolved)
    step.resources = _resources(resources, where)
    _check_params(step, where)
    return step


def _resources(item: dict[str, Any], where: str) -> dict[str, dict[str, Any]]:
    found = {}
    for executor, allowed in RESOURCE_KEYS.items():
        value = item.get(executor)
        if value is None:
            continue
        if not isinstance(value, dict):
            raise ThresherError(f"{where}: `{executor}:` must be a mapping, e.g. {{{min(allowed)}: ...}}")
        unknown = sorted(set(value) - allowed)
        if unknown:
            raise ThresherError(
                f"{where}: unknown `{executor}:` key(s) {', '.join(unknown)}; "
                f"allowed: {', '.join(sorted(allowed))}"
            )
        found[executor] = dict(value)
    return found


def _exists(path: Path) -> bool:
    # Any string may reach here (a filter expression, a label): one too long or holding NUL is no file.
    try:
        return path.exists()
    except (OSError, ValueError):
        return False


def _recipe_relative(params: dict[str, Any], folder: Path, where: str) -> tuple[dict[str, Any], list[str]]:
    """Params with relative paths made absolute against the recipe's folder.

    Params are not typed as paths, so a relative string counts as one when it names something in the
    recipe's folder; column names are never paths. A path-like value found only in the working directory
    is an error rather than a fallback: the recipe would mean other files when run from elsewhere."""
    unresolved: list[str] = []

    def one(name: str, value: Any) -> Any:
        if not isinstance(value, str) or not value or _REF.search(value) or Path(value).is_absolute():
            return value
        candidate = folder / value
        if _exists(candidate):
            return str(candidate.resolve())
        # Path-like: has a folder part or a file extension (`5:0.3` and `80%` have neither).
        if "/" in value or any(c.isalpha() for c in Path(value).suffix):
            if _exists(Path(value)):
                raise UsageError(
                    f"{where}: {name}: {value} is not in the recipe's folder {folder}; relative paths in a "
                    "recipe are resolved against the recipe's folder, not the working directory (write "
                    "it relative to the recipe, or absolute)"
                )
            unresolved.append(value)
        return value

    out: dict[str, Any] = {}
    for name, value in params.items():
        if str(name).endswith(("_column", "_columns")):
            out[name] = value
        elif isinstance(value, list):
            out[name] = [one(name, v) for v in value]
        elif isinstance(value, dict):  # named sets, e.g. an ablation's {clean: held-out/}
            out[name] = {k: one(f"{name}.{k}", v) for k, v in value.items()}
        else:
            out[name] = one(name, value)
    return out, unresolved


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
            params.setdefault("inputs", [str(storage.resolved(source))])
        resolved.append(
            ResolvedStep(
                step, storage.location(source), folders[step.id], step.stage.Params.model_validate(params)
            )
        )
        previous = folders[step.id]
    return resolved


def check_side_inputs(recipe: Recipe, steps: list[ResolvedStep], seed: int) -> None:
    """Every step's side inputs (blocklists, models, target sets) exist and open, before the first stage
    runs: a missing file must not wait for the hours of work of the steps before it."""
    pending = [str(s.output) for s in steps if not (s.output / MANIFEST_NAME).exists()]
    for resolved_step in steps:
        step = resolved_step.step
        stage = step.stage(
            resolved_step.params, StageContext(resolved_step.input_path, resolved_step.output, seed)
        )
        try:
            stage.side_inputs()
        except ThresherError as exc:
            message = str(exc)
            if any(folder in message for folder in pending):
                continue  # an earlier step of this run makes it; the stage checks it again when it runs
            hint = ""
            if any(value in message for value in step.unresolved):
                folder = recipe.path.parent.resolve()
                hint = f" (relative paths in a recipe are resolved against its folder, {folder})"
            error = ThresherError(f"{recipe.where(step)}: step '{step.id}': {message}{hint}")
            error.exit_code = exc.exit_code
            raise error from None
        except Exception:
            # A plugin's side inputs may need its opened input shard set, which a step that has not run
            # yet cannot give; the stage checks them when it plans.
            continue
