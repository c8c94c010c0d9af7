"""Ingest from every supported input into a shard set: rows, ids, text, columns, shards, manifest totals."""

from __future__ import annotations

import gzip
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard
from conftest import Cli, read_manifest, read_rows, write_jsonl

ROWS = [
    {"id": "doc-a", "text": "The first document.", "url": "https://a.example", "n": 1},
    {"id": "doc-b", "text": "Zweites Dokument mit Umlauten: äöü ß.", "url": "https://b.example", "n": 2},
    {"id": "doc-c", "text": "第三个文件。", "url": "https://c.example", "n": 3},
    {"id": "doc-d", "text": "fourth\nwith a newline", "url": "https://d.example", "n": 4},
    {"id": "doc-e", "text": "fifth", "url": "https://e.example", "n": 5},
]


def ingest(cli: Cli, *args: str | Path) -> None:
    result = cli("ingest", *args, "--workers", "1", "-q")
    assert result.exit_code == 0, result.output


def assert_ingested(out: Path, rows: list[dict[str, Any]], columns: tuple[str, ...] = ("url", "n")) -> None:
    """The shard set holds exactly `rows` (id, text and the chosen extra columns) and the manifest agrees."""
    got = read_rows(out)
    expected = [{"id": r["id"], "text": r["text"], **{c: r[c] for c in columns}} for r in rows]
    assert got == expected
    manifest = read_manifest(out)
    assert manifest["stage"] == "ingest"
    assert manifest["totals"] == {"rows_in": len(rows), "rows_out": len(rows), "dropped": {}, "tokens": None}
    assert sum(o["rows"] for o in manifest["outputs"]) == len(rows)
    assert [o["path"] for o in manifest["outputs"]] == sorted(p.name for p in out.glob("part-*.parquet"))


def test_jsonl(cli: Cli, tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "raw" / "docs.jsonl", ROWS)
    ingest(cli, src, tmp_path / "out")
    assert_ingested(tmp_path / "out", ROWS)
    schema = pq.read_schema(next((tmp_path / "out").glob("part-*.parquet")))
    assert schema.field("id").type == pa.string() and schema.field("text").type == pa.string()


def test_jsonl_gz(cli: Cli, tmp_path: Path) -> None:
    src = tmp_path / "docs.jsonl.gz"
    src.write_bytes(gzip.compress("".join(json.dumps(r) + "\n" for r in ROWS).encode()))
    ingest(cli, src, tmp_path / "out")
    assert_ingested(tmp_path / "out", ROWS)


def test_jsonl_zst(cli: Cli, tmp_path: Path) -> None:
    src = tmp_path / "docs.jsonl.zst"
    data = "".join(json.dumps(r) + "\n" for r in ROWS).encode()
    src.write_bytes(zstandard.ZstdCompressor().compress(data))
    ingest(cli, src, tmp_path / "out")
    assert_ingested(tmp_path / "out", ROWS)


def test_jsonl_zst_of_several_frames(cli: Cli, tmp_path: Path) -> None:
    # Concatenated frames (pzstd, appended dumps) are one stream: every frame's rows are read.
    src = tmp_path / "docs.jsonl.zst"
    frames = [zstandard.ZstdCompressor().compress(json.dumps(r).encode() + b"\n") for r in ROWS]
    src.write_bytes(b"".join(frames))
    ingest(cli, src, tmp_path / "out")
    assert_ingested(tmp_path / "out", ROWS)


def test_parquet(cli: Cli, tmp_path: Path) -> None:
    src = tmp_path / "docs.parquet"
    pq.write_table(pa.Table.from_pylist(ROWS), src, row_group_size=2)
    ingest(cli, src, tmp_path / "out")
    assert_ingested(tmp_path / "out", ROWS)


def test_csv_keeps_text_and_ids_as_strings(cli: Cli, tmp_path: Path) -> None:
    # Digit-only ids and texts must stay strings: "007" is not the number 7.
    rows = [
        {"id": "007", "text": "1234", "url": "u1", "n": 1},
        {"id": "010", "text": "a text, with a comma", "url": "u2", "n": 2},
        {"id": "3", "text": 'say "hi"', "url": "u3", "n": 3},
    ]
    lines = ["id,text,url,n", "007,1234,u1,1", '010,"a text, with a comma",u2,2', '3,"say ""hi""",u3,3']
    src = tmp_path / "docs.csv"
    src.write_text("\n".join(lines) + "\n")
    ingest(cli, src, tmp_path / "out")
    assert_ingested(tmp_path / "out", rows)


