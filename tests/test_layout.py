"""The tree shows the architecture: every concept has one home, and no two homes import each other in a
circle (the engine knows no stage, no model and no command line; models know no stage)."""

from __future__ import annotations

import ast
import graphlib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ROOTS = {"cli": "thresher.cli", "pipelines": "thresher.pipelines", "scorers": "thresher.scorers"}


def module_name(path: Path) -> str:
    rel = path.relative_to(REPO).with_suffix("")
    parts = [ROOTS[rel.parts[0]], *rel.parts[1:]]
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def home(module: str) -> str:
    """The package a module lives in, at the grain the layout promises: a stage family, an engine
    package, the models, the CLI."""
    parts = module.split(".")
    if parts[:3] == ["thresher", "pipelines", "stages"] and len(parts) > 3:
        return ".".join(parts[:4])
    if parts[:2] == ["thresher", "pipelines"] and len(parts) > 2:
        return ".".join(parts[:3])
    return ".".join(parts[:2])


def imports() -> dict[str, set[str]]:
    """home -> the other homes its modules import (at any level: inside functions too)."""
    graph: dict[str, set[str]] = {}
    for root in ROOTS:
        for path in (REPO / root).rglob("*.py"):
            source = home(module_name(path))
            targets = graph.setdefault(source, set())
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                names: list[str] = []
                if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                    names = [node.module]
                elif isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                for name in names:
                    if name.startswith("thresher.") and home(name) != source:
                        targets.add(home(name))
    return graph


def test_homes_import_each_other_without_a_cycle() -> None:
    graph = imports()
    assert "thresher.pipelines.engine" in graph and "thresher.pipelines.stages.dedup" in graph
    graphlib.TopologicalSorter(graph).prepare()  # raises CycleError naming the circle


def test_the_engine_knows_no_stage_model_or_command_line() -> None:
    graph = imports()
    engine = graph["thresher.pipelines.engine"]
    assert not {
        h for h in engine if h.startswith(("thresher.pipelines.stages", "thresher.scorers", "thresher.cli"))
    }
    scorers = graph["thresher.scorers"]
    assert not {h for h in scorers if h.startswith(("thresher.pipelines.stages", "thresher.cli"))}


def test_no_module_is_left_loose_in_pipelines() -> None:
    loose = sorted(p.name for p in (REPO / "pipelines").glob("*.py") if p.name != "__init__.py")
    assert loose == []
    loose_stages = sorted(
        p.name for p in (REPO / "pipelines" / "stages").glob("*.py") if p.name != "__init__.py"
    )
    assert loose_stages == []
