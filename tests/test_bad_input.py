"""Bad input: exit code 1 (bad data) or 2 (bad command line), one line naming the file (and row or line),
no traceback, and no partial output."""

from __future__ import annotations

import gzip
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard
from conftest import Cli, write_jsonl
from typer.testing import Result

GOOD = [{"id": f"d{i}", "text": f"document {i}"} for i in range(4)]


def assert_user_error(result: Result, code: int, *fragments: str) -> str:
    """The command failed with `code` and a single `thresher: error:` line holding every fragment."""
    assert result.exit_code == code, result.output
    # An uncaught exception would also exit 1: the CLI must have turned it into a message.
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    assert lines[0].startswith("thresher: error: "), lines[0]
    for fragment in fragments:
        assert fragment in lines[0], f"{fragment!r} not in {lines[0]!r}"
    return lines[0]


def assert_no_output(out: Path) -> None:
    if out.exists():
        assert not list(out.rglob("*.parquet"))
        assert not (out / "_manifest.json").exists()


def ingest(cli: Cli, *args: str | Path) -> Result:
    return cli("ingest", *args, "--workers", "1", "-q")


def dedup(cli: Cli, *args: str | Path) -> Result:
    return cli("dedup", "exact", *args, "--workers", "1", "-q")


def make_shard_set(cli: Cli, out: Path, rows: list[dict[str, str]] = GOOD) -> Path:
    src = write_jsonl(out.parent / f"{out.name}.jsonl", rows)
    result = ingest(cli, src, out)
    assert result.exit_code == 0, result.output
    return out