def test_saved_dataset(cli: Cli, tmp_path: Path) -> None:
    datasets.Dataset.from_list(ROWS).save_to_disk(str(tmp_path / "ds"))
    ingest(cli, tmp_path / "ds", tmp_path / "out")
    assert_ingested(tmp_path / "out", ROWS)


def test_saved_dataset_dict_reads_train_unless_split_given(cli: Cli, tmp_path: Path) -> None:
    test_rows = [{**r, "id": "t-" + r["id"], "text": "test: " + r["text"]} for r in ROWS[:2]]
    datasets.DatasetDict(
        {"train": datasets.Dataset.from_list(ROWS), "test": datasets.Dataset.from_list(test_rows)}
    ).save_to_disk(str(tmp_path / "dd"))
    ingest(cli, tmp_path / "dd", tmp_path / "train")
    assert_ingested(tmp_path / "train", ROWS)
    ingest(cli, tmp_path / "dd", tmp_path / "test", "--split", "test")
    assert_ingested(tmp_path / "test", test_rows)
    assert read_manifest(tmp_path / "test")["params"]["split"] == "test"


def test_text_column_is_stored_as_text(cli: Cli, tmp_path: Path) -> None:
    rows = [{"id": r["id"], "content": r["text"], "n": r["n"]} for r in ROWS]
    src = write_jsonl(tmp_path / "docs.jsonl", rows)
    ingest(cli, src, tmp_path / "out", "--text-column", "content")
    got = read_rows(tmp_path / "out")
    assert got == [{"id": r["id"], "text": r["text"], "n": r["n"]} for r in ROWS]


def test_id_column(cli: Cli, tmp_path: Path) -> None:
    rows = [{"doc_id": f"x{i}", "id": f"ignored-{i % 2}", "text": r["text"]} for i, r in enumerate(ROWS)]
    src = write_jsonl(tmp_path / "docs.jsonl", rows)
    # The input's own `id` column would collide with the output's, so keep no extra columns.
    ingest(cli, src, tmp_path / "out", "--id-column", "doc_id", "--columns", "")
    assert read_rows(tmp_path / "out") == [{"id": r["doc_id"], "text": r["text"]} for r in rows]


def test_integer_id_column_becomes_string(cli: Cli, tmp_path: Path) -> None:
    rows = [{"num": 100 + i, "text": r["text"]} for i, r in enumerate(ROWS)]
    src = write_jsonl(tmp_path / "docs.jsonl", rows)
    ingest(cli, src, tmp_path / "out", "--id-column", "num")
    assert [r["id"] for r in read_rows(tmp_path / "out")] == ["100", "101", "102", "103", "104"]


def test_ids_derived_from_file_and_row_without_id_column(cli: Cli, tmp_path: Path) -> None:
    rows = [{"text": r["text"], "n": r["n"]} for r in ROWS]
    src = write_jsonl(tmp_path / "docs.jsonl", rows)
    ingest(cli, src, tmp_path / "out", "--batch-rows", "2")
    got = read_rows(tmp_path / "out")
    assert [r["id"] for r in got] == [f"docs.jsonl:{i}" for i in range(len(rows))]
    assert [r["text"] for r in got] == [r["text"] for r in ROWS]


def test_columns_keeps_only_chosen_extras(cli: Cli, tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "docs.jsonl", ROWS)
    ingest(cli, src, tmp_path / "out", "--columns", "url")
    assert_ingested(tmp_path / "out", ROWS, columns=("url",))
    assert pq.read_schema(tmp_path / "out" / "part-00000-00000.parquet").names == ["id", "text", "url"]


def test_rows_per_shard_splits_output(cli: Cli, tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "docs.jsonl", ROWS)
    ingest(cli, src, tmp_path / "out", "--rows-per-shard", "2", "--batch-rows", "3")
    shards = sorted((tmp_path / "out").glob("part-*.parquet"))
    assert [pq.ParquetFile(p).metadata.num_rows for p in shards] == [2, 2, 1]
    assert_ingested(tmp_path / "out", ROWS)


