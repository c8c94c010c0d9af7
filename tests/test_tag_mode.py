"""Tag, then filter: each filtering stage in `--mode tag` keeps every row and writes what it measured, and
`thresher filter --where` on those columns keeps exactly the rows drop mode keeps."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import Cli, read_manifest, read_rows
from factories import write_shards
from test_bad_input import assert_user_error

from thresher.pipelines.stages.pii.patterns import KINDS
from thresher.pipelines.testing.sample_data import generate_web

REPO = Path(__file__).resolve().parents[1]
BLOCKLIST = REPO / "recipes" / "blocklists" / "spam-words.txt"
RUN = ("-w", "1", "-q")


@pytest.fixture(scope="module")
def web(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Generated web pages with planted duplicates, near duplicates, PII, spam and boilerplate, in three
    shards."""
    src = tmp_path_factory.mktemp("tag") / "web"
    write_shards(generate_web(450, seed=3).table, src, rows_per_shard=150)
    return src


def run(cli: Cli, *args: str | Path) -> None:
    result = cli(*args, *RUN)
    assert result.exit_code == 0, result.output


def ids(shard_set: Path) -> list[str]:
    return [r["id"] for r in read_rows(shard_set)]


def dropped(shard_set: Path) -> dict[str, dict]:
    """id -> its `_dropped/` row."""
    return {r["id"]: r for r in pq.read_table(shard_set / "_dropped").to_pylist()}


def assert_nothing_dropped(source: Path, tagged: Path) -> None:
    totals = read_manifest(tagged)["totals"]
    assert totals["rows_in"] == totals["rows_out"] == len(ids(source))
    assert totals["dropped"] == {}
    assert ids(tagged) == ids(source)
    assert not (tagged / "_dropped").exists()


def filtered(cli: Cli, tagged: Path, out: Path, where: str) -> list[str]:
    run(cli, "filter", tagged, out, "--where", where)
    return ids(out)


def test_heuristics_tag_mode_writes_each_rule_and_filters_like_drop_mode(
    cli: Cli, web: Path, tmp_path: Path
) -> None:
    drop, tag = tmp_path / "drop", tmp_path / "tag"
    run(cli, "heuristics", web, drop, "--word-blocklist", BLOCKLIST)
    run(cli, "heuristics", web, tag, "--word-blocklist", BLOCKLIST, "--mode", "tag")
    assert_nothing_dropped(web, tag)

    rows = read_rows(tag)
    reasons = {i: r["reason"] for i, r in dropped(drop).items()}
    assert 0 < len(reasons) < len(rows)
    assert {r["id"]: r["h_reason"] for r in rows if r["h_reason"]} == reasons
    rules = read_manifest(drop)["summary"]["rules"]
    for r in rows:
        failed = [rule for rule in rules if not r[f"h_{rule}_pass"]]
        assert r["h_reason"] == (failed[0] if failed else None)
        assert r["h_gopher_word_count"] == len(r["text"].split())
        assert r["h_gopher_word_count_pass"] == (50 <= len(r["text"].split()) <= 100_000)
        assert r["h_c4_curly_bracket_pass"] == ("{" not in r["text"])
        assert (r["h_word_blocklist"] is None) == r["h_word_blocklist_pass"]
    names = pq.read_schema(tag / "part-00000.parquet").names
    assert {"h_gopher_top_ngram_2", "h_gopher_top_ngram_4", "h_gopher_dup_ngram_10"} <= set(names)
    assert pq.read_schema(tag / "part-00000.parquet").field("h_gopher_dup_lines").type == pa.float64()

    summary = read_manifest(tag)["summary"]
    assert summary["mode"] == "tag"
    assert summary["would_drop_by_rule"] == read_manifest(drop)["summary"]["dropped_by_rule"]
    assert summary["tripped_by_rule"] == read_manifest(drop)["summary"]["tripped_by_rule"]
    assert filtered(cli, tag, tmp_path / "kept", "h_reason is null") == ids(drop)

    # Another threshold from the same tags, without measuring again: --min-words 120.
    others = " and ".join(f"h_{rule}_pass" for rule in rules if rule != "gopher_word_count")
    where = f"{others} and h_gopher_word_count >= 120 and h_gopher_word_count <= 100000"
    stricter = tmp_path / "drop120"
    run(cli, "heuristics", web, stricter, "--word-blocklist", BLOCKLIST, "--min-words", "120")
    assert filtered(cli, tag, tmp_path / "kept120", where) == ids(stricter)
    assert len(ids(stricter)) < len(ids(drop))


def test_heuristics_tag_mode_with_c4_line_cleaning(cli: Cli, web: Path, tmp_path: Path) -> None:
    drop, tag = tmp_path / "drop", tmp_path / "tag"
    run(cli, "heuristics", web, drop, "--c4-lines", "--rules", "c4")
    run(cli, "heuristics", web, tag, "--c4-lines", "--rules", "c4", "--mode", "tag")
    assert_nothing_dropped(web, tag)
    rows = read_rows(tag)
    c4_lines = {i for i, r in dropped(drop).items() if r["reason"] == "c4_lines"}
    assert c4_lines and {r["id"] for r in rows if not r["h_c4_lines_pass"]} == c4_lines
    assert all((r["h_c4_lines"] >= 3) == r["h_c4_lines_pass"] for r in rows)
    # Both modes clean the text the same way: the filtered rows are drop mode's, byte for byte.
    assert filtered(cli, tag, tmp_path / "kept", "h_reason is null") == ids(drop)
    kept = pq.read_table(tmp_path / "kept").select(["id", "text"])
    assert kept.equals(pq.read_table(drop).select(["id", "text"]))


