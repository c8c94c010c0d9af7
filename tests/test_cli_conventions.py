"""Command-line conventions a shell user expects: --version and -h, value names instead of Python types in
--help, one spelling per flag, the same KEY=VALUE syntax everywhere, one error style, ISO 8601 log times
with an offset, and trainers whose manifests say what they read."""

from __future__ import annotations

import json
import re
from datetime import datetime
from importlib import metadata
from pathlib import Path

import pytest
import typer
from conftest import Cli, read_manifest, write_jsonl
from test_bad_input import assert_user_error, make_shard_set

from thresher.cli.app import app
from thresher.pipelines.testing.sample_data import generate_web

PYTHON_TYPES = re.compile(r"<(bool|int|str|float|path|list\[[a-z]+\])>|\{[a-z_]+\}|list\[")


def all_commands() -> list[list[str]]:
    """Every command path of the app, groups included: ['dedup', 'exact'], ['run'], ..."""
    paths: list[list[str]] = [[]]

    def walk(command: object, prefix: list[str]) -> None:
        for name, sub in getattr(command, "commands", {}).items():
            paths.append([*prefix, name])
            walk(sub, [*prefix, name])

    walk(typer.main.get_command(app), [])
    return paths


def test_version_and_short_help(cli: Cli) -> None:
    for flag in ("--version", "-V"):
        result = cli(flag)
        assert result.exit_code == 0, result.output
        assert result.output == f"thresher {metadata.version('thresher')}\n"
    for args in (["-h"], ["dedup", "-h"], ["dedup", "exact", "-h"], ["run", "-h"]):
        result = cli(*args)
        assert result.exit_code == 0, result.output
        assert "Usage: thresher" in result.output


def test_help_names_values_not_python_types(cli: Cli) -> None:
    commands = all_commands()
    assert len(commands) > 25
    for path in commands:
        result = cli(*path, "--help")
        assert result.exit_code == 0, (path, result.output)
        found = PYTHON_TYPES.findall(result.output)
        assert not found, (path, found, result.output)
    pii = cli("pii", "--help").output
    assert "Usage: thresher pii [OPTIONS] INPUT_DIR OUTPUT_DIR" in pii
    assert "redact|drop|tag" in pii and "local|slurm" in pii
    assert "Usage: thresher ingest [OPTIONS] INPUTS... OUTPUT_DIR" in cli("ingest", "--help").output
    # Narrow terminals wrap long choice lists inside the table's cells: read the name off the option.
    export = typer.main.get_command(app).commands["export"]  # type: ignore[attr-defined]
    fmt = next(p for p in export.params if p.name == "fmt")
    assert fmt.metavar == "jsonl|jsonl.gz|jsonl.zst|parquet|hf|tokens"


def test_force_is_one_flag_everywhere(cli: Cli) -> None:
    with_force = 0
    for path in all_commands():
        text = cli(*path, "--help").output
        assert "--no-force" not in text, path
        with_force += "--force" in text
    # Every stage command, apply, run and export.
    assert with_force >= 20


@pytest.mark.parametrize("value", ["0", "-3"])
def test_workers_below_one_are_refused(cli: Cli, tmp_path: Path, value: str) -> None:
    src = write_jsonl(tmp_path / "in.jsonl", [{"id": "a", "text": "x"}])
    for args in (
        ("ingest", src, tmp_path / "o1"),
        ("apply", "ingest", tmp_path, tmp_path / "o2"),
        ("run", "recipes/web-pretrain.yaml", "-i", src, "-o", tmp_path / "o3"),
    ):
        line = assert_user_error(cli(*args, "--workers", value), 2, "--workers")
        assert "greater than or equal to 1" in line
        assert not (tmp_path / str(args[-1])).exists()


