"""Export a shard set to JSON lines (plain, gzip, zstd), a `datasets` folder or training tokens (a Megatron
indexed dataset), and read it back."""

from __future__ import annotations

import gzip
import json
import os
import struct
import subprocess
from collections.abc import Iterator
from pathlib import Path

import datasets
import numpy as np
import pyarrow.parquet as pq
import pytest
import zstandard
from conftest import Cli, read_rows, small_file_system, write_jsonl
from test_tokenize import build_tokenizer, build_transformers_folder
from test_tokenize import shard_set as tokenize_test_set
from tokenizers import Tokenizer, models, pre_tokenizers

from thresher.pipelines.engine.digest import file_digest
from thresher.pipelines.engine.shards import ShardSet
from thresher.pipelines.io.tokens import TokenDataset, TokenFiles, document_order, read_document, write_tokens
from thresher.pipelines.stages.tokenize.tokenizer import load_tokenizer

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


# -- --format tokens ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tokenizer_json(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tokenizer(tmp_path_factory.mktemp("tok") / "tokenizer.json")


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    return tokenize_test_set(tmp_path, rows=230, rows_per_shard=60)


def export_tokens(cli: Cli, source: Path, target: Path, tokenizer: Path, *args: str) -> Path:
    result = cli("export", source, target, "--format", "tokens", "--tokenizer", tokenizer, *args)
    assert result.exit_code == 0, result.output
    return target


def stored_documents(prefix: Path) -> list[list[int]]:
    ds = TokenDataset(prefix)
    return [read_document(prefix, k).tolist() for k in range(len(ds))]


def test_tokens_round_trip(cli: Cli, tmp_path: Path, corpus: Path, tokenizer_json: Path) -> None:
    target = export_tokens(cli, corpus, tmp_path / "train.bin", tokenizer_json, "--seed", "5")
    tokenizer = Tokenizer.from_file(str(tokenizer_json))
    eos = tokenizer.token_to_id("<|endoftext|>")
    texts = [r["text"] for r in read_rows(corpus)]
    encoded = [e.ids for e in tokenizer.encode_batch(texts)]

    ds = TokenDataset(tmp_path / "train")
    assert len(ds) == len(texts) and ds.dtype == np.uint16
    assert target.stat().st_size == 2 * (sum(map(len, encoded)) + len(texts))
    # Every document is its text's encoding followed by EOS, at the position the seeded order says.
    order = document_order(len(texts), 5)
    for k, row in enumerate(order.tolist()):
        assert read_document(tmp_path / "train", k).tolist() == [*encoded[row], eos]
    # The same, not relying on document_order: the stored documents are the encodings, shuffled.
    docs = stored_documents(tmp_path / "train")
    assert sorted(docs) == sorted([*e, eos] for e in encoded)
    assert docs != [[*e, eos] for e in encoded]
    # The .bin is the documents back to back: EOS between documents (and after the last), nowhere else.
    flat = np.fromfile(target, np.uint16)
    assert flat.tolist() == [t for d in docs for t in d]
    assert np.flatnonzero(flat == eos).tolist() == (np.cumsum([len(d) for d in docs]) - 1).tolist()

    sidecar = json.loads((tmp_path / "train.bin.lineage.json").read_text())
    assert sidecar["format"] == "tokens" and sidecar["rows"] == len(texts)
    assert sidecar["digest"] == file_digest(target)
    assert sidecar["tokens"]["index"] == "train.idx"
    assert sidecar["tokens"]["index_digest"] == file_digest(tmp_path / "train.idx")
    tokens = sidecar["tokens"]
    assert (tokens["dtype"], tokens["eos_id"], tokens["seed"]) == ("uint16", eos, 5)
    assert (tokens["documents"], tokens["tokens"]) == (len(texts), sum(map(len, encoded)) + len(texts))
    assert tokens["tokenizer"] == str(tokenizer_json.resolve())
    assert tokens["tokenizer_digest"] == file_digest(tokenizer_json)


