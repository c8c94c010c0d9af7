"""The filter stage: the --where language, the exact global top-fraction cutoff, determinism, bad input."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import Cli, read_manifest, read_rows
from factories import parquet_bytes, write_shards
from test_bad_input import assert_no_output, assert_user_error

from thresher.pipelines.stages.filter.where import WhereSyntaxError, parse_where
from thresher.pipelines.stats.order import tie_hashes
from thresher.pipelines.stats.top_fraction import keep_count

TABLE = pa.table(
    {
        "q": [0.1, 0.6, None, 0.9, 0.5],
        "lang": ["en", "de", "en", None, "fr"],
        "ok": [True, False, True, True, False],
        "n": [1, 2, 3, 4, 5],
    }
)


@pytest.mark.parametrize(
    ("condition", "expected"),
    [
        ("q >= 0.5", [False, True, False, True, True]),
        ("q >= 0.5 and lang == 'en'", [False, False, False, False, False]),
        ('q > 0.5 or lang = "en"', [True, True, True, True, False]),
        ("not q < 0.5", [False, True, False, True, True]),
        ("NOT (q < 0.5) AND n != 5", [False, True, False, True, False]),
        ("lang in ('en', 'fr')", [True, False, True, False, True]),
        ("lang not in ('en')", [False, True, False, False, True]),
        ("lang is null", [False, False, False, True, False]),
        ("lang is not null and q <> 0.1", [False, True, False, False, True]),
        ("ok", [True, False, True, True, False]),
        ("ok and n >= 3", [False, False, True, True, False]),
        ("0.5 <= q", [False, True, False, True, True]),
        ("n > -1 and n < 2.5e0", [True, True, False, False, False]),
        ("`n` == 4", [False, False, False, True, False]),
    ],
)
def test_where_conditions(condition: str, expected: list[bool]) -> None:
    assert parse_where(condition).mask(TABLE).to_pylist() == expected


@pytest.mark.parametrize(
    ("condition", "message"),
    [
        ("", "empty condition"),
        ("q >=", "at column 5, found the end"),
        ("q >= 0.5 and", "found the end"),
        ("(q > 1", "expected ')'"),
        ("q >> 1", "found '>'"),
        ("q $ 1", "unexpected '$' at column 3"),
        ("q in (lang)", "expected a number or a quoted string"),
        ("1", "needs a column"),
        ("__import__('os').system('true')", "unexpected '.' at column 17"),
        ("q > 1 lang", "expected 'and', 'or' or the end at column 7, found 'lang'"),
        ("q == 1; drop", "unexpected ';'"),
    ],
)
def test_where_syntax_errors(condition: str, message: str) -> None:
    with pytest.raises(WhereSyntaxError, match=re.escape(message)):
        parse_where(condition)


def test_where_checks_columns_and_types() -> None:
    assert parse_where("q > 0 and lang == 'en'").columns == ("q", "lang")
    with pytest.raises(Exception, match="uses column 'zz', which is not there"):
        parse_where("zz > 1").check(TABLE.schema, "x.parquet")
    with pytest.raises(Exception, match="does not fit the column types"):
        parse_where("lang == 1").check(TABLE.schema, "x.parquet")
    with pytest.raises(Exception, match="not true/false"):
        parse_where("n").check(TABLE.schema, "x.parquet")


# ---------------------------------------------------------------------------------------------------------
# The stage


def scored_corpus(directory: Path, rows: int = 6000, shards: int = 6, seed: int = 0) -> pa.Table:
    rng = np.random.default_rng(seed)
    score = np.round(rng.random(rows), 2)  # about 100 distinct values: plenty of ties at any cutoff
    score[rng.random(rows) < 0.02] = np.nan
    table = pa.table(
        {
            "id": [f"doc-{i:06d}" for i in range(rows)],
            "text": [f"text {i}" for i in range(rows)],
            "quality_score": pa.array(score, pa.float64(), from_pandas=True),
            "lang": rng.choice(["en", "de", "fr"], rows).tolist(),
        }
    )
    write_shards(table, directory, rows_per_shard=rows // shards)
    return table


def test_top_fraction_keeps_the_exact_best_rows_with_ties_by_id_hash(cli: Cli, tmp_path: Path) -> None:
    table = scored_corpus(tmp_path / "in")
    out = tmp_path / "out"
    result = cli("filter", tmp_path / "in", out, "--top-fraction", "0.1", "-w", "1", "-q", "--seed", "5")
    assert result.exit_code == 0, result.output

    kept = read_rows(out)
    # Null scores have no rank: the fraction is of the scored rows, exactly.
    scored = table["quality_score"].drop_null()
    keep = keep_count(0.1, len(scored))
    assert len(kept) == keep and len(scored) < 6000
    # Reference: sort every row by (score desc, seeded id hash), nulls last, and take the first `keep`.
    scores = np.nan_to_num(table["quality_score"].to_numpy(zero_copy_only=False), nan=-np.inf)
    ties = tie_hashes(table["id"], seed=5).astype(np.uint64)
    order = np.lexsort((ties, -scores))
    expected = set(table["id"].take(pa.array(order[:keep])).to_pylist())
    assert {r["id"] for r in kept} == expected
    # Kept rows stay in input order, with every input column.
    assert [r["id"] for r in kept] == sorted(r["id"] for r in kept)
    assert set(kept[0]) == set(table.column_names)

    reasons = pq.read_table(out / "_dropped")["reason"].to_pylist()
    assert reasons.count("no_score") == 6000 - len(scored)
    assert reasons.count("below_top_fraction") == len(scored) - keep
    summary = read_manifest(out)["summary"]
    assert summary["keep_rows"] == keep and summary["eligible_rows"] == 6000
    assert summary["scored_rows"] == len(scored)
    assert summary["cutoff_score"] == min(r["quality_score"] for r in kept)
    assert summary["score_quantiles"]["0.5"] == pytest.approx(
        np.nanmedian(scores[np.isfinite(scores)]), abs=0.02
    )


def test_top_fraction_is_byte_identical_with_one_or_two_workers(cli: Cli, tmp_path: Path) -> None:
    scored_corpus(tmp_path / "in", rows=3000, shards=4, seed=1)
    outs = []
    for workers in ("1", "2"):
        out = tmp_path / f"out-{workers}"
        args = ("--top-fraction", "0.25", "--where", "lang != 'fr'", "-w", workers, "-q")
        assert cli("filter", tmp_path / "in", out, *args).exit_code == 0
        outs.append(parquet_bytes(out))
    assert outs[0] == outs[1]


def test_where_and_top_fraction_together_and_ascending(cli: Cli, tmp_path: Path) -> None:
    table = scored_corpus(tmp_path / "in", rows=2000, shards=2)
    out = tmp_path / "out"
    args = ("--where", "lang == 'en' and quality_score is not null", "--top-fraction", "0.5", "--ascending")
    assert cli("filter", tmp_path / "in", out, *args, "-w", "1", "-q").exit_code == 0
    rows = table.to_pylist()
    eligible = [r for r in rows if r["lang"] == "en" and r["quality_score"] is not None]
    kept = read_rows(out)
    assert len(kept) == keep_count(0.5, len(eligible))
    assert all(r["lang"] == "en" for r in kept)
    # Lowest scores kept: every kept score is <= every dropped eligible score.
    kept_ids = {r["id"] for r in kept}
    assert max(r["quality_score"] for r in kept) <= min(
        r["quality_score"] for r in eligible if r["id"] not in kept_ids
    )
    reasons = pq.read_table(out / "_dropped")["reason"].to_pylist()
    assert reasons.count("where") == len(rows) - len(eligible)
    assert reasons.count("below_top_fraction") == len(eligible) - len(kept)


def test_where_only_is_a_single_map_phase(cli: Cli, tmp_path: Path) -> None:
    scored_corpus(tmp_path / "in", rows=1000, shards=2)
    out = tmp_path / "out"
    assert (
        cli("filter", tmp_path / "in", out, "--where", "quality_score >= 0.5", "-w", "1", "-q").exit_code == 0
    )
    assert all(r["quality_score"] >= 0.5 for r in read_rows(out))
    manifest = read_manifest(out)
    assert {t["phase"] for t in manifest["tasks"]} == {"filter"}
    dropped = pq.read_table(out / "_dropped").to_pylist()
    assert {(r["reason"], r["detail"]) for r in dropped} == {("where", "quality_score >= 0.5")}
    assert manifest["totals"]["rows_in"] == manifest["totals"]["rows_out"] + len(dropped) == 1000


def test_bad_filter_input_is_a_one_line_error(cli: Cli, tmp_path: Path) -> None:
    write_shards(pa.table({"id": ["a", "b"], "text": ["x", "y"], "n": [1, 2]}), tmp_path / "in", 10)
    src, out = tmp_path / "in", tmp_path / "out"
    assert_user_error(cli("filter", src, out, "--top-fraction", "0.5"), 2, "no score column 'quality_score'")
    assert_user_error(cli("filter", src, out, "--where", "quality_score > 0.5"), 2, "column 'quality_score'")
    assert_user_error(cli("filter", src, out, "--where", "n >"), 2, "--where", "found the end")
    assert_user_error(cli("filter", src, out, "--where", "text > 1"), 2, "does not fit the column types")
    assert_user_error(cli("filter", src, out, "--top-fraction", "0.5", "--by", "text"), 2, "not a number")
    assert_user_error(cli("filter", src, out, "--top-fraction", "1.5"), 2, "--top-fraction")
    assert_user_error(cli("filter", src, out), 2, "--where CONDITION and/or --top-fraction")
    assert_no_output(out)
