"""`thresher status` and `thresher inspect` on a recipe output while the recipe runs and after: every
step in order, the ones not started yet too, and what each finished step kept and dropped."""

from __future__ import annotations

import json
from pathlib import Path

from factories import random_corpus, write_shards
from typer.testing import CliRunner

from thresher.cli.app import app
from thresher.pipelines.engine.chain import run_recipe
from thresher.pipelines.engine.executor import LocalExecutor
from thresher.pipelines.engine.manifest import TaskRecord
from thresher.pipelines.engine.plan import Plan
from thresher.pipelines.engine.recipe import load_recipe

RECIPE = """name: three-steps
stages:
  - stage: exact-dedup
  - stage: heuristics
  - stage: pii
"""


def _rows(output: str, first: str) -> list[list[str]]:
    """A rich table's body rows as lists of cells, the rows whose first cell starts with `first`."""
    rows = []
    for line in output.splitlines():
        cells = [c.strip() for c in line.split("│")[1:-1]]
        if cells and cells[0].startswith(first):
            rows.append(cells)
    return rows


class _LookDuringStep:
    """Runs the stage locally, but first takes `thresher status` and `thresher inspect` of the recipe
    output while the recipe is at this step: the view of someone looking while it runs."""

    def __init__(self, root: Path, seen: dict[str, str]) -> None:
        self.root, self.seen = root, seen

    def run(self, plan: Plan) -> list[TaskRecord]:
        if plan.stage == "heuristics":
            runner = CliRunner()
            for command in ("status", "inspect"):
                result = runner.invoke(app, [command, str(self.root)])
                assert result.exit_code == 0, result.output
                self.seen[command] = result.stdout
        return LocalExecutor(1).run(plan)


def test_status_and_inspect_show_every_recipe_step_while_it_runs(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    write_shards(random_corpus(300, seed=4), corpus, rows_per_shard=100)
    recipe = tmp_path / "three.yaml"
    recipe.write_text(RECIPE)
    out = tmp_path / "out"
    seen: dict[str, str] = {}
    run_recipe(load_recipe(recipe), corpus, out, executor=lambda resources: _LookDuringStep(out, seen))

    status = seen["status"]
    steps = [row[0] for row in _rows(status, "0")]
    assert list(dict.fromkeys(steps)) == ["00-exact-dedup", "01-heuristics", "02-pii"], status
    assert {row[5] for row in _rows(status, "00-")} == {"finished"}
    assert {row[5] for row in _rows(status, "01-")} == {"running"}
    (pii,) = _rows(status, "02-")
    assert pii[1:6] == ["-", "-", "-", "-", "pending"] and "not started" in pii[6], status

    during = seen["inspect"]
    assert "unfinished thresher output" not in during
    exact, heuristics, pii = _rows(during, "0")
    dedup = json.loads((out / "00-exact-dedup" / "_manifest.json").read_text())["totals"]
    assert exact[:3] == ["00-exact-dedup", "exact-dedup", "finished"]
    assert exact[3:5] == [f"{dedup['rows_in']:,}", f"{dedup['rows_out']:,}"] and "duplicate" in exact[5]
    assert heuristics[2].startswith("running") and pii[2] == "pending" and pii[3:] == ["-", "-", "-"]

    after = CliRunner().invoke(app, ["inspect", str(out)])
    assert after.exit_code == 0, after.output
    rows = _rows(after.stdout, "0")
    assert [r[2] for r in rows] == ["finished"] * 3 and all(r[3] != "-" for r in rows)


def test_status_of_a_stopped_recipe_lists_the_steps_it_did_not_reach(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    write_shards(random_corpus(200, seed=5), corpus, rows_per_shard=100)
    recipe = tmp_path / "three.yaml"
    recipe.write_text(RECIPE)
    out = tmp_path / "out"
    run_recipe(load_recipe(recipe), corpus, out, workers=1)
    # As if the run had been killed after its first step: the later folders are not there yet.
    for step in ("01-heuristics", "02-pii"):
        for path in sorted((out / step).rglob("*"), reverse=True):
            path.rmdir() if path.is_dir() else path.unlink()
        (out / step).rmdir()
    result = CliRunner().invoke(app, ["status", str(out)])
    assert result.exit_code == 0, result.output
    states = {row[0]: row[5] for row in _rows(result.stdout, "0")}
    assert states == {"00-exact-dedup": "finished", "01-heuristics": "pending", "02-pii": "pending"}