def test_pii_tag_mode_counts_each_kind_and_leaves_the_text(cli: Cli, web: Path, tmp_path: Path) -> None:
    drop, tag = tmp_path / "drop", tmp_path / "tag"
    run(cli, "pii", web, drop, "--mode", "drop")
    run(cli, "pii", web, tag, "--mode", "tag")
    assert_nothing_dropped(web, tag)
    rows = read_rows(tag)
    assert [r["text"] for r in rows] == [r["text"] for r in read_rows(web)]
    for r in rows:
        per_kind = {k: r[f"pii_{k}_count"] for k in KINDS}
        assert r["pii_count"] == sum(per_kind.values())
        assert r["pii_kinds"] == [k for k in KINDS if per_kind[k]]
    for i, d in dropped(drop).items():
        row = next(r for r in rows if r["id"] == i)
        assert d["detail"] == ",".join(f"{k}={row[f'pii_{k}_count']}" for k in row["pii_kinds"])
    assert all(any(r[f"pii_{k}_count"] for r in rows) for k in KINDS)

    assert read_manifest(tag)["summary"]["would_drop"] == read_manifest(drop)["totals"]["dropped"]
    assert filtered(cli, tag, tmp_path / "kept", "pii_count == 0") == ids(drop)
    # One kind only: what drop mode keeps with --kinds credit_card.
    run(cli, "pii", web, tmp_path / "cards", "--mode", "drop", "--kinds", "credit_card")
    assert filtered(cli, tag, tmp_path / "no-cards", "pii_credit_card_count == 0") == ids(tmp_path / "cards")


def test_exact_dedup_tag_mode_names_the_first_occurrence(cli: Cli, web: Path, tmp_path: Path) -> None:
    drop, tag = tmp_path / "drop", tmp_path / "tag"
    run(cli, "dedup", "exact", web, drop)
    run(cli, "dedup", "exact", web, tag, "--mode", "tag")
    assert_nothing_dropped(web, tag)
    rows = read_rows(tag)
    repeats = {i: d["detail"] for i, d in dropped(drop).items()}
    assert repeats
    assert {r["id"]: r["exact_cluster"] for r in rows if r["exact_duplicate"]} == repeats
    firsts = set(repeats.values())
    for r in rows:
        if r["id"] in firsts:
            assert r["exact_cluster"] == r["id"] and not r["exact_duplicate"]
        elif r["id"] not in repeats:
            assert r["exact_cluster"] is None and not r["exact_duplicate"]
    assert read_manifest(tag)["summary"]["would_drop"] == {"exact_duplicate": len(repeats)}
    assert filtered(cli, tag, tmp_path / "kept", "not exact_duplicate") == ids(drop)


def test_minhash_tag_mode_marks_duplicates_and_keeps_every_row(cli: Cli, web: Path, tmp_path: Path) -> None:
    drop, tag = tmp_path / "drop", tmp_path / "tag"
    run(cli, "dedup", "minhash", web, drop)
    run(cli, "dedup", "minhash", web, tag, "--mode", "tag")
    assert_nothing_dropped(web, tag)
    rows = read_rows(tag)
    near = {i: d["detail"] for i, d in dropped(drop).items()}
    assert near
    assert {r["id"]: r["minhash_cluster"] for r in rows if r["minhash_duplicate"]} == near
    # The kept rows carry the same cluster ids in both modes.
    kept_clusters = {r["id"]: r["minhash_cluster"] for r in read_rows(drop)}
    assert {r["id"]: r["minhash_cluster"] for r in rows if r["id"] in kept_clusters} == kept_clusters
    assert read_manifest(tag)["summary"]["would_drop"] == {"near_duplicate": len(near)}
    assert read_manifest(tag)["summary"]["duplicates"] == read_manifest(drop)["summary"]["duplicates"]
    assert filtered(cli, tag, tmp_path / "kept", "not minhash_duplicate") == ids(drop)


@pytest.mark.parametrize(
    "command", [("heuristics",), ("pii",), ("dedup", "exact"), ("dedup", "minhash"), ("decontaminate",)]
)
def test_every_filtering_stage_offers_tag_mode_in_its_help(cli: Cli, command: tuple[str, ...]) -> None:
    result = cli(*command, "--help")
    assert result.exit_code == 0 and "--mode" in result.output and "tag" in result.output


def test_tag_mode_refuses_to_overwrite_a_column(cli: Cli, tmp_path: Path) -> None:
    table = pa.table({"id": ["a", "b"], "text": ["one two", "one two"], "exact_duplicate": [True, False]})
    write_shards(table, tmp_path / "in", 10)
    assert_user_error(
        cli("dedup", "exact", tmp_path / "in", tmp_path / "o", "--mode", "tag"), 2, "'exact_duplicate'"
    )
    write_shards(table.append_column("h_reason", pa.array(["x", None])), tmp_path / "in2", 10)
    assert_user_error(cli("heuristics", tmp_path / "in2", tmp_path / "o2", "--mode", "tag"), 2, "'h_reason'")