def truncated_parquet(path: Path) -> Path:
    """A real Parquet file cut in half: its footer is gone."""
    path.parent.mkdir(parents=True, exist_ok=True)
    table = pa.table({"id": [f"d{i}" for i in range(2000)], "text": [f"text {i} " * 20 for i in range(2000)]})
    pq.write_table(table, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def test_missing_input_path(cli: Cli, tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert_user_error(ingest(cli, tmp_path / "nope.jsonl", out), 2, "nope.jsonl", "does not exist")
    assert_no_output(out)
    assert_user_error(dedup(cli, tmp_path / "no-such-set", out), 2, "no-such-set", "does not exist")
    assert_no_output(out)


def test_empty_input_directory(cli: Cli, tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    out = tmp_path / "out"
    assert_user_error(ingest(cli, tmp_path / "empty", out), 1, "empty", "no input files")
    assert_no_output(out)
    assert_user_error(dedup(cli, tmp_path / "empty", out), 1, "empty", "no Parquet shards")
    assert_no_output(out)


def test_input_folder_without_supported_files(cli: Cli, tmp_path: Path) -> None:
    (tmp_path / "raw").mkdir()
    (tmp_path / "raw" / "notes.txt").write_text("hello")
    out = tmp_path / "out"
    assert_user_error(ingest(cli, tmp_path / "raw", out), 1, "raw", "no input files")
    assert_no_output(out)


def test_truncated_parquet_shard_in_a_shard_set(cli: Cli, tmp_path: Path) -> None:
    shard_set = make_shard_set(cli, tmp_path / "set")
    truncated_parquet(shard_set / "part-99999-00000.parquet")
    out = tmp_path / "out"
    assert_user_error(dedup(cli, shard_set, out), 1, "part-99999-00000.parquet", "not a readable Parquet")
    assert_no_output(out)


def test_truncated_parquet_to_ingest(cli: Cli, tmp_path: Path) -> None:
    src = truncated_parquet(tmp_path / "raw" / "cut.parquet")
    out = tmp_path / "out"
    assert_user_error(ingest(cli, src, out), 1, "cut.parquet", "not a readable Parquet")
    assert_no_output(out)


def test_file_named_parquet_that_is_not_parquet(cli: Cli, tmp_path: Path) -> None:
    (tmp_path / "set").mkdir()
    (tmp_path / "set" / "part-00000.parquet").write_text('{"id": "a", "text": "json, not parquet"}\n')
    out = tmp_path / "out"
    assert_user_error(dedup(cli, tmp_path / "set", out), 1, "part-00000.parquet", "not a readable Parquet")
    assert_no_output(out)
    assert_user_error(
        ingest(cli, tmp_path / "set" / "part-00000.parquet", out), 1, "part-00000.parquet", "Parquet"
    )
    assert_no_output(out)


def test_missing_text_column_in_raw_input(cli: Cli, tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "docs.jsonl", [{"id": "a", "body": "text under another name"}])
    out = tmp_path / "out"
    assert_user_error(ingest(cli, src, out), 1, "docs.jsonl", "'text'", "--text-column")
    assert_no_output(out)
    assert_user_error(ingest(cli, src, out, "--text-column", "content"), 1, "docs.jsonl", "'content'")
    assert_no_output(out)


def test_missing_text_column_in_shard_set(cli: Cli, tmp_path: Path) -> None:
    (tmp_path / "set").mkdir()
    pq.write_table(pa.table({"id": ["a", "b"], "body": ["x", "y"]}), tmp_path / "set" / "part-00000.parquet")
    out = tmp_path / "out"
    assert_user_error(dedup(cli, tmp_path / "set", out), 1, "part-00000.parquet", "'text'")
    assert_no_output(out)


@pytest.mark.parametrize("text", [None, "", "  \t\n "], ids=["null", "empty", "whitespace"])
def test_empty_text_is_an_error_by_default(cli: Cli, tmp_path: Path, text: str | None) -> None:
    src = write_jsonl(tmp_path / "docs.jsonl", [*GOOD[:2], {"id": "bad", "text": text}, *GOOD[2:]])
    out = tmp_path / "out"
    assert_user_error(ingest(cli, src, out), 1, "docs.jsonl row 2", "empty or null text", "--empty")
    assert_no_output(out)


def test_null_text_in_first_row_is_an_error_naming_the_row(cli: Cli, tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "docs.jsonl", [{"id": "bad", "text": None}, *GOOD])
    out = tmp_path / "out"
    assert_user_error(ingest(cli, src, out, "--batch-rows", "1"), 1, "docs.jsonl row 0", "empty or null text")
    assert_no_output(out)


def test_invalid_utf8_names_the_line(cli: Cli, tmp_path: Path) -> None:
    src = tmp_path / "docs.jsonl"
    src.write_bytes(b'{"id": "a", "text": "fine"}\n{"id": "b", "text": "caf\xe9 \xff"}\n')
    out = tmp_path / "out"
    assert_user_error(ingest(cli, src, out), 1, "docs.jsonl:2", "UTF-8")
    assert_no_output(out)


@pytest.mark.parametrize(
    ("line", "message"),
    [('{"id": "c", "text": ', "malformed JSON (Expecting value, column 21)"), ('["c"]', "got list")],
    ids=["truncated", "not-an-object"],
)
def test_malformed_jsonl_names_the_line(cli: Cli, tmp_path: Path, line: str, message: str) -> None:
    src = write_jsonl(tmp_path / "docs.jsonl", GOOD[:2])
    src.write_text(src.read_text() + line + "\n" + '{"id": "d", "text": "after"}\n')
    out = tmp_path / "out"
    assert_user_error(ingest(cli, src, out), 1, "docs.jsonl:3", message)
    assert_no_output(out)


def test_jsonl_key_with_values_of_different_types(cli: Cli, tmp_path: Path) -> None:
    rows = [{"id": "a", "text": "x", "n": 1}, {"id": "b", "text": "y", "n": "two"}, {"id": "c", "text": "z"}]
    src = write_jsonl(tmp_path / "docs.jsonl", rows)
    out = tmp_path / "out"
    # One batch: the message names its lines; one row per batch: the very line.
    assert_user_error(ingest(cli, src, out), 1, "docs.jsonl:1-3", "'two'")
    assert_user_error(ingest(cli, src, out, "--batch-rows", "1"), 1, "docs.jsonl:2:", "'two'")
    assert_no_output(out)


def test_unknown_split_of_a_saved_dataset_dict(cli: Cli, tmp_path: Path) -> None:
    import datasets

    rows = [{"id": "a", "text": "x"}]
    datasets.DatasetDict(
        {"dev": datasets.Dataset.from_list(rows), "test": datasets.Dataset.from_list(rows)}
    ).save_to_disk(str(tmp_path / "dd"))
    out = tmp_path / "out"
    assert_user_error(ingest(cli, tmp_path / "dd", out), 2, "dd", "'train'", "dev, test")
    assert_user_error(ingest(cli, tmp_path / "dd", out, "--split", "validation"), 2, "'validation'", "dev")
    assert_no_output(out)


@pytest.mark.parametrize("suffix", ["gz", "zst"])
@pytest.mark.parametrize("damage", ["cut-short", "not-compressed"])
def test_corrupt_compressed_jsonl(cli: Cli, tmp_path: Path, suffix: str, damage: str) -> None:
    data = b"".join(b'{"id": "%d", "text": "row %d"}\n' % (i, i) for i in range(5000))
    packed = gzip.compress(data) if suffix == "gz" else zstandard.ZstdCompressor().compress(data)
    src = tmp_path / f"docs.jsonl.{suffix}"
    # Cut short, a file must not pass for a smaller complete one.
    src.write_bytes(packed[: len(packed) // 2] if damage == "cut-short" else data[:1000])
    out = tmp_path / "out"
    assert_user_error(ingest(cli, src, out), 1, f"docs.jsonl.{suffix}", "cannot decompress")
    assert_no_output(out)


def test_csv_with_a_bad_row(cli: Cli, tmp_path: Path) -> None:
    src = tmp_path / "docs.csv"
    src.write_text("id,text\na,fine\nb,too,many,fields\n")
    out = tmp_path / "out"
    assert_user_error(ingest(cli, src, out), 1, "docs.csv", "cannot read CSV")
    assert_no_output(out)


def test_jsonl_key_first_seen_in_a_later_batch(cli: Cli, tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "docs.jsonl", [*GOOD[:2], {"id": "x", "text": "y", "lang": "de"}])
    out = tmp_path / "out"
    assert_user_error(ingest(cli, src, out, "--batch-rows", "2"), 1, "docs.jsonl", "'lang'", "--columns")
    assert_no_output(out)


def test_duplicate_ids_in_one_file(cli: Cli, tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "docs.jsonl", [*GOOD, {"id": "d1", "text": "same id again"}])
    out = tmp_path / "out"
    assert_user_error(ingest(cli, src, out), 1, "duplicate id 'd1'", "docs.jsonl row 1", "docs.jsonl row 4")
    assert_no_output(out)


def test_duplicate_ids_across_files(cli: Cli, tmp_path: Path) -> None:
    a = write_jsonl(tmp_path / "a.jsonl", GOOD)
    b = write_jsonl(tmp_path / "b.jsonl", [{"id": "new", "text": "fresh"}, {"id": "d3", "text": "dup"}])
    out = tmp_path / "out"
    assert_user_error(ingest(cli, a, b, out), 1, "duplicate id 'd3'", "a.jsonl row 3", "b.jsonl row 1")
    assert_no_output(out)


def test_duplicate_ids_from_id_column(cli: Cli, tmp_path: Path) -> None:
    rows = [{"id": r["id"], "text": r["text"], "url": "same"} for r in GOOD]
    src = write_jsonl(tmp_path / "docs.jsonl", rows)
    out = tmp_path / "out"
    assert_user_error(ingest(cli, src, out, "--id-column", "url", "--columns", ""), 1, "duplicate id 'same'")
    assert_no_output(out)


def test_kept_column_named_like_an_output_column(cli: Cli, tmp_path: Path) -> None:
    rows = [{"doc_id": f"x{i}", **r} for i, r in enumerate(GOOD)]
    src = write_jsonl(tmp_path / "docs.jsonl", rows)
    out = tmp_path / "out"
    assert_user_error(ingest(cli, src, out, "--id-column", "doc_id"), 1, "docs.jsonl", "'id'", "--columns")
    assert_no_output(out)


@pytest.mark.parametrize("force", [False, True], ids=["plain", "force"])
def test_output_holding_another_stage_is_refused_and_kept(cli: Cli, tmp_path: Path, force: bool) -> None:
    other = make_shard_set(cli, tmp_path / "other")
    out = make_shard_set(cli, tmp_path / "out")
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    args = (other, out, "--force") if force else (other, out)
    assert_user_error(dedup(cli, *args), 1, "out", "stage 'ingest'")
    after = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert after == before


def test_non_empty_output_not_written_by_thresher(cli: Cli, tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "docs.jsonl", GOOD)
    out = tmp_path / "out"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    assert_user_error(ingest(cli, src, out), 1, "out", "not written by thresher")
    assert (out / "precious.txt").read_text() == "keep me"
    assert sorted(p.name for p in out.iterdir()) == ["precious.txt"]


def test_output_same_as_input(cli: Cli, tmp_path: Path) -> None:
    shard_set = make_shard_set(cli, tmp_path / "set")
    before = sorted(p.name for p in shard_set.glob("*.parquet"))
    assert_user_error(dedup(cli, shard_set, shard_set), 2, "must differ")
    assert sorted(p.name for p in shard_set.glob("*.parquet")) == before


def test_output_is_a_file(cli: Cli, tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "docs.jsonl", GOOD)
    (tmp_path / "out").write_text("a file")
    assert_user_error(ingest(cli, src, tmp_path / "out"), 2, "out", "not a directory")
    assert (tmp_path / "out").read_text() == "a file"


@pytest.mark.parametrize(
    ("args", "shown"),
    [
        (("--rows-per-shard", "0"), "greater than or equal to 1"),
        (("--batch-rows", "-5"), "greater than or equal to 1"),
        (("--rows-per-shard", "many"), "integer"),
        (("--empty", "maybe"), "'maybe'"),
    ],
    ids=["rows-per-shard-0", "batch-rows-negative", "rows-per-shard-word", "empty-maybe"],
)
def test_bad_option_values_exit_2(cli: Cli, tmp_path: Path, args: tuple[str, ...], shown: str) -> None:
    src = write_jsonl(tmp_path / "docs.jsonl", GOOD)
    out = tmp_path / "out"
    result = ingest(cli, src, out, *args)
    # Values Click rejects get its usage message (several lines); values the params model rejects, one line.
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output
    assert args[0] in result.output and shown in result.output
    assert not out.exists()


def test_bad_dedup_option_value_exits_2(cli: Cli, tmp_path: Path) -> None:
    shard_set = make_shard_set(cli, tmp_path / "set")
    out = tmp_path / "out"
    assert_user_error(dedup(cli, shard_set, out, "--buckets", "0"), 2, "--buckets")
    assert not out.exists()