def test_tokens_index_is_megatrons_layout(
    cli: Cli, tmp_path: Path, corpus: Path, tokenizer_json: Path
) -> None:
    export_tokens(cli, corpus, tmp_path / "train", tokenizer_json)  # a prefix gets .bin added
    data = (tmp_path / "train.idx").read_bytes()
    assert data[:9] == b"MMIDIDX\x00\x00"
    version, code, count, doc_count = struct.unpack_from("<QBQQ", data, 9)
    assert (version, code, count, doc_count) == (1, 8, 230, 231)
    body = 9 + 25
    sizes = np.frombuffer(data, "<i4", count, body)
    pointers = np.frombuffer(data, "<i8", count, body + 4 * count)
    doc_index = np.frombuffer(data, "<i8", doc_count, body + 12 * count)
    assert len(data) == body + 4 * count + 8 * count + 8 * doc_count
    assert pointers.tolist() == (2 * (np.cumsum(sizes) - sizes)).tolist()
    assert doc_index.tolist() == list(range(231))
    assert (tmp_path / "train.bin").stat().st_size == 2 * int(sizes.sum())


def test_tokens_seed_decides_the_order(cli: Cli, tmp_path: Path, corpus: Path, tokenizer_json: Path) -> None:
    export_tokens(cli, corpus, tmp_path / "a.bin", tokenizer_json, "--seed", "1")
    export_tokens(cli, corpus, tmp_path / "b.bin", tokenizer_json, "--seed", "1")
    export_tokens(cli, corpus, tmp_path / "c.bin", tokenizer_json, "--seed", "2")
    for ext in (".bin", ".idx"):
        assert (tmp_path / f"a{ext}").read_bytes() == (tmp_path / f"b{ext}").read_bytes()
    a, c = stored_documents(tmp_path / "a"), stored_documents(tmp_path / "c")
    assert a != c and sorted(a) == sorted(c)


def test_tokens_gathered_in_small_chunks_are_the_same(
    tmp_path: Path, corpus: Path, tokenizer_json: Path
) -> None:
    # The shuffled file is copied a chunk of documents at a time; chunks of a few tokens (smaller than
    # one document) must give the same bytes as one chunk for the whole file.
    shard_set = ShardSet.open(corpus, required_columns=())
    tokenizer = load_tokenizer(tokenizer_json)
    assert tokenizer.eos_id is not None
    for name, chunk in (("small", 7), ("whole", 1 << 30)):
        write_tokens(
            shard_set,
            TokenFiles(tmp_path / name),
            tokenizer,
            eos_id=tokenizer.eos_id,
            seed=3,
            chunk_tokens=chunk,
        )
    assert (tmp_path / "small.bin").read_bytes() == (tmp_path / "whole.bin").read_bytes()
    assert (tmp_path / "small.idx").read_bytes() == (tmp_path / "whole.idx").read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_tokens_from_a_transformers_folder_and_eos_id(
    cli: Cli, tmp_path: Path, corpus: Path, tokenizer_json: Path
) -> None:
    from transformers import AutoTokenizer

    folder = build_transformers_folder(tmp_path / "hf-tok", tokenizer_json)
    export_tokens(cli, corpus, tmp_path / "hf.bin", folder)
    reference = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    texts = [r["text"] for r in read_rows(corpus)]
    expected = [[*ids, reference.eos_token_id] for ids in reference(texts)["input_ids"]]
    assert sorted(stored_documents(tmp_path / "hf")) == sorted(expected)

    export_tokens(cli, corpus, tmp_path / "unk.bin", tokenizer_json, "--eos-id", "0")
    assert {d[-1] for d in stored_documents(tmp_path / "unk")} == {0}


