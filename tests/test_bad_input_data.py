"""Bad input data and a failing file system (issue 13, items 2.2, 2.5 and 9-15): one line naming the file
(and row or line), exit 1 or 2, no traceback, and nothing left in the output folder."""

from __future__ import annotations

import random
import struct
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import Cli, read_manifest, read_rows, small_file_system, write_jsonl
from test_bad_input import GOOD, assert_no_output, assert_user_error, ingest, make_shard_set

from thresher.pipelines.engine import executor
from thresher.pipelines.stages.filter.where import MAX_NESTING, parse_where
from thresher.scorers.kenlm_model import train_sentencepiece


def assert_nothing_left(out: Path) -> None:
    """A fresh output folder that failed is gone: no parts, no _dropped/, no _thresher/, no .failed."""
    assert_no_output(out)
    assert not out.exists(), sorted(p.relative_to(out).as_posix() for p in out.rglob("*"))


# ---------------------------------------------------------------------------------------------------------
# 2.2 Symbolic links


def test_directory_link_loop_reads_each_file_once(cli: Cli, tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    # No `id` key: derived ids ('<file>:<row>') differ per path, so a file read twice would not be caught
    # as a duplicate id.
    write_jsonl(raw / "docs.jsonl", [{"text": "only once"}])
    (raw / "self").symlink_to(raw, target_is_directory=True)
    (raw / "twin.jsonl").symlink_to(raw / "docs.jsonl")
    out = tmp_path / "out"
    result = ingest(cli, raw, raw / "docs.jsonl", out)
    assert result.exit_code == 0, result.output
    assert [r["text"] for r in read_rows(out)] == ["only once"]
    assert read_manifest(out)["summary"]["sources"] == ["docs.jsonl"]


def test_file_link_loop_is_one_line(cli: Cli, tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    write_jsonl(raw / "good.jsonl", GOOD)
    (raw / "a.jsonl").symlink_to(raw / "b.jsonl")
    (raw / "b.jsonl").symlink_to(raw / "a.jsonl")
    out = tmp_path / "out"
    assert_user_error(ingest(cli, raw, out), 1, "a.jsonl", "symbolic link loop")
    assert_nothing_left(out)
    assert_user_error(ingest(cli, raw / "b.jsonl", out), 2, "b.jsonl", "symbolic link loop")
    assert_nothing_left(out)
    for name in ("a.jsonl", "b.jsonl"):
        (raw / name).unlink()
    (raw / "c.jsonl").symlink_to(raw / "gone.jsonl")
    assert_user_error(ingest(cli, raw, out), 1, "c.jsonl", "gone.jsonl", "does not exist")
    assert_nothing_left(out)


# ---------------------------------------------------------------------------------------------------------
# 2.5 Empty inputs: one rule for every format


def _zero_row_parquet(path: Path) -> None:
    pq.write_table(pa.table({"id": pa.array([], pa.string()), "text": pa.array([], pa.string())}), path)


EMPTY_INPUTS = {
    "zero-byte.jsonl": lambda p: p.write_bytes(b""),
    "blank-lines.jsonl": lambda p: p.write_text("\n  \n\n"),
    "zero-byte.parquet": lambda p: p.write_bytes(b""),
    "zero-rows.parquet": _zero_row_parquet,
    "header-only.csv": lambda p: p.write_text("id,text\n"),
    "zero-byte.csv": lambda p: p.write_bytes(b""),
}


@pytest.mark.parametrize("name", sorted(EMPTY_INPUTS))
def test_an_input_without_rows_is_an_error_unless_allowed(cli: Cli, tmp_path: Path, name: str) -> None:
    raw = tmp_path / "raw"
    good = write_jsonl(raw / "good.jsonl", GOOD)
    EMPTY_INPUTS[name](raw / name)
    out = tmp_path / "out"
    assert_user_error(ingest(cli, good, raw / name, out), 1, name, "no rows", "--allow-empty")
    assert_nothing_left(out)
    result = ingest(cli, good, raw / name, out, "--allow-empty")
    assert result.exit_code == 0, result.output
    assert [r["id"] for r in read_rows(out)] == [r["id"] for r in GOOD]


def test_empty_string_id_names_file_and_row(cli: Cli, tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "docs.jsonl", [*GOOD[:2], {"id": "", "text": "no id"}, *GOOD[2:]])
    out = tmp_path / "out"
    assert_user_error(ingest(cli, src, out), 1, "docs.jsonl row 2", "empty id", "'id'")
    assert_nothing_left(out)
    src = tmp_path / "docs.csv"
    src.write_text("url,text\nu1,one\n,two\n")
    assert_user_error(ingest(cli, src, out, "--id-column", "url"), 1, "docs.csv row 1", "empty id", "'url'")
    assert_nothing_left(out)


# ---------------------------------------------------------------------------------------------------------
# 9, 10 Text that is not Unicode, columns that are not unique


@pytest.mark.parametrize("batch_rows", ["1", "100"])
def test_lone_surrogate_escape_names_the_line(cli: Cli, tmp_path: Path, batch_rows: str) -> None:
    src = tmp_path / "docs.jsonl"
    # A surrogate pair written as escapes is one real character (an emoji) and must still be read.
    src.write_text(
        '{"id": "a", "text": "fine \\ud83d\\ude00"}\n\n{"id": "b", "text": "half \\ud800 of a pair"}\n'
        '{"id": "c", "text": "after"}\n'
    )
    out = tmp_path / "out"
    assert_user_error(ingest(cli, src, out, "--batch-rows", batch_rows), 1, "docs.jsonl:3:", "surrogate")
    assert_nothing_left(out)
    src.write_text('{"id": "a", "text": "fine \\ud83d\\ude00"}\n')
    assert ingest(cli, src, out).exit_code == 0
    assert read_rows(out)[0]["text"] == "fine \N{GRINNING FACE}"


def test_two_columns_of_one_name(cli: Cli, tmp_path: Path) -> None:
    out = tmp_path / "out"
    columns = [pa.array(["a", "b"]), pa.array(["x", "y"]), pa.array(["p", "q"])]
    pq.write_table(pa.Table.from_arrays(columns, names=["id", "text", "text"]), tmp_path / "two-text.parquet")
    assert_user_error(
        ingest(cli, tmp_path / "two-text.parquet", out), 1, "two-text.parquet", "2 columns", "'text'"
    )
    assert_nothing_left(out)
    (tmp_path / "two-ids.csv").write_text("id,text,id\na,x,b\n")
    assert_user_error(ingest(cli, tmp_path / "two-ids.csv", out), 1, "two-ids.csv", "2 columns", "'id'")
    assert_nothing_left(out)
    # A repeated column that is only kept, not read: the message says how to leave it out, and that works.
    two_urls = pa.Table.from_arrays(columns, names=["id", "text", "url"]).append_column("url", columns[0])
    pq.write_table(two_urls, tmp_path / "two-urls.parquet")
    assert_user_error(ingest(cli, tmp_path / "two-urls.parquet", out), 1, "'url'", "--columns")
    assert_nothing_left(out)
    result = ingest(cli, tmp_path / "two-urls.parquet", out, "--columns", "")
    assert result.exit_code == 0, result.output
    assert read_rows(out) == [{"id": "a", "text": "x"}, {"id": "b", "text": "y"}]


# ---------------------------------------------------------------------------------------------------------
# 11, 12 The file system fails: read-only, full, an input deleted mid-run


def incompressible_jsonl(path: Path, rows: int) -> Path:
    rng = random.Random(0)
    return write_jsonl(path, ({"id": f"d{i}", "text": rng.randbytes(300).hex()} for i in range(rows)))


def test_read_only_output_is_one_line(cli: Cli, tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "docs.jsonl", GOOD)
    with small_file_system(tmp_path / "ro", "ro,size=64k") as ro:
        line = assert_user_error(ingest(cli, src, ro / "out"), 1, str(ro / "out"), "Read-only file system")
        assert "Errno" not in line
        # The mount point itself: empty and there, but not writable.
        assert_user_error(ingest(cli, src, ro), 1, str(ro), "Read-only file system")
        assert list(ro.iterdir()) == []


@pytest.mark.parametrize("workers", ["1", "2"])
def test_disk_full_is_one_line_and_leaves_nothing(cli: Cli, tmp_path: Path, workers: str) -> None:
    # Two sources, so that two workers write at once; together about 1.2 MB of Parquet for a 512 KiB disk.
    a = incompressible_jsonl(tmp_path / "raw" / "a.jsonl", 1500)
    b = incompressible_jsonl(tmp_path / "raw" / "b.jsonl", 1500)
    b.write_text(b.read_text().replace('"id": "d', '"id": "e'))
    with small_file_system(tmp_path / "small", "size=512k") as small:
        out = small / "out"
        result = cli("ingest", a, b, out, "--rows-per-shard", "100", "--workers", workers, "-q")
        assert_user_error(result, 1, str(out), "No space left on device")
        assert_nothing_left(out)
        assert list(small.iterdir()) == []


@pytest.mark.parametrize("workers", ["1", "2"])
def test_input_deleted_while_ingest_runs(
    cli: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, workers: str
) -> None:
    a = write_jsonl(tmp_path / "raw" / "a.jsonl", GOOD)
    b = write_jsonl(tmp_path / "raw" / "b.jsonl", [{"id": "b", "text": "soon gone"}])
    plan_stage = executor.plan_stage

    def plan_then_delete(*args: object, **kwargs: object) -> object:
        # After the plan has listed and digested b, before any task reads it (in this process or a worker).
        planned = plan_stage(*args, **kwargs)  # type: ignore[arg-type]
        b.unlink()
        return planned

    monkeypatch.setattr(executor, "plan_stage", plan_then_delete)
    out = tmp_path / "out"
    result = cli("ingest", a, b, out, "--workers", workers, "-q")
    assert_user_error(result, 1, str(b), "gone")
    assert_nothing_left(out)


# ---------------------------------------------------------------------------------------------------------
# 13 --where nested too deep


@pytest.mark.parametrize("nest", ["paren", "not"])
def test_deeply_nested_where_is_refused(cli: Cli, tmp_path: Path, nest: str) -> None:
    shard_set = make_shard_set(cli, tmp_path / "set")
    deep = "(" * 5000 + "text == 'x'" + ")" * 5000 if nest == "paren" else "not " * 5000 + "text == 'x'"
    out = tmp_path / "out"
    result = cli("filter", shard_set, out, "--where", deep, "--workers", "1", "-q")
    assert_user_error(result, 2, "--where", f"nested more than {MAX_NESTING} deep", "column")
    assert not out.exists()
    # As deep as allowed still parses.
    parse_where("(" * MAX_NESTING + "text == 'x'" + ")" * MAX_NESTING)
    parse_where("not " * MAX_NESTING + "text == 'x'")


# ---------------------------------------------------------------------------------------------------------
# 14, 15 Broken model files


def test_garbage_kenlm_binary_next_to_a_real_tokenizer(
    cli: Cli, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    shard_set = make_shard_set(cli, tmp_path / "set")
    model = tmp_path / "model"
    model.mkdir()
    lines = [f"the field {i % 40} and the barn {i % 7} in autumn rain" for i in range(2000)]
    train_sentencepiece(
        iter(lines), model / "tokenizer.model", vocab_size=60, sample_lines=2000, character_coverage=1.0,
        threads=1, seed=0,
    )  # fmt: skip
    (model / "model.binary").write_bytes(random.Random(0).randbytes(5000))
    capfd.readouterr()
    out = tmp_path / "out"
    result = cli("perplexity", "kenlm", shard_set, out, "--model", model, "--workers", "1", "-q")
    assert_user_error(result, 1, str(model / "model.binary"), "not a KenLM model")
    assert_nothing_left(out)
    # KenLM writes its progress bar straight to file descriptor 2: nothing of it may show.
    assert "----5---10" not in capfd.readouterr().err


def _tiny_fasttext_model(folder: Path) -> Path:
    import fasttext

    rng = random.Random(0)
    words = [f"w{i}" for i in range(200)]
    train = folder / "train.txt"
    train.write_text(
        "".join(
            f"__label__{'hq' if i % 2 else 'lq'} {' '.join(rng.choices(words, k=12))}\n" for i in range(400)
        )
    )
    raw = fasttext.train_supervised(str(train), dim=8, epoch=1, bucket=1000, thread=1, seed=0, verbose=0)
    raw.save_model(str(folder / "real.bin"))
    return folder / "real.bin"


def test_fasttext_model_with_valid_magic_and_a_broken_body(cli: Cli, tmp_path: Path) -> None:
    shard_set = make_shard_set(cli, tmp_path / "set")
    real = _tiny_fasttext_model(tmp_path)
    magic_version = struct.pack("<ii", 793712314, 12)
    # Random bytes after fastText's magic and version: fastText 0.9.2 loads this one forever, memory growing.
    rng = random.Random(1)
    (tmp_path / "random.bin").write_bytes(magic_version + bytes(rng.getrandbits(8) for _ in range(4096)))
    # A real model whose dictionary claims ten million more words than the file holds.
    data = bytearray(real.read_bytes())
    size, nwords = struct.unpack_from("<ii", data, 64)
    struct.pack_into("<ii", data, 64, size + 10_000_000, nwords + 10_000_000)
    (tmp_path / "big-dictionary.bin").write_bytes(data)
    (tmp_path / "cut.bin").write_bytes(real.read_bytes()[: len(data) // 2])
    out = tmp_path / "out"
    for name, reason in [
        ("random.bin", "impossible settings"),
        ("big-dictionary.bin", "dictionary entries need"),
        ("cut.bin", "truncated or corrupt"),
    ]:
        result = cli("quality", "score", shard_set, out, "--model", tmp_path / name, "--workers", "1", "-q")
        assert_user_error(result, 1, name, "not a fastText model", reason)
        assert_nothing_left(out)
    result = cli("quality", "score", shard_set, out, "--model", real, "--label", "hq", "--workers", "1", "-q")
    assert result.exit_code == 0, result.output
