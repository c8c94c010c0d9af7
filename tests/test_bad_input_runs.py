"""Runs that must fail instead of succeeding on the wrong data: shard sets changed behind their manifest,
recipes that would write outside --output or into their input, alias bombs, side inputs looked for in
the wrong folder, and stage commands writing into a running recipe's step folders."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from conftest import Cli, read_manifest, write_jsonl
from factories import run_cli
from test_bad_input import GOOD, assert_no_output, assert_user_error, ingest
from typer.testing import Result

from thresher.pipelines.engine.lock import output_lock

ROWS = [{"id": f"d{i}", "text": f"document number {i} about grain"} for i in range(30)]


def three_shards(cli: Cli, out: Path) -> list[Path]:
    src = write_jsonl(out.parent / f"{out.name}.jsonl", ROWS)
    result = ingest(cli, src, out, "--rows-per-shard", "10")
    assert result.exit_code == 0, result.output
    shards = sorted(out.glob("*.parquet"))
    assert len(shards) == 3
    return shards


def run(cli: Cli, recipe: Path, input_path: Path, output: Path) -> Result:
    return cli("run", recipe, "-i", input_path, "-o", output, "-w", "1", "-q")


def recipe_file(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


# 2.1 ----------------------------------------------------------------------------------------------------


def _delete(shards: list[Path]) -> tuple[str, str]:
    shards[1].unlink()
    return shards[1].name, "missing"


def _shrink(shards: list[Path]) -> tuple[str, str]:
    pq.write_table(pq.read_table(shards[1]).slice(0, 5), shards[1])
    return shards[1].name, "5 rows"


def _add(shards: list[Path]) -> tuple[str, str]:
    extra = shards[0].with_name("part-99999.parquet")
    pq.write_table(pq.read_table(shards[0]), extra)
    return extra.name, "not listed"


@pytest.mark.parametrize("change", [_delete, _shrink, _add], ids=["deleted", "fewer-rows", "unlisted"])
@pytest.mark.parametrize("command", ["dedup", "inspect", "export"])
def test_shard_set_changed_behind_its_manifest(
    cli: Cli, tmp_path: Path, change: Callable[[list[Path]], tuple[str, str]], command: str
) -> None:
    shard_set = tmp_path / "set"
    name, problem = change(three_shards(cli, shard_set))
    out = tmp_path / "out"
    if command == "dedup":
        result = cli("dedup", "exact", shard_set, out, "--workers", "1", "-q")
    elif command == "inspect":
        result = cli("inspect", shard_set)
    else:
        out = tmp_path / "out.jsonl"
        result = cli("export", shard_set, out)
    assert_user_error(result, 1, name, problem, "_manifest.json")
    assert not out.exists()


# 2.3 ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("step_id", ["../../../x", "a/b", "..", "/tmp/x", "input"])
def test_step_ids_are_plain_names(cli: Cli, tmp_path: Path, step_id: str) -> None:
    recipe = recipe_file(tmp_path / "r.yaml", f"stages:\n  - stage: ingest\n    id: '{step_id}'\n")
    src = write_jsonl(tmp_path / "docs.jsonl", GOOD)
    out = tmp_path / "deep" / "er" / "out"
    before = sorted(tmp_path.rglob("*"))
    assert_user_error(run(cli, recipe, src, out), 1, "r.yaml:2", repr(step_id))
    assert sorted(tmp_path.rglob("*")) == before


# 2.6 ----------------------------------------------------------------------------------------------------


def test_stage_command_into_a_running_recipes_step_folder_exits_75(cli: Cli, tmp_path: Path) -> None:
    shard_set = three_shards(cli, tmp_path / "set")[0].parent
    out = tmp_path / "web"
    step = out / "01-exact-dedup"
    with output_lock(out):  # what `thresher run -o web` holds while it runs
        proc = run_cli("dedup", "exact", str(shard_set), str(step), "-q", check=False)
    assert proc.returncode == 75, proc.stderr
    assert f"{out}: a thresher recipe run" in proc.stderr and str(step) in proc.stderr
    assert "Traceback" not in proc.stderr and not step.exists()


def test_recipe_waits_for_a_stage_command_on_one_of_its_step_folders(cli: Cli, tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "docs.jsonl", GOOD)
    recipe = recipe_file(tmp_path / "r.yaml", "stages:\n  - stage: ingest\n  - stage: exact-dedup\n")
    out = tmp_path / "web"
    assert run(cli, recipe, src, out).exit_code == 0
    with output_lock(out / "01-exact-dedup"):  # a stage command writing the step folder
        proc = run_cli("run", str(recipe), "-i", str(src), "-o", str(out), "-q", check=False)
    assert proc.returncode == 75, proc.stderr
    # Refused at the root, before any step runs, naming the step folder being written.
    assert f"{out}: a thresher stage command is writing into its step folder (01-exact-dedup)" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_recipe_steps_and_stage_commands_beside_each_other_still_run(cli: Cli, tmp_path: Path) -> None:
    # The step folders' shared lock on the root must not stop two stage commands from running at once.
    shard_set = three_shards(cli, tmp_path / "set")[0].parent
    out = tmp_path / "web"
    with output_lock(out), output_lock(out / "01-a"):
        pass
    with output_lock(out / "01-a"):
        proc = run_cli("dedup", "exact", str(shard_set), str(out / "02-b"), "-q", check=False)
    assert proc.returncode == 0, proc.stderr


# 2.7 ----------------------------------------------------------------------------------------------------


def test_confirmed_current_output_has_its_manifest_touched(cli: Cli, tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "docs.jsonl", GOOD)
    out = tmp_path / "out"
    assert ingest(cli, src, out).exit_code == 0
    manifest = out / "_manifest.json"
    before = manifest.read_bytes()
    past = time.time() - 3600
    os.utime(manifest, (past, past))
    os.utime(src)  # touched, same content: what makes `make` rerun ingest
    result = cli("ingest", src, out, "--workers", "1")
    assert result.exit_code == 0, result.output
    assert "up to date" in result.output
    assert manifest.read_bytes() == before
    assert manifest.stat().st_mtime >= src.stat().st_mtime


# 2.8 ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("layout", ["same", "output-inside-input", "input-inside-output"])
def test_run_input_and_output_must_not_overlap(cli: Cli, tmp_path: Path, layout: str) -> None:
    recipe = recipe_file(tmp_path / "r.yaml", "stages:\n  - stage: exact-dedup\n")
    shard_set = three_shards(cli, tmp_path / "data" / "set")[0].parent
    if layout == "same":
        input_path, output = shard_set, shard_set
    elif layout == "output-inside-input":
        input_path, output = shard_set, shard_set / "web"
    else:
        input_path, output = shard_set, shard_set.parent
    before = sorted(tmp_path.rglob("*"))
    assert_user_error(run(cli, recipe, input_path, output), 2, "overlap", str(output))
    assert sorted(tmp_path.rglob("*")) == before


# 16 -----------------------------------------------------------------------------------------------------


def test_yaml_alias_bomb_in_params_is_rejected_while_composing(cli: Cli, tmp_path: Path) -> None:
    levels = ["a0: &a0 [x, x, x, x, x, x, x, x, x]"]
    levels += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 10)]
    text = "stages:\n  - stage: exact-dedup\n    params:\n      also_columns:\n"
    text += "".join(f"        - {{{level}}}\n" for level in levels)
    recipe = recipe_file(tmp_path / "bomb.yaml", text)
    out = tmp_path / "out"
    start = time.perf_counter()
    assert_user_error(run(cli, recipe, tmp_path, out), 1, "bomb.yaml:", "alias")
    assert time.perf_counter() - start < 5
    assert not out.exists()


def test_recursive_yaml_alias_is_rejected(cli: Cli, tmp_path: Path) -> None:
    text = "stages:\n  - stage: exact-dedup\n    params: &p\n      also_columns: [*p]\n"
    recipe = recipe_file(tmp_path / "loop.yaml", text)
    assert_user_error(run(cli, recipe, tmp_path, tmp_path / "out"), 1, "loop.yaml:", "alias")


def test_deeply_nested_recipe_is_rejected(cli: Cli, tmp_path: Path) -> None:
    text = "stages:\n  - stage: exact-dedup\n    params: {also_columns: " + "[" * 5000 + "]" * 5000 + "}\n"
    recipe = recipe_file(tmp_path / "deep.yaml", text)
    assert_user_error(run(cli, recipe, tmp_path, tmp_path / "out"), 1, "deep.yaml:", "nested")


# 17 -----------------------------------------------------------------------------------------------------

HEURISTICS = """\
stages:
  - stage: ingest
  - stage: exact-dedup
  - stage: heuristics
    params:
      rules: [word_blocklist]
      word_blocklist: [{path}]
