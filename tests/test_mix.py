"""`thresher mix`: sampling the sample web set's domains to weights and a budget, checked by recounting
the output independently of the stage."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from conftest import Cli, read_manifest, read_rows
from factories import parquet_bytes
from test_bad_input import assert_no_output, assert_user_error

REPO = Path(__file__).resolve().parents[1]
WEB = REPO / "sample_data" / "web"
# Far from the data's own shares (news 26%, code 10% of words), and more code than there is at 400k words.
WEIGHTS = {"news": 0.1, "science": 0.2, "recipes": 0.3, "forum": 0.15, "code": 0.25}


def write_weights(path: Path, weights: dict[str, float], wrapped: bool = True) -> Path:
    path.write_text(json.dumps({"method": "test", "weights": weights} if wrapped else weights))
    return path


def mix(cli: Cli, out: Path, *args: str | Path, workers: str = "1") -> None:
    result = cli("mix", WEB, out, *args, "-w", workers, "-q")
    assert result.exit_code == 0, result.output


def proportions(counts: Counter[str]) -> dict[str, float]:
    total = sum(counts.values())
    return {d: n / total for d, n in counts.items()}


@pytest.fixture(scope="module")
def token_mix(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from typer.testing import CliRunner

    from thresher.cli.app import app

    tmp = tmp_path_factory.mktemp("mix")
    weights = write_weights(tmp / "domain_weights.json", WEIGHTS)
    out = tmp / "out"
    args = ["mix", str(WEB), str(out), "--weights", str(weights), "--tokens", "400000", "-w", "2", "-q"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    return out


def test_token_proportions_are_within_two_points_of_the_weights(token_mix: Path) -> None:
    words: Counter[str] = Counter()
    for row in read_rows(token_mix):
        words[row["domain"]] += len(row["text"].split())
    achieved = proportions(words)
    for domain, weight in WEIGHTS.items():
        assert abs(achieved[domain] - weight) < 0.02, (domain, achieved[domain], weight)
    assert sum(words.values()) == pytest.approx(400_000, rel=0.02)
    summary = read_manifest(token_mix)["summary"]
    assert summary["unit"] == "tokens" and summary["token_count"] == "whitespace-separated words"
    for domain, figures in summary["domains"].items():
        assert figures["achieved"] == words[domain]
        assert figures["requested_weight"] == pytest.approx(WEIGHTS[domain])
        assert figures["achieved_weight"] == pytest.approx(achieved[domain], abs=1e-6)
    assert summary["max_weight_error"] < 0.02


def test_a_domain_that_runs_out_is_repeated_and_reported(token_mix: Path) -> None:
    summary = read_manifest(token_mix)["summary"]
    assert summary["ran_out"] == ["code"]  # 100k words wanted, about 78.5k there
    code = summary["domains"]["code"]
    assert code["ran_out"] and code["uses_per_row"] > 1
    rows = read_rows(token_mix)
    ids = [r["id"] for r in rows]
    assert len(ids) == len(set(ids)) == summary["rows_written"]
    copies = [r for r in rows if r["mix_copy"] > 0]
    assert len(copies) == summary["repeated_rows"] > 0
    assert {r["domain"] for r in copies} == {"code"}
    assert all(r["id"].endswith(f"#{r['mix_copy']}") for r in copies)
    # Every code row is used at least once before any is used twice (with replacement only when out).
    source_code = sum(
        1 for p in WEB.glob("*.parquet") for d in pq.read_table(p)["domain"].to_pylist() if d == "code"
    )
    assert sum(1 for r in rows if r["domain"] == "code" and r["mix_copy"] == 0) == source_code


def test_rows_are_accounted_for(token_mix: Path) -> None:
    manifest = read_manifest(token_mix)
    totals = manifest["totals"]
    assert totals["rows_in"] == 3000 == totals["rows_out"] + sum(totals["dropped"].values())
    assert set(totals["dropped"]) == {"not_sampled"}
    dropped = [
        row
        for p in sorted((token_mix / "_dropped").glob("*.parquet"))
        for row in pq.read_table(p).to_pylist()
    ]
    kept = {r["id"] for r in read_rows(token_mix) if r["mix_copy"] == 0}
    assert len(dropped) + len(kept) == 3000 and not kept & {r["id"] for r in dropped}


def test_rows_budget_and_unweighted_domains(tmp_path: Path, cli: Cli) -> None:
    weights = {"news": 0.5, "science": 0.3, "code": 0.2}  # no forum, no recipes
    mix(
        cli,
        tmp_path / "out",
        "--weights",
        write_weights(tmp_path / "w.json", weights, wrapped=False),
        "--rows",
        "900",
    )
    rows = read_rows(tmp_path / "out")
    assert len(rows) == 900
    achieved = proportions(Counter(r["domain"] for r in rows))
    assert achieved == pytest.approx(weights, abs=0.02)
    manifest = read_manifest(tmp_path / "out")
    assert manifest["summary"]["unit"] == "rows"
    assert manifest["summary"]["unweighted_domains"] == ["forum", "recipes"]
    # Every row of the domains without a weight, as the sample set holds them.
    domains = Counter(r["domain"] for r in read_rows(WEB))
    assert manifest["totals"]["dropped"]["unweighted_domain"] == domains["forum"] + domains["recipes"]


def test_same_seed_same_bytes_with_any_workers_and_another_seed_another_sample(
    tmp_path: Path, cli: Cli
) -> None:
    weights = write_weights(tmp_path / "w.json", WEIGHTS)
    mix(cli, tmp_path / "a", "--weights", weights, "--tokens", "100000", workers="1")
    mix(cli, tmp_path / "b", "--weights", weights, "--tokens", "100000", workers="2")
    assert parquet_bytes(tmp_path / "a") == parquet_bytes(tmp_path / "b")
    mix(cli, tmp_path / "c", "--weights", weights, "--tokens", "100000", "--seed", "1")
    assert {r["id"] for r in read_rows(tmp_path / "a")} != {r["id"] for r in read_rows(tmp_path / "c")}


def test_tokens_counted_with_a_tokenizer(tmp_path: Path, cli: Cli) -> None:
    from thresher.scorers.proxy_lm import load_tokenizer, train_tokenizer

    texts = [t for p in sorted(WEB.glob("*.parquet")) for t in pq.read_table(p)["text"].to_pylist()[:100]]
    train_tokenizer(texts, 400).save(str(tmp_path / "tokenizer.json"))
    weights = write_weights(tmp_path / "w.json", WEIGHTS)
    args = ("--weights", weights, "--tokens", "300000", "--tokenizer", tmp_path / "tokenizer.json")
    mix(cli, tmp_path / "out", *args)
    tokenizer = load_tokenizer(tmp_path / "tokenizer.json")
    rows = read_rows(tmp_path / "out")
    counts: Counter[str] = Counter()
    for row, encoded in zip(rows, tokenizer.encode_batch([r["text"] for r in rows]), strict=True):
        counts[row["domain"]] += len(encoded.ids)
    assert proportions(counts) == pytest.approx(WEIGHTS, abs=0.02)
    summary = read_manifest(tmp_path / "out")["summary"]
    assert summary["token_count"].startswith("tokenizer ")
    assert {d: f["achieved"] for d, f in summary["domains"].items()} == dict(counts)


def test_mix_reads_doremi_style_weights_and_changed_weights_rerun(tmp_path: Path, cli: Cli) -> None:
    weights = write_weights(tmp_path / "domain_weights.json", WEIGHTS)
    mix(cli, tmp_path / "out", "--weights", weights, "--rows", "500")
    first = read_manifest(tmp_path / "out")["summary"]["domains"]["news"]["achieved"]
    write_weights(weights, {**WEIGHTS, "news": 0.6})
    mix(cli, tmp_path / "out", "--weights", weights, "--rows", "500")
    assert read_manifest(tmp_path / "out")["summary"]["domains"]["news"]["achieved"] > first


@pytest.mark.parametrize(
    ("args", "code", "fragment"),
    [
        (("--tokens", "100", "--rows", "10"), 2, "give exactly one budget"),
        (("--tokens", "100"), 2, "w.json: no such file"),
        (("--rows", "10", "--tokenizer", "x.json"), 2, "--tokenizer counts tokens"),
    ],
)
def test_bad_usage_is_one_line(
    tmp_path: Path, cli: Cli, args: tuple[str, ...], code: int, fragment: str
) -> None:
    result = cli("mix", WEB, tmp_path / "out", "--weights", tmp_path / "w.json", *args, "-q")
    assert_user_error(result, code, fragment)
    assert_no_output(tmp_path / "out")


def test_weight_on_a_domain_without_data_is_an_error(tmp_path: Path, cli: Cli) -> None:
    weights = write_weights(tmp_path / "w.json", {**WEIGHTS, "poetry": 0.1})
    result = cli("mix", WEB, tmp_path / "out", "--weights", weights, "--rows", "100", "-w", "1", "-q")
    assert_user_error(result, 1, "domain 'poetry' has weight", "no rows in column 'domain'")
    assert_no_output(tmp_path / "out")


def test_a_weights_file_that_is_not_weights_is_an_error(tmp_path: Path, cli: Cli) -> None:
    (tmp_path / "w.json").write_text('{"weights": {"news": -1}}')
    result = cli("mix", WEB, tmp_path / "out", "--weights", tmp_path / "w.json", "--rows", "100", "-q")
    assert_user_error(result, 1, "weight of 'news' is -1")
