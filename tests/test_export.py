"""Export a shard set to JSON lines (plain, gzip, zstd) or a `datasets` folder, and read it back."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import datasets
import pytest
import zstandard
from conftest import Cli, read_rows, write_jsonl

ROWS = [
    {"id": "a", "text": "plain text", "n": 1, "tag": "x"},
    {"id": "b", "text": 'quotes " and \\ backslash', "n": 2, "tag": None},
    {"id": "c", "text": "multi\nline\ttext", "n": 3, "tag": "y"},
    {"id": "d", "text": "ünïcödé, 日本語, emoji 🙂", "n": 4, "tag": "z"},
    {"id": "e", "text": "last", "n": 5, "tag": None},
]


@pytest.fixture
def shard_set(cli: Cli, tmp_path: Path) -> Path:
    src = write_jsonl(tmp_path / "raw" / "docs.jsonl", ROWS)
    out = tmp_path / "set"
    result = cli("ingest", src, out, "--rows-per-shard", "2", "--workers", "1", "-q")
    assert result.exit_code == 0, result.output
    assert len(list(out.glob("part-*.parquet"))) == 3
    assert read_rows(out) == ROWS
    return out


def decompress(path: Path) -> bytes:
    data = path.read_bytes()
    if path.name.endswith(".gz"):
        return gzip.decompress(data)
    if path.name.endswith(".zst"):
        return zstandard.ZstdDecompressor().stream_reader(data).read()
    return data


@pytest.mark.parametrize("suffix", ["jsonl", "jsonl.gz", "jsonl.zst"])
def test_jsonl_round_trip(cli: Cli, tmp_path: Path, shard_set: Path, suffix: str) -> None:
    target = tmp_path / f"train.{suffix}"
    result = cli("export", shard_set, target)
    assert result.exit_code == 0, result.output
    assert "exported 5 rows" in result.output
    lines = decompress(target).decode("utf-8").splitlines()
    assert [json.loads(line) for line in lines] == ROWS
    # Nothing but the export is left next to it (no temp file).
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["raw", "set", target.name])

    again = tmp_path / "again"
    result = cli("ingest", target, again, "--workers", "1", "-q")
    assert result.exit_code == 0, result.output
    assert read_rows(again) == ROWS


def test_format_option_overrides_the_name(cli: Cli, tmp_path: Path, shard_set: Path) -> None:
    target = tmp_path / "dump.bin"
    result = cli("export", shard_set, target, "--format", "jsonl.gz")
    assert result.exit_code == 0, result.output
    assert [json.loads(line) for line in gzip.decompress(target.read_bytes()).splitlines()] == ROWS


def test_gzip_export_does_not_depend_on_the_file_name(cli: Cli, tmp_path: Path, shard_set: Path) -> None:
    # The gzip header must not carry a name (it would be the temp file's, which holds the process id).
    for name in ("one.jsonl.gz", "two.jsonl.gz"):
        assert cli("export", shard_set, tmp_path / name).exit_code == 0
    assert (tmp_path / "one.jsonl.gz").read_bytes() == (tmp_path / "two.jsonl.gz").read_bytes()


def test_hf_round_trip(cli: Cli, tmp_path: Path, shard_set: Path) -> None:
    target = tmp_path / "hf"
    result = cli("export", shard_set, target, "--format", "hf")
    assert result.exit_code == 0, result.output
    assert "exported 5 rows" in result.output
    ds = datasets.load_from_disk(str(target))
    assert isinstance(ds, datasets.Dataset)
    assert ds.to_list() == ROWS
    assert ds.column_names == ["id", "text", "n", "tag"]
    # The cache and temp folders used on the way are gone.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf", "raw", "set"]

    again = tmp_path / "again"
    result = cli("ingest", target, again, "--workers", "1", "-q")
    assert result.exit_code == 0, result.output
    assert read_rows(again) == ROWS


@pytest.mark.parametrize(("name", "args"), [("train.jsonl", ()), ("hf", ("--format", "hf"))])
def test_existing_output_is_refused(
    cli: Cli, tmp_path: Path, shard_set: Path, name: str, args: tuple[str, ...]
) -> None:
    target = tmp_path / name
    if args:
        target.mkdir()
        (target / "keep.txt").write_text("mine")
    else:
        target.write_text("mine")
    result = cli("export", shard_set, target, *args)
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit)
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("thresher: error: "), result.output
    assert name in lines[0] and "already exists" in lines[0]
    assert (target / "keep.txt" if args else target).read_text() == "mine"


def test_unknown_format_from_name_is_refused(cli: Cli, tmp_path: Path, shard_set: Path) -> None:
    result = cli("export", shard_set, tmp_path / "train.txt")
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "train.txt" in lines[0] and "--format" in lines[0], result.output
    assert not (tmp_path / "train.txt").exists()


def test_shards_with_different_columns(cli: Cli, tmp_path: Path) -> None:
    # Two sources with different extra columns give shards with different schemas.
    a = write_jsonl(tmp_path / "raw" / "a.jsonl", [{"id": "a", "text": "x", "url": "u"}])
    b = write_jsonl(tmp_path / "raw" / "b.jsonl", [{"id": "b", "text": "y", "n": 3}])
    assert cli("ingest", a, b, tmp_path / "set", "--workers", "1", "-q").exit_code == 0

    result = cli("export", tmp_path / "set", tmp_path / "hf", "--format", "hf")
    assert result.exit_code == 1, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "part-00001-00000.parquet" in lines[0] and "JSON lines" in lines[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["raw", "set"]

    result = cli("export", tmp_path / "set", tmp_path / "all.jsonl")
    assert result.exit_code == 0, result.output
    assert [json.loads(line) for line in (tmp_path / "all.jsonl").read_text().splitlines()] == [
        {"id": "a", "text": "x", "url": "u"},
        {"id": "b", "text": "y", "n": 3},
    ]