"""


def test_recipe_paths_resolve_against_the_recipes_folder(
    cli: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    recipe = recipe_file(tmp_path / "recipes" / "r.yaml", HEURISTICS.format(path="lists/words.txt"))
    (tmp_path / "recipes" / "lists").mkdir()
    (tmp_path / "recipes" / "lists" / "words.txt").write_text("number 2\n")
    src = write_jsonl(tmp_path / "docs.jsonl", GOOD)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    result = run(cli, recipe, src, tmp_path / "out")
    assert result.exit_code == 0, result.output
    assert read_manifest(tmp_path / "out" / "02-heuristics")["totals"]["rows_out"] == len(GOOD)


def test_missing_side_input_fails_before_the_first_stage(cli: Cli, tmp_path: Path) -> None:
    recipe = recipe_file(tmp_path / "recipes" / "r.yaml", HEURISTICS.format(path="lists/nope.txt"))
    src = write_jsonl(tmp_path / "docs.jsonl", GOOD)
    out = tmp_path / "out"
    assert_user_error(run(cli, recipe, src, out), 2, "r.yaml:4", "nope.txt", "does not exist")
    assert_no_output(out)
    assert not out.exists()


def test_side_input_beside_the_working_directory_only_is_refused(
    cli: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The same recipe must mean the same files from any folder: a path that only the working directory
    # holds is an error, not a silent fallback.
    recipe = recipe_file(tmp_path / "recipes" / "r.yaml", HEURISTICS.format(path="lists/words.txt"))
    (tmp_path / "lists").mkdir()
    (tmp_path / "lists" / "words.txt").write_text("spam\n")
    src = write_jsonl(tmp_path / "docs.jsonl", GOOD)
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "out"
    assert_user_error(run(cli, recipe, src, out), 2, "r.yaml:4", "lists/words.txt", "recipe's folder")
    assert not out.exists()


def test_missing_target_set_of_a_later_step_fails_before_the_first_stage(cli: Cli, tmp_path: Path) -> None:
    text = (
        "stages:\n  - stage: exact-dedup\n  - stage: proxy-train\n    params: {preset: tiny}\n"
        "  - stage: select-less\n    input: exact-dedup\n"
        "    params: {target: targets/nope, model: '{steps.proxy-train}/model', fraction: 0.5}\n"
    )
    recipe = recipe_file(tmp_path / "recipes" / "r.yaml", text)
    shard_set = three_shards(cli, tmp_path / "set")[0].parent
    out = tmp_path / "out"
    assert_user_error(run(cli, recipe, shard_set, out), 2, "r.yaml:5", "nope", "does not exist")
    assert not out.exists()