def test_several_input_files_one_task_each(cli: Cli, tmp_path: Path) -> None:
    a = write_jsonl(tmp_path / "raw" / "a.jsonl", ROWS[:3])
    b = write_jsonl(tmp_path / "raw" / "b.jsonl", ROWS[3:])
    ingest(cli, a, b, tmp_path / "out")
    assert_ingested(tmp_path / "out", ROWS)
    assert sorted(p.name for p in (tmp_path / "out").glob("part-*.parquet")) == [
        "part-00000-00000.parquet",
        "part-00001-00000.parquet",
    ]
    manifest = read_manifest(tmp_path / "out")
    read_tasks = [t for t in manifest["tasks"] if t["phase"] == "read"]
    assert [t["counts"]["rows_in"] for t in read_tasks] == [3, 2]
    assert [Path(t["inputs"][0]["path"]).name for t in read_tasks] == ["a.jsonl", "b.jsonl"]
    assert manifest["summary"]["sources"] == ["a.jsonl", "b.jsonl"]


def test_folder_input_expands_to_files_inside(cli: Cli, tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    write_jsonl(raw / "a.jsonl", ROWS[:2])
    write_jsonl(raw / "sub" / "b.jsonl", [{k: v for k, v in r.items() if k != "id"} for r in ROWS[2:]])
    (raw / "notes.txt").write_text("not an input")
    (raw / ".hidden.jsonl").write_text("not json either")
    ingest(cli, raw, tmp_path / "out", "--columns", "url,n")
    got = read_rows(tmp_path / "out")
    assert [r["id"] for r in got] == ["doc-a", "doc-b", "sub/b.jsonl:0", "sub/b.jsonl:1", "sub/b.jsonl:2"]
    assert [r["text"] for r in got] == [r["text"] for r in ROWS]
    assert read_manifest(tmp_path / "out")["summary"]["sources"] == ["a.jsonl", "sub/b.jsonl"]


def test_folder_input_holding_a_saved_dataset_reads_it_as_one_source(cli: Cli, tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    write_jsonl(raw / "a.jsonl", ROWS[:2])
    datasets.Dataset.from_list(ROWS[2:]).save_to_disk(str(raw / "more"))
    ingest(cli, raw, tmp_path / "out")
    assert_ingested(tmp_path / "out", ROWS)
    assert read_manifest(tmp_path / "out")["summary"]["sources"] == ["a.jsonl", "more"]


def test_reingesting_a_shard_set_folder_reads_only_its_shards(cli: Cli, tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "docs.jsonl", ROWS)
    ingest(cli, src, tmp_path / "first", "--rows-per-shard", "3")
    # The folder also holds _manifest.json, _dropped/ and _thresher/: none of them are data.
    ingest(cli, tmp_path / "first", tmp_path / "second")
    assert_ingested(tmp_path / "second", ROWS)


@pytest.mark.parametrize("batch_rows", ["1", "100"])
def test_empty_drop_records_dropped_rows(cli: Cli, tmp_path: Path, batch_rows: str) -> None:
    # A null first: with one row per batch, that batch's text column has no type but null.
    rows = [
        {"id": "d", "text": None},
        {"id": "a", "text": "kept"},
        {"id": "b", "text": ""},
        {"id": "c", "text": "  \t\n "},
        {"id": "e", "text": "kept too"},
    ]
    src = write_jsonl(tmp_path / "docs.jsonl", rows)
    out = tmp_path / "out"
    ingest(cli, src, out, "--empty", "drop", "--batch-rows", batch_rows)
    assert read_rows(out) == [{"id": "a", "text": "kept"}, {"id": "e", "text": "kept too"}]
    dropped = [r for p in sorted((out / "_dropped").glob("*.parquet")) for r in pq.read_table(p).to_pylist()]
    assert [(r["id"], r["stage"], r["reason"]) for r in dropped] == [
        ("d", "ingest", "empty_text"),
        ("b", "ingest", "empty_text"),
        ("c", "ingest", "empty_text"),
    ]
    totals = read_manifest(out)["totals"]
    assert totals == {"rows_in": 5, "rows_out": 2, "dropped": {"empty_text": 3}, "tokens": None}
    assert totals["rows_in"] == totals["rows_out"] + sum(totals["dropped"].values())


def test_empty_keep_keeps_rows(cli: Cli, tmp_path: Path) -> None:
    rows = [{"id": "a", "text": "kept"}, {"id": "b", "text": " "}, {"id": "c", "text": None}]
    src = write_jsonl(tmp_path / "docs.jsonl", rows)
    ingest(cli, src, tmp_path / "out", "--empty", "keep")
    assert read_rows(tmp_path / "out") == [
        {"id": "a", "text": "kept"},
        {"id": "b", "text": " "},
        {"id": "c", "text": ""},
    ]
    assert read_manifest(tmp_path / "out")["totals"] == {
        "rows_in": 3,
        "rows_out": 3,
        "dropped": {},
        "tokens": None,
    }


def test_same_input_gives_byte_identical_shards(cli: Cli, tmp_path: Path) -> None:
    rows = [{"text": f"document number {i}", "n": i} for i in range(50)] + [{"text": "", "n": -1}]
    src = write_jsonl(tmp_path / "docs.jsonl", rows)
    for name in ("one", "two"):
        ingest(cli, src, tmp_path / name, "--rows-per-shard", "20", "--empty", "drop")

    def files(root: Path) -> dict[str, bytes]:
        return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*.parquet"))}

    one, two = files(tmp_path / "one"), files(tmp_path / "two")
    assert sorted(one) == [
        "_dropped/source-00000.parquet",
        "part-00000-00000.parquet",
        "part-00000-00001.parquet",
        "part-00000-00002.parquet",
    ]
    assert one == two
    assert read_manifest(tmp_path / "one")["outputs"] == read_manifest(tmp_path / "two")["outputs"]


def test_jsonl_columns_come_from_every_row_not_just_the_first(cli: Cli, tmp_path: Path) -> None:
    rows = [{"id": "a", "text": "one"}, {"id": "b", "text": "two", "lang": "de"}, {"id": "c", "text": "3"}]
    src = write_jsonl(tmp_path / "docs.jsonl", rows)
    ingest(cli, src, tmp_path / "out")
    assert read_rows(tmp_path / "out") == [
        {"lang": r.get("lang"), "id": r["id"], "text": r["text"]} for r in rows
    ]
    # A key first seen in a later batch is fine when --columns leaves it out.
    ingest(cli, src, tmp_path / "narrow", "--batch-rows", "1", "--columns", "")
    assert read_rows(tmp_path / "narrow") == [{"id": r["id"], "text": r["text"]} for r in rows]


def test_output_inside_the_input_folder_is_not_read_back(cli: Cli, tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    write_jsonl(raw / "docs.jsonl", ROWS)
    for _ in range(2):  # the rerun finds the same inputs, so it is up to date instead of reading its shards
        ingest(cli, raw, raw / "out")
        assert_ingested(raw / "out", ROWS)
    assert [Path(f["path"]).name for f in read_manifest(raw / "out")["input"]["files"]] == ["docs.jsonl"]


def test_csv_gz(cli: Cli, tmp_path: Path) -> None:
    src = tmp_path / "docs.csv.gz"
    src.write_bytes(gzip.compress(b"id,text\nx1,first\nx2,second\n"))
    ingest(cli, src, tmp_path / "out")
    assert read_rows(tmp_path / "out") == [{"id": "x1", "text": "first"}, {"id": "x2", "text": "second"}]


@pytest.mark.parametrize(
    ("content", "allow"),
    [("", ["--allow-empty"]), ('{"id": "a", "text": " "}\n', [])],
    ids=["empty-file", "all-dropped"],
)
def test_no_rows_left_gives_an_empty_shard_later_stages_accept(
    cli: Cli, tmp_path: Path, content: str, allow: list[str]
) -> None:
    src = tmp_path / "docs.jsonl"
    src.write_text(content)
    ingest(cli, src, tmp_path / "out", "--empty", "drop", *allow)
    shards = sorted((tmp_path / "out").glob("part-*.parquet"))
    assert [pq.ParquetFile(p).metadata.num_rows for p in shards] == [0]
    assert pq.read_schema(shards[0]).names == ["id", "text"]
    assert read_manifest(tmp_path / "out")["totals"]["rows_out"] == 0
    result = cli("dedup", "exact", tmp_path / "out", tmp_path / "dedup", "--workers", "1", "-q")
    assert result.exit_code == 0, result.output
    assert read_rows(tmp_path / "dedup") == []


def _both_readers(path: Path, batch_rows: int) -> tuple[list[pa.Table], list[pa.Table]]:
    from thresher.pipelines.io import readers

    return list(readers._jsonl_arrow(path, batch_rows)), list(readers._jsonl_lines(path, batch_rows))


def test_arrow_json_reader_gives_the_line_parsers_tables(tmp_path: Path) -> None:
    rows = [
        {
            "id": f"r{i}",
            "text": f"text {i} ünïcödé",
            "date": "2024-05-01T10:00:00" if i % 2 else "2024-05-02",  # stays a string, not a timestamp
            "meta": {"score": i / 3, "tags": ["a", "b"][: i % 3], "when": "2024-01-01"},
            **({"n": i} if i % 4 else {}),
            "maybe": None if i < 5 else i,
        }
        for i in range(23)
    ]
    src = tmp_path / "docs.jsonl"
    src.write_text(
        "\n".join(json.dumps(r, ensure_ascii=False) + ("\n\n" if i == 7 else "") for i, r in enumerate(rows))
        + "\n"
    )
    for batch_rows in (5, 10, 100):
        fast, lines = _both_readers(src, batch_rows)
        assert [t.num_rows for t in fast] == [t.num_rows for t in lines]
        for a, b in zip(fast, lines, strict=True):
            assert a.schema == b.schema and a.equals(b)


def test_jsonl_error_past_the_first_batch_still_names_its_line(cli: Cli, tmp_path: Path) -> None:
    src = tmp_path / "docs.jsonl"
    good = "".join(json.dumps({"id": f"d{i}", "text": f"doc {i}"}) + "\n" for i in range(30))
    src.write_text(good + '{"id": "bad", "text": \n' + good.replace('"d', '"e'))
    result = cli("ingest", src, tmp_path / "out", "--batch-rows", "8", "--workers", "1", "-q")
    assert result.exit_code == 1 and "docs.jsonl:31" in result.output and "malformed JSON" in result.output
    assert not (tmp_path / "out").exists()


def test_jsonl_type_change_after_the_first_batch_is_the_line_parsers_error(cli: Cli, tmp_path: Path) -> None:
    src = tmp_path / "docs.jsonl"
    rows = [{"id": f"d{i}", "text": "t", "n": 1} for i in range(10)] + [{"id": "x", "text": "t", "n": "one"}]
    write_jsonl(src, rows)
    result = cli("ingest", src, tmp_path / "out", "--batch-rows", "4", "--workers", "1", "-q")
    # The line parser's own message, naming the lines of the batch that holds the change.
    assert result.exit_code == 1 and "docs.jsonl:9-11: a key holds values of different types" in result.output


def _long_rows(n: int = 3000) -> list[dict[str, Any]]:
    """Rows long enough to fill several of Arrow's blocks (`JSON_BLOCK_BYTES`)."""
    return [{"id": f"d{i}", "text": f"{i} " + "lorem ipsum " * 45, "n": i} for i in range(n)]


def _lines_of(rows: list[dict[str, Any]]) -> bytes:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode()


def _late(rows: list[dict[str, Any]], key: str, value: Any, first: int) -> list[dict[str, Any]]:
    return [{**r, key: value} if i >= first else r for i, r in enumerate(rows)]


JSONL_CASES: dict[str, Callable[[], bytes]] = {
    "plain": lambda: _lines_of(_long_rows()),
    "blank-lines": lambda: _lines_of(_long_rows()[:2500]) + b"\n  \r\n" + _lines_of(_long_rows()[2500:]),
    "no-final-newline": lambda: _lines_of(_long_rows()).rstrip(b"\n"),
    "crlf": lambda: _lines_of(_long_rows()).replace(b"\n", b"\r\n"),
    "key-after-first-block": lambda: _lines_of(_late(_long_rows(), "lang", "de", 2500)),
    "typed-after-first-block": lambda: _lines_of(
        [{**r, "score": r["n"] / 7 if r["n"] >= 2500 else None} for r in _long_rows()]
    ),
    "null-in-first-batch-only": lambda: _lines_of(
        [{**r, "maybe": r["n"] if r["n"] >= 7 else None} for r in _long_rows(40)]
    ),
    "integers-then-floats-in-one-block": lambda: _lines_of(
        [{**r, "x": r["n"] + (0.5 if r["n"] >= 10 else 0)} for r in _long_rows(40)]
    ),
    "dates-after-first-block": lambda: _lines_of(_late(_long_rows(), "when", "2024-05-01T10:00:00", 2500)),
    "dates-then-words": lambda: _lines_of(
        [{**r, "when": "2024-05-01" if r["n"] < 2500 else "soon"} for r in _long_rows()]
    ),
}


@pytest.mark.parametrize("compress", [False, True], ids=["plain", "gzip"])
@pytest.mark.parametrize("case", list(JSONL_CASES))
def test_jsonl_gives_the_line_parsers_tables_across_blocks(tmp_path: Path, case: str, compress: bool) -> None:
    from thresher.pipelines.io import readers

    data = JSONL_CASES[case]()
    src = tmp_path / ("docs.jsonl.gz" if compress else "docs.jsonl")
    src.write_bytes(gzip.compress(data) if compress else data)
    assert len(_lines_of(_long_rows(2500))) > readers.JSON_BLOCK_BYTES  # the changes at row 2500 come later
    for batch_rows in (7, 700, 10_000):
        fast, lines = list(readers._jsonl(src, batch_rows)), list(readers._jsonl_lines(src, batch_rows))
        assert [t.num_rows for t in fast] == [t.num_rows for t in lines]
        for a, b in zip(fast, lines, strict=True):
            assert a.schema == b.schema and a.equals(b)
            assert all(c.num_chunks == 1 for c in a.columns)


@pytest.mark.parametrize("batch_rows", [7, 700, 2999, 3000, 10_000])
def test_jsonl_streams_well_formed_lines_without_falling_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, batch_rows: int
) -> None:
    from thresher.pipelines.io import readers

    src = tmp_path / "docs.jsonl"
    src.write_bytes(JSONL_CASES["plain"]())
    lines = list(readers._jsonl_lines(src, batch_rows))

    def no_fallback(*args: object, **kwargs: object) -> None:
        raise AssertionError("the streaming reader fell back")

    monkeypatch.setattr(readers, "_jsonl_batches", no_fallback)
    monkeypatch.setattr(readers, "_jsonl_lines", no_fallback)
    fast = list(readers._jsonl(src, batch_rows))
    assert [t.num_rows for t in fast] == [t.num_rows for t in lines]
    assert all(a.equals(b) and a.schema == b.schema for a, b in zip(fast, lines, strict=True))


@pytest.mark.parametrize("where", [3, 2500], ids=["first-block", "later-block"])
def test_jsonl_line_holding_two_objects_is_named(cli: Cli, tmp_path: Path, where: int) -> None:
    rows = [json.dumps(r) for r in _long_rows()]
    rows[where] += rows[where]
    src = tmp_path / "docs.jsonl"
    src.write_text("\n".join(rows) + "\n")
    result = cli("ingest", src, tmp_path / "out", "--workers", "1", "-q")
    assert result.exit_code == 1 and f"docs.jsonl:{where + 1}: malformed JSON (Extra data" in result.output
    assert not (tmp_path / "out").exists()


def test_jsonl_shards_are_the_line_parsers_bytes(
    cli: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from thresher.pipelines.io import readers

    # A key past the first block (left out, as ingest wants), a blank line and no final newline: the
    # streaming reader hands over to the slower readers on the way.
    rows = _late(_long_rows(), "lang", "de", 2600)
    rows = [{**r, "score": r["n"] / 7 if r["n"] >= 5 else None} for r in rows]
    src = tmp_path / "docs.jsonl"
    src.write_bytes(_lines_of(rows[:2000]) + b"\n" + _lines_of(rows[2000:]).rstrip(b"\n"))
    ingest(
        cli, src, tmp_path / "fast", "--batch-rows", "500", "--rows-per-shard", "1000", "--columns", "n,score"
    )

    def no_arrow(*args: object, **kwargs: object) -> None:
        raise ValueError("line parser only")

    monkeypatch.setattr(readers, "_jsonl_arrow", no_arrow)
    ingest(
        cli,
        src,
        tmp_path / "lines",
        "--batch-rows",
        "500",
        "--rows-per-shard",
        "1000",
        "--columns",
        "n,score",
    )

    def files(root: Path) -> dict[str, bytes]:
        return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*.parquet"))}

    fast, lines = files(tmp_path / "fast"), files(tmp_path / "lines")
    assert sum(name.startswith("part-") for name in fast) == 3 and fast == lines
