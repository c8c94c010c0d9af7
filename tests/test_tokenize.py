"""`thresher tokenize`: n_tokens under a real local tokenizer (a tokenizers JSON file or a transformers
folder), trained here on generated text; the total in the manifest and in `inspect`; resume."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest
from conftest import Cli, read_manifest, read_rows
from factories import WORDS, random_corpus, write_shards
from tokenizers import Tokenizer, models, pre_tokenizers, trainers

from thresher.pipelines.report.inspect import describe

EOS = "<|endoftext|>"


def sentences(n: int = 400) -> list[str]:
    texts = random_corpus(n, seed=7, dup_rate=0.0, words=12).column("text").to_pylist()
    return [*texts, " ".join(WORDS)]


def build_tokenizer(path: Path, eos: str | None = EOS, vocab_size: int = 300) -> Path:
    """A small BPE trained on generated sentences, saved as tokenizer.json; `eos` is a special token."""
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    special = ["<unk>", *([eos] if eos else [])]
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=special, show_progress=False)
    tokenizer.train_from_iterator(sentences(), trainer)
    path.parent.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(path))
    return path


def build_transformers_folder(folder: Path, tokenizer_json: Path) -> Path:
    from transformers import PreTrainedTokenizerFast

    fast = PreTrainedTokenizerFast(tokenizer_file=str(tokenizer_json), eos_token=EOS, unk_token="<unk>")
    fast.save_pretrained(str(folder))
    return folder


def shard_set(tmp_path: Path, rows: int = 240, rows_per_shard: int = 70) -> Path:
    table = random_corpus(rows, seed=3, words=25)
    # Documents of different lengths, an empty one and one with words the tokenizer never saw.
    texts = table.column("text").to_pylist()
    texts[1] = texts[1][:40]
    texts[2] = ""
    texts[3] = "zyzzyva quixotic " + texts[3]
    table = table.set_column(1, "text", pa.array(texts))
    write_shards(table, tmp_path / "set", rows_per_shard)
    return tmp_path / "set"


def encode_lengths(tokenizer_json: Path, texts: list[str]) -> list[int]:
    tokenizer = Tokenizer.from_file(str(tokenizer_json))
    return [len(e.ids) for e in tokenizer.encode_batch(texts)]


@pytest.fixture(scope="module")
def tokenizer_json(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tokenizer(tmp_path_factory.mktemp("tok") / "tokenizer.json")


def test_tokenize_counts_every_document_and_resumes(cli: Cli, tmp_path: Path, tokenizer_json: Path) -> None:
    source = shard_set(tmp_path)
    out = tmp_path / "tokens"
    args = ("tokenize", source, out, "--tokenizer", tokenizer_json, "--workers", "2")
    result = cli(*args)
    assert result.exit_code == 0, result.output

    rows = read_rows(out)
    texts = [r["text"] for r in read_rows(source)]
    assert [r["text"] for r in rows] == texts  # annotated only: nothing dropped, order kept
    expected = encode_lengths(tokenizer_json, texts)
    assert [r["n_tokens"] for r in rows] == expected
    assert rows[2]["n_tokens"] == 0 and rows[3]["n_tokens"] > rows[0]["n_tokens"] // 2
    assert not (out / "_dropped").exists() or not list((out / "_dropped").iterdir())

    manifest = read_manifest(out)
    assert manifest["summary"]["tokens"] == sum(expected)
    assert manifest["summary"]["tokenizer"] == str(tokenizer_json.resolve())
    assert manifest["totals"]["rows_in"] == manifest["totals"]["rows_out"] == len(texts)
    assert describe(out).tokens == sum(expected)
    assert describe(source).tokens is None
    assert manifest["totals"]["tokens"] == sum(expected)

    again = cli(*args[:-2], "--workers", "1")
    assert again.exit_code == 0, again.output
    assert "up to date" in again.output

    # Every later stage's totals carry the tokens it kept, without a tokenizer.
    kept = tmp_path / "kept"
    result = cli("filter", out, kept, "--where", "n_tokens >= 20", "--workers", "2")
    assert result.exit_code == 0, result.output
    totals = read_manifest(kept)["totals"]
    assert totals["tokens"] == sum(n for n in expected if n >= 20) and 0 < totals["tokens"] < sum(expected)
    assert totals["rows_out"] == sum(1 for n in expected if n >= 20)


def test_a_replaced_tokenizer_reruns(cli: Cli, tmp_path: Path, tokenizer_json: Path) -> None:
    source = shard_set(tmp_path, rows=60)
    out = tmp_path / "tokens"
    path = tmp_path / "tok.json"
    path.write_bytes(tokenizer_json.read_bytes())
    args = ("tokenize", source, out, "--tokenizer", path, "--workers", "1")
    assert cli(*args).exit_code == 0
    # The tokenizer is a side input: another file at the same path is new work, not "up to date".
    build_tokenizer(path, vocab_size=40)
    result = cli(*args)
    assert result.exit_code == 0, result.output
    assert "up to date" not in result.output
    texts = [r["text"] for r in read_rows(source)]
    assert [r["n_tokens"] for r in read_rows(out)] == encode_lengths(path, texts)
    assert encode_lengths(path, texts) != encode_lengths(tokenizer_json, texts)


def test_transformers_folder_loads(cli: Cli, tmp_path: Path, tokenizer_json: Path) -> None:
    from transformers import AutoTokenizer

    folder = build_transformers_folder(tmp_path / "hf-tok", tokenizer_json)
    source = shard_set(tmp_path, rows=50)
    out = tmp_path / "tokens"
    result = cli("tokenize", source, out, "--tokenizer", folder, "--workers", "1")
    assert result.exit_code == 0, result.output
    texts = [r["text"] for r in read_rows(source)]
    reference = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    assert [r["n_tokens"] for r in read_rows(out)] == [len(i) for i in reference(texts)["input_ids"]]


@pytest.mark.parametrize("kind", ["missing", "not-json", "empty-folder"])
def test_bad_tokenizer_is_one_line(cli: Cli, tmp_path: Path, kind: str) -> None:
    source = shard_set(tmp_path, rows=10)
    path = tmp_path / "tok"
    if kind == "not-json":
        path = tmp_path / "tokenizer.json"
        path.write_text("{not json")
    elif kind == "empty-folder":
        path.mkdir()
    result = cli("tokenize", source, tmp_path / "out", "--tokenizer", path, "--workers", "1")
    assert result.exit_code == (1 if kind == "not-json" else 2), result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("thresher: error: --tokenizer "), result.output
    assert str(path) in lines[0]
    assert not (tmp_path / "out" / "_manifest.json").exists()


def test_a_set_already_tokenized_is_refused(cli: Cli, tmp_path: Path, tokenizer_json: Path) -> None:
    source = shard_set(tmp_path, rows=10)
    out = tmp_path / "tokens"
    assert cli("tokenize", source, out, "--tokenizer", tokenizer_json, "--workers", "1").exit_code == 0
    result = cli("tokenize", out, tmp_path / "again", "--tokenizer", tokenizer_json, "--workers", "1")
    assert result.exit_code == 2, result.output
    assert "already has a 'n_tokens' column" in result.output


def test_a_saved_truncation_limit_is_not_applied(cli: Cli, tmp_path: Path, tokenizer_json: Path) -> None:
    # Some published tokenizer.json files carry a model's length limit; a count needs every token.
    limited = Tokenizer.from_file(str(tokenizer_json))
    limited.enable_truncation(max_length=5)
    limited.enable_padding(length=8)
    limited.save(str(tmp_path / "limited.json"))
    source = shard_set(tmp_path, rows=20)
    out = tmp_path / "tokens"
    result = cli("tokenize", source, out, "--tokenizer", tmp_path / "limited.json", "--workers", "1")
    assert result.exit_code == 0, result.output
    texts = [r["text"] for r in read_rows(source)]
    assert [r["n_tokens"] for r in read_rows(out)] == encode_lengths(tokenizer_json, texts)
    assert max(encode_lengths(tokenizer_json, texts)) > 8