def test_apply_takes_the_stage_commands_syntax(cli: Cli, tmp_path: Path) -> None:
    docs = make_shard_set(cli, tmp_path / "docs")
    out = tmp_path / "h"
    log = tmp_path / "logs" / "apply.log"
    result = cli(
        "apply", "heuristics", docs, out, "-p", "rules=gopher_word_count,c4", "-p", "min-words=1",
        "--log-file", log, "-w", "1", "-q",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    params = read_manifest(out)["params"]
    assert params["rules"] == ["gopher_word_count", "c4"] and params["min_words"] == 1
    assert "heuristics: finished" in log.read_text()
    # JSON still works, and a typo names the stage's params.
    result = cli("apply", "heuristics", docs, tmp_path / "j", "-p", 'rules=["c4"]', "-w", "1", "-q")
    assert result.exit_code == 0, result.output
    assert read_manifest(tmp_path / "j")["params"]["rules"] == ["c4"]
    assert_user_error(
        cli("apply", "heuristics", docs, tmp_path / "x", "-p", "rulez=c4"), 2, "rulez", "min-words"
    )


def test_apply_can_go_to_slurm(cli: Cli, tmp_path: Path) -> None:
    docs = make_shard_set(cli, tmp_path / "docs")
    result = cli("apply", "exact-dedup", docs, tmp_path / "x", "--executor", "slurm", "--dry-run")
    assert result.exit_code == 0, result.output
    assert "#SBATCH --array=" in result.output
    assert "thresher.cli task" in result.output


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--bogus"], "No such option: --bogus"),
        (["nope"], "No such command 'nope'"),
        (["dedup", "exact"], "Missing argument 'INPUT_DIR'"),
        (["dedup", "exact", "a", "b", "--nope"], "No such option: --nope"),
        (["pii", "a", "b", "--mode", "zap"], "'zap' is not one of"),
        (["pii", "a", "b", "--executor", "dask"], "'dask' is not one of 'local', 'slurm', 'ray'"),
    ],
)
def test_errors_before_and_inside_commands_are_one_plain_line(
    cli: Cli, args: list[str], fragment: str
) -> None:
    line = assert_user_error(cli(*args), 2, fragment)
    assert "╭" not in line and "│" not in line


def test_a_bad_list_value_names_its_option(cli: Cli, tmp_path: Path) -> None:
    docs = make_shard_set(cli, tmp_path / "docs")
    line = assert_user_error(
        cli("pii", docs, tmp_path / "p", "--kinds", "email,ssn"), 2, "--kinds value 'ssn'"
    )
    assert "--kinds-1" not in line


def test_log_lines_carry_an_iso_8601_offset(cli: Cli, tmp_path: Path) -> None:
    log = tmp_path / "run.log"
    src = write_jsonl(tmp_path / "in.jsonl", [{"id": "a", "text": "x"}])
    assert cli("ingest", src, tmp_path / "o", "--log-file", log, "-w", "1", "-q").exit_code == 0
    lines = log.read_text().splitlines()
    assert lines
    for line in lines:
        stamp = datetime.fromisoformat(line.split(" ", 1)[0])
        assert stamp.tzinfo is not None and stamp.utcoffset() is not None, line


def test_trainers_report_the_rows_they_read(cli: Cli, tmp_path: Path) -> None:
    sample = generate_web(300, seed=4)
    rows = sample.table.select(["id", "text"]).to_pylist()
    docs = make_shard_set(cli, tmp_path / "docs", rows)
    half = make_shard_set(cli, tmp_path / "half", rows[:120])

    quality = tmp_path / "q"
    result = cli(
        "quality",
        "train",
        docs,
        quality,
        "--negative",
        half,
        "--dim",
        "8",
        "--bucket",
        "1000",
        "-w",
        "1",
        "-q",
    )
    assert result.exit_code == 0, result.output
    totals = read_manifest(quality)["totals"]
    assert totals == {"rows_in": 420, "rows_out": 420, "dropped": {}, "tokens": None}

    kenlm = tmp_path / "k"
    result = cli("lm", "train-kenlm", docs, kenlm, "--order", "3", "--vocab-size", "200", "-w", "1", "-q")
    assert result.exit_code == 0, result.output
    totals = read_manifest(kenlm)["totals"]
    assert totals["rows_in"] == 300 and totals["rows_out"] + sum(totals["dropped"].values()) == 300
    assert totals["rows_out"] > 250
    tokenize = [
        t for t in json.loads((kenlm / "_manifest.json").read_text())["tasks"] if t["phase"] == "tokenize"
    ]
    assert sum(t["counts"]["rows_in"] for t in tokenize) == 300