def test_tokens_large_vocabulary_is_int32(cli: Cli, tmp_path: Path, corpus: Path) -> None:
    # A word-level vocabulary past 65,536 ids, the corpus words at the top of it.
    words = sorted({w for r in read_rows(corpus) for w in r["text"].split()})
    vocab = {f"filler{i}": i for i in range(70_000)}
    vocab |= {w: 70_000 + i for i, w in enumerate(words)} | {"[UNK]": 70_000 + len(words)}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer.save(str(tmp_path / "big.json"))
    export_tokens(cli, corpus, tmp_path / "big.bin", tmp_path / "big.json", "--eos-id", "3")
    ds = TokenDataset(tmp_path / "big")
    assert ds.dtype == np.int32
    texts = [r["text"] for r in read_rows(corpus)]
    expected = [[*e.ids, 3] for e in tokenizer.encode_batch(texts)]
    assert max(max(d) for d in expected) > 65_535
    assert sorted(stored_documents(tmp_path / "big")) == sorted(expected)


@pytest.mark.parametrize(
    ("args", "code", "words"),
    [
        (("--format", "tokens"), 2, "needs --tokenizer"),
        (("--seed", "3"), 2, "go with --format tokens"),
        (("--format", "jsonl", "--tokenizer", "{tok}"), 2, "not jsonl"),
        (("--format", "tokens", "--tokenizer", "{tok}", "--columns", "id"), 2, "--text-column"),
        (
            ("--format", "tokens", "--tokenizer", "{tok}", "--text-column", "body"),
            2,
            "'body' for --text-column",
        ),
        (("--format", "tokens", "--tokenizer", "{tok}", "--eos-id", "100000"), 2, "--eos-id 100000"),
        (("--format", "tokens", "--tokenizer", "{noeos}"), 2, "pass --eos-id"),
        (("--format", "tokens", "--tokenizer", "{missing}"), 2, "no such file"),
    ],
)
def test_tokens_usage_errors_are_one_line(
    cli: Cli, tmp_path: Path, corpus: Path, tokenizer_json: Path, args: tuple[str, ...], code: int, words: str
) -> None:
    noeos = build_tokenizer(tmp_path / "noeos" / "tokenizer.json", eos=None)
    paths = {"tok": tokenizer_json, "noeos": noeos, "missing": tmp_path / "nope.json"}
    filled = [a.format(**paths) for a in args]
    result = cli("export", corpus, tmp_path / "out" / "train.bin", *filled)
    assert result.exit_code == code, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("thresher: error: ") and words in lines[0], result.output
    assert not (tmp_path / "out").exists() or list((tmp_path / "out").iterdir()) == []


def test_tokens_existing_index_is_refused(
    cli: Cli, tmp_path: Path, corpus: Path, tokenizer_json: Path
) -> None:
    (tmp_path / "train.idx").write_text("mine")
    result = cli(
        "export", corpus, tmp_path / "train.bin", "--format", "tokens", "--tokenizer", tokenizer_json
    )
    assert result.exit_code == 2 and "already exists" in result.output, result.output
    assert (tmp_path / "train.idx").read_text() == "mine" and not (tmp_path / "train.bin").exists()
    export_tokens(cli, corpus, tmp_path / "train.bin", tokenizer_json, "--force")
    assert len(TokenDataset(tmp_path / "train")) == 230


def test_tokens_full_disk_is_one_line_and_leaves_nothing(
    cli: Cli, tmp_path: Path, tiny_filesystem: Path, tokenizer_json: Path
) -> None:
    source = big_shard_set(cli, tmp_path)  # hex text: hundreds of tokens a document, MBs in all
    target = tiny_filesystem / "train.bin"
    result = cli("export", source, target, "--format", "tokens", "--tokenizer", tokenizer_json)
    assert result.exit_code == 1, result.output
    assert result.output.strip().splitlines() == [f"thresher: error: {target}: No space left on device"]
    assert list(tiny_filesystem.iterdir()) == []
