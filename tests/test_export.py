"""Export a shard set to JSON lines (plain, gzip, zstd) or a `datasets` folder, and read it back."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import datasets
import pyarrow.parquet as pq
import pytest
import zstandard
from conftest import Cli, read_rows, small_file_system, write_jsonl

from thresher.pipelines.engine.digest import file_digest

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
    # Nothing but the export and its lineage is left next to it (no temp file).
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["raw", "set", target.name, f"{target.name}.lineage.json"]
    )

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
    # The cache and temp folders used on the way are gone, and the library's progress bars stayed off.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf", "hf.lineage.json", "raw", "set"]
    assert "%|" not in result.output and "it/s" not in result.output

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


def test_parquet_export_with_chosen_columns(cli: Cli, tmp_path: Path, shard_set: Path) -> None:
    target = tmp_path / "train.parquet"
    result = cli("export", shard_set, target, "--columns", "text,id")
    assert result.exit_code == 0, result.output
    table = pq.read_table(target)
    assert table.column_names == ["text", "id"]
    assert table.to_pylist() == [{"text": r["text"], "id": r["id"]} for r in ROWS]


def test_unknown_column_is_refused_before_writing(cli: Cli, tmp_path: Path, shard_set: Path) -> None:
    result = cli("export", shard_set, tmp_path / "train.jsonl", "--columns", "id,nope")
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "'nope'" in lines[0] and "columns are: id, text, n, tag" in lines[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["raw", "set"]


def test_force_replaces_and_quiet_prints_nothing(cli: Cli, tmp_path: Path, shard_set: Path) -> None:
    target = tmp_path / "train.jsonl"
    target.write_text("old\n")
    result = cli("export", shard_set, target, "--force", "-q")
    assert result.exit_code == 0, result.output
    assert result.output == ""
    assert [json.loads(line) for line in target.read_text().splitlines()] == ROWS


def test_lineage_sidecar_names_the_source_and_every_stage(cli: Cli, tmp_path: Path, shard_set: Path) -> None:
    exact = tmp_path / "exact"
    assert cli("dedup", "exact", shard_set, exact, "--workers", "1", "-q").exit_code == 0
    target = tmp_path / "train.jsonl.zst"
    assert cli("export", exact, target, "-q").exit_code == 0
    sidecar = json.loads((tmp_path / "train.jsonl.zst.lineage.json").read_text())
    assert sidecar["rows"] == 5 and sidecar["format"] == "jsonl.zst"
    assert sidecar["digest"] == file_digest(target)
    assert sidecar["source"] == {
        "path": str(exact.resolve()),
        "manifest_digest": file_digest(exact / "_manifest.json"),
        "stage": "exact-dedup",
    }
    assert [step["stage"] for step in sidecar["lineage"]] == ["exact-dedup", "ingest"]
    assert sidecar["lineage"][0]["counts"]["rows_in"] == 5


@pytest.fixture
def tiny_filesystem(tmp_path: Path) -> Iterator[Path]:
    """A real 256 KiB tmpfs: writes past it fail with ENOSPC, as on a full disk."""
    with small_file_system(tmp_path / "small", "size=256k") as mount:
        yield mount


def big_shard_set(cli: Cli, tmp_path: Path) -> Path:
    rows = [{"id": f"d{i}", "text": os.urandom(200).hex()} for i in range(2000)]
    out = tmp_path / "big"
    assert (
        cli("ingest", write_jsonl(tmp_path / "big.jsonl", rows), out, "--workers", "1", "-q").exit_code == 0
    )
    return out


@pytest.mark.parametrize("name", ["train.jsonl", "train.parquet", "hf"])
def test_full_disk_is_one_line_and_leaves_nothing(
    cli: Cli, tmp_path: Path, tiny_filesystem: Path, name: str
) -> None:
    source = big_shard_set(cli, tmp_path)
    args = ("--format", "hf") if name == "hf" else ()
    result = cli("export", source, tiny_filesystem / name, *args)
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    lines = result.output.strip().splitlines()
    assert lines == [f"thresher: error: {tiny_filesystem / name}: No space left on device"]
    assert list(tiny_filesystem.iterdir()) == []


def test_read_only_output_is_one_line(
    cli: Cli, tmp_path: Path, tiny_filesystem: Path, shard_set: Path
) -> None:
    subprocess.run(["mount", "-o", "remount,ro", str(tiny_filesystem)], check=True)
    result = cli("export", shard_set, tiny_filesystem / "train.jsonl")
    assert result.exit_code == 1, result.output
    lines = result.output.strip().splitlines()
    assert lines == [f"thresher: error: {tiny_filesystem / 'train.jsonl'}: Read-only file system"]
