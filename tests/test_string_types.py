"""Shards whose text columns are `large_string` (what polars, and pandas with some options, write) go
through every text stage with the same outcome as `string` shards."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import Cli, read_rows

from thresher.scorers.fasttext_model import fasttext_lines

REPO = Path(__file__).resolve().parents[1]
WEB = REPO / "sample_data" / "web"


@pytest.fixture(scope="module")
def large_web(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("large") / "web"
    folder.mkdir()
    for path in sorted(WEB.glob("*.parquet")):
        table = pq.read_table(path)
        fields = [
            pa.field(f.name, pa.large_string()) if f.name in ("id", "text", "domain") else f
            for f in table.schema
        ]
        pq.write_table(table.cast(pa.schema(fields)), folder / path.name)
    return folder


# command -> options; PHRASES and WEIGHTS stand for files the test writes.
STAGES = {
    "dedup-exact-two-columns": (["dedup", "exact"], ["--also-columns", "domain"]),
    "dedup-minhash": (["dedup", "minhash"], []),
    "heuristics-c4-lines-phrases": (["heuristics"], ["--c4-lines", "--word-blocklist", "PHRASES"]),
    "pii": (["pii"], []),
    "mix-with-repeats": (["mix"], ["--weights", "WEIGHTS", "--tokens", "400000"]),
}


@pytest.mark.parametrize("name", sorted(STAGES))
def test_large_string_shards_give_what_string_shards_give(
    name: str, large_web: Path, cli: Cli, tmp_path: Path
) -> None:
    phrases = tmp_path / "phrases.txt"
    phrases.write_text("free money\ncasino\n", encoding="utf-8")
    weights = tmp_path / "weights.json"
    # More code than the sample holds, so rows are repeated and their ids get a '#copy' suffix.
    weights.write_text(json.dumps({"news": 0.1, "science": 0.2, "recipes": 0.3, "forum": 0.15, "code": 0.25}))
    command, options = STAGES[name]
    files = {"PHRASES": str(phrases), "WEIGHTS": str(weights)}
    options = [files.get(a, a) for a in options]
    outputs = []
    for source, out in ((WEB, tmp_path / "string"), (large_web, tmp_path / "large")):
        result = cli(*command, source, out, *options, "-w", "1", "-q")
        assert result.exit_code == 0, result.output
        outputs.append(read_rows(out))
    assert len(outputs[0]) > 0
    assert outputs[0] == outputs[1]
    assert (
        pq.read_schema(next((tmp_path / "large").glob("*.parquet"))).field("text").type == pa.large_string()
    )


def test_fasttext_lines_of_large_strings() -> None:
    texts = pa.array(["one\ntwo", None], pa.large_string())
    assert fasttext_lines(texts) == fasttext_lines(texts.cast(pa.string())) == ["one two\n", "\n"]
