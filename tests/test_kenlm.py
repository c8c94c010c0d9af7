"""KenLM: a model trained here with the real lmplz/build_binary (built by `make kenlm-tools`), scored the
cc_net way, bucketed at exact global percentiles, and the bad inputs of issue 5. Nothing is mocked and no
model is checked in."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from conftest import Cli, read_manifest, read_rows
from factories import parquet_bytes, write_shards
from test_bad_input import assert_no_output, assert_user_error
from typer.testing import CliRunner

from thresher.cli.app import app
from thresher.pipelines.engine.errors import ThresherError
from thresher.pipelines.stages.perplexity.stage import KenLMPerplexityParams
from thresher.pipelines.stats.percentile_buckets import (
    assign_buckets,
    assign_group_buckets,
    exact_percentiles,
    save_runs,
)
from thresher.pipelines.stats.runs import kth_smallest
from thresher.pipelines.stats.runs import load_group_runs as load_runs
from thresher.pipelines.testing.sample_data import generate_web
from thresher.scorers.kenlm_model import load_sentencepiece, train_sentencepiece
from thresher.scorers.kenlm_text import document_lines, normalize_line
from thresher.scorers.kenlm_tools import find_tool


def thresher(*args: str | Path) -> None:
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Clean prose only (the sample generator's `clean` kind), from another seed than the scored set."""
    sample = generate_web(1200, seed=1)
    clean = sample.table.filter(pc.equal(sample.truth["kind"], "clean"))
    folder = tmp_path_factory.mktemp("reference")
    write_shards(clean, folder, rows_per_shard=300)
    return folder


@pytest.fixture(scope="module")
def kenlm_model(reference: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    for tool in ("lmplz", "build_binary"):
        try:
            find_tool(tool)
        except ThresherError as exc:
            pytest.fail(f"{exc} (`make test` builds them; a test run without them cannot check KenLM)")
    out = tmp_path_factory.mktemp("kenlm") / "model"
    thresher("lm", "train-kenlm", reference, out, "--order", "4", "--workers", "1", "-q")
    return out


@pytest.fixture(scope="module")
def web() -> tuple[pa.Table, list[str]]:
    sample = generate_web(1500, seed=0)
    return sample.table, sample.truth["kind"].to_pylist()


@pytest.fixture(scope="module")
def scored(
    web: tuple[pa.Table, list[str]], kenlm_model: Path, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    base = tmp_path_factory.mktemp("scored")
    write_shards(web[0], base / "in", rows_per_shard=500)
    thresher("perplexity", "kenlm", base / "in", base / "out", "--model", kenlm_model, "--workers", "1", "-q")
    return base / "out"


def test_training_writes_a_binary_model_tokenizer_and_metadata(kenlm_model: Path) -> None:
    import kenlm

    assert {p.name for p in kenlm_model.iterdir()} >= {"model.binary", "tokenizer.model", "kenlm.json"}
    meta = json.loads((kenlm_model / "kenlm.json").read_text())
    assert meta["order"] == 4 and set(meta["ngrams"]) == {"1", "2", "3", "4"}
    assert kenlm.Model(str(kenlm_model / "model.binary")).order == 4
    summary = read_manifest(kenlm_model)["summary"]
    assert summary["lines"] > 1000 and summary["tokens"] > summary["lines"]
    artifacts = {a["path"] for a in read_manifest(kenlm_model)["artifacts"]}
    assert artifacts == {"model.binary", "tokenizer.model", "kenlm.json"}
    # The work folder (token files, ARPA) is gone once the stage finished.
    assert not (kenlm_model / "_thresher" / "work").exists()


def test_kenlm_ppl_equals_kenlm_model_perplexity_on_the_same_tokens(
    kenlm_model: Path, tmp_path: Path
) -> None:
    import kenlm

    texts = [
        "The council approved the budget on Tuesday after a long debate.",
        "  Résidents of Oldcastle waited 12 years for the bridge…  ",  # accents, digits, unicode punct
        "Preheat the oven and whisk the eggs with the flour.",
        "zzqx vvkj",  # mostly out of vocabulary
        "First paragraph about the harvest.\n\nSecond paragraph: the mill reopened in 1987.",
    ]
    write_shards(pa.table({"id": [f"d{i}" for i in range(len(texts))], "text": texts}), tmp_path / "in", 10)
    thresher("perplexity", "kenlm", tmp_path / "in", tmp_path / "out", "--model", kenlm_model)
    thresher(
        "perplexity", "kenlm", tmp_path / "in", tmp_path / "out2", "--model", kenlm_model, "--buckets", ""
    )
    got = [r["kenlm_ppl"] for r in read_rows(tmp_path / "out")]
    assert got == [r["kenlm_ppl"] for r in read_rows(tmp_path / "out2")]
    assert "kenlm_bucket" not in read_rows(tmp_path / "out2")[0]

    model = kenlm.Model(str(kenlm_model / "model.binary"))
    sp = load_sentencepiece(kenlm_model / "tokenizer.model")
    for text, ppl in zip(texts, got, strict=True):
        lines = [" ".join(sp.encode(line, out_type=str)) for line in document_lines(text)]
        if len(lines) == 1:
            assert ppl == pytest.approx(model.perplexity(lines[0]), rel=1e-6, abs=1e-6)
        # Several lines: one perplexity from the summed log10 probabilities over all tokens (+1 </s> each).
        log10 = sum(model.score(line) for line in lines)
        tokens = sum(len(line.split()) + 1 for line in lines)
        assert ppl == pytest.approx(10 ** (-log10 / tokens), rel=1e-6, abs=1e-6)
    assert len(document_lines(texts[-1])) == 2


def test_clean_prose_lands_in_head_far_more_than_spam_and_boilerplate(
    scored: Path, web: tuple[pa.Table, list[str]]
) -> None:
    rows = read_rows(scored)
    kinds = dict(zip(web[0]["id"].to_pylist(), web[1], strict=True))

    def head_share(wanted: set[str]) -> float:
        buckets = [r["kenlm_bucket"] for r in rows if kinds[r["id"]] in wanted]
        return buckets.count("head") / len(buckets)

    clean, junk = head_share({"clean"}), head_share({"spam", "boilerplate"})
    assert clean > 0.3 and junk < 0.05, (clean, junk)
    assert clean - junk > 0.3


def test_buckets_cut_at_exact_global_percentiles(scored: Path) -> None:
    rows = read_rows(scored)
    ppl = np.array([r["kenlm_ppl"] for r in rows], dtype=np.float64)
    manifest = read_manifest(scored)
    c30, c60 = np.percentile(ppl, [30, 60])
    assert manifest["summary"]["cutoffs"] == [c30, c60]
    cutoffs = json.loads((scored / "_kenlm_ppl_cutoffs.json").read_text())
    assert cutoffs["cutoffs"] == [c30, c60] and cutoffs["documents"] == len(rows)
    expected = np.where(ppl < c30, "head", np.where(ppl < c60, "middle", "tail"))
    assert [r["kenlm_bucket"] for r in rows] == expected.tolist()
    assert manifest["summary"]["buckets"] == {"head": 450, "middle": 450, "tail": 600}
    assert [t["phase"] for t in manifest["tasks"]].count("cutoffs") == 1
    # The user's columns and row order are untouched; the shard set reads as plain Parquet.
    assert pq.read_table(scored).column_names == ["id", "text", "domain", "url", "kenlm_ppl", "kenlm_bucket"]


def test_same_output_with_one_or_two_workers_and_from_a_cutoff_file(
    scored: Path, kenlm_model: Path, tmp_path: Path
) -> None:
    source = Path(read_manifest(scored)["input"]["path"])
    thresher("perplexity", "kenlm", source, tmp_path / "two", "--model", kenlm_model, "--workers", "2", "-q")
    assert parquet_bytes(tmp_path / "two") == parquet_bytes(scored)
    # Cutoffs computed once, reused: one map phase, the same buckets.
    thresher(
        "perplexity", "kenlm", source, tmp_path / "file", "--model", kenlm_model, "-q",
        "--cutoffs-file", scored / "_kenlm_ppl_cutoffs.json",
    )  # fmt: skip
    assert parquet_bytes(tmp_path / "file") == parquet_bytes(scored)
    assert {t["phase"] for t in read_manifest(tmp_path / "file")["tasks"]} == {"score"}


def test_empty_documents_get_a_null_score_and_are_counted(kenlm_model: Path, tmp_path: Path) -> None:
    texts = ["The harvest was good this year.", "", None, " \n\t \n", "The mill is by the river."]
    write_shards(pa.table({"id": list("abcde"), "text": pa.array(texts, pa.string())}), tmp_path / "in", 10)
    thresher("perplexity", "kenlm", tmp_path / "in", tmp_path / "out", "--model", kenlm_model, "-q")
    rows = read_rows(tmp_path / "out")
    assert [r["kenlm_ppl"] is None for r in rows] == [False, True, True, True, False]
    assert [r["kenlm_bucket"] for r in rows][1:4] == [None, None, None]
    summary = read_manifest(tmp_path / "out")["summary"]
    assert summary["empty"] == 3 and summary["scored"] == 2
    assert sum(summary["buckets"].values()) == 2


def test_oov_only_and_long_documents_score(kenlm_model: Path, tmp_path: Path) -> None:
    clean = "The regional council approved the new budget for the bridge project on Friday."
    texts = [clean, "这是 完全 不同 的 文字 内容", "ЖЖЖ щщщ ъъъ", " ".join([clean] * 400)]
    write_shards(pa.table({"id": list("abcd"), "text": texts}), tmp_path / "in", 10)
    thresher("perplexity", "kenlm", tmp_path / "in", tmp_path / "out", "--model", kenlm_model, "-q")
    ppl = [r["kenlm_ppl"] for r in read_rows(tmp_path / "out")]
    assert all(np.isfinite(ppl))
    assert ppl[1] > 10 * ppl[0] and ppl[2] > 10 * ppl[0]
    assert ppl[3] < ppl[1]


def test_missing_or_broken_model_is_a_one_line_error(cli: Cli, kenlm_model: Path, tmp_path: Path) -> None:
    write_shards(pa.table({"id": ["a"], "text": ["some text"]}), tmp_path / "in", 10)
    out = tmp_path / "out"
    result = cli("perplexity", "kenlm", tmp_path / "in", out, "--model", tmp_path / "nope")
    assert_user_error(result, 1, "--model", "no such file or folder")
    (tmp_path / "junk.binary").write_text("not a model\n")
    shutil.copy(kenlm_model / "tokenizer.model", tmp_path / "tokenizer.model")
    result = cli("perplexity", "kenlm", tmp_path / "in", out, "--model", tmp_path / "junk.binary")
    assert_user_error(result, 1, "junk.binary", "not a KenLM model")
    result = cli("perplexity", "kenlm", tmp_path / "in", out, "--model", tmp_path)
    assert_user_error(result, 1, "no model.binary")
    assert_no_output(out)


def test_tokenizer_model_mismatch_is_a_one_line_error(cli: Cli, kenlm_model: Path, tmp_path: Path) -> None:
    # A tokenizer trained on other text: its pieces are not the KenLM model's words.
    other = [f"цифра {i} слово {i * 7} другое {i % 13} текст" for i in range(3000)]
    train_sentencepiece(
        iter(other), tmp_path / "other.model", vocab_size=300, sample_lines=10_000, character_coverage=1.0,
        threads=1, seed=0,
    )  # fmt: skip
    write_shards(pa.table({"id": ["a"], "text": ["some text"]}), tmp_path / "in", 10)
    model_file = kenlm_model / "model.binary"
    result = cli("perplexity", "kenlm", tmp_path / "in", tmp_path / "o", "--model", model_file, "--tokenizer",
                 tmp_path / "other.model")  # fmt: skip
    assert_user_error(result, 1, "not the tokenizer")
    # Without the training metadata next to it, the vocabulary check still catches it.
    shutil.copy(model_file, tmp_path / "bare.binary")
    result = cli("perplexity", "kenlm", tmp_path / "in", tmp_path / "o", "--model", tmp_path / "bare.binary",
                 "--tokenizer", tmp_path / "other.model")  # fmt: skip
    assert_user_error(result, 1, "does not match", "vocabulary")


def test_bad_bucket_params_and_missing_tools_are_one_line_errors(
    cli: Cli, kenlm_model: Path, reference: Path, tmp_path: Path
) -> None:
    write_shards(pa.table({"id": ["a"], "text": ["some text"]}), tmp_path / "in", 10)
    args = ("perplexity", "kenlm", tmp_path / "in", tmp_path / "o", "--model", kenlm_model)
    assert_user_error(cli(*args, "--percentiles", "30"), 2, "3 buckets need 2 percentiles")
    assert_user_error(cli(*args, "--percentiles", "60,30"), 2, "increase strictly")
    (tmp_path / "cut.json").write_text("{}")
    assert_user_error(cli(*args, "--cutoffs-file", tmp_path / "cut.json"), 1, "not a thresher cutoff file")
    result = cli("lm", "train-kenlm", reference, tmp_path / "k", "--kenlm-bin", tmp_path)
    assert_user_error(result, 1, "lmplz", "make kenlm-tools")
    assert_no_output(tmp_path / "k")


def test_normalisation_follows_cc_net() -> None:
    assert normalize_line("  Héllo\tWÖRLD 2024 — «ok»…  ") == 'helloworld 0000  -  "ok"...'
    assert normalize_line("Ｔｅｓｔ：１２３！") == "ｔｅｓｔ:000!"  # noqa: RUF001  (full-width on purpose)
    assert normalize_line("\x00\x1f") == ""
    assert document_lines("a\n\n  \nB 1\n") == ["a", "b 0"]
    assert document_lines(None) == []


def test_exact_percentiles_match_numpy_over_many_runs() -> None:
    rng = np.random.default_rng(3)
    for trial in range(50):
        runs = [np.sort(rng.lognormal(1, 2, rng.integers(0, 40))) for _ in range(rng.integers(1, 8))]
        if trial % 2:
            runs = [np.sort(np.round(r) - 3) for r in runs]  # ties and negative values
        values = np.concatenate(runs)
        if not len(values):
            continue
        ps = [0.0, 0.5, 30.0, 60.0, 99.0, 100.0]
        assert exact_percentiles(runs, ps) == np.percentile(values, ps).tolist()
        k = int(rng.integers(0, len(values)))
        assert kth_smallest(runs, k) == np.sort(values)[k]
    labels = assign_buckets(np.array([1.0, 2.0, np.nan, 9.0]), [2.0, 5.0], ["head", "middle", "tail"])
    assert labels.to_pylist() == ["head", "middle", None, "tail"]


def test_default_cuts_are_cc_nets_and_groups_are_opt_in() -> None:
    params = KenLMPerplexityParams(model="m")
    assert params.buckets == ["head", "middle", "tail"] and params.percentiles == [30.0, 60.0]
    assert "cc_net's code default" in KenLMPerplexityParams.model_fields["percentiles"].description
    assert params.group_column is None and params.group_models == []
    grouped = KenLMPerplexityParams(group_column="lang", group_models=["en=a", "de = b"])
    assert grouped.model is None and grouped.group_model_map() == {"en": "a", "de": "b"}


def test_runs_sorted_within_groups_give_each_groups_percentiles(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    scores = rng.lognormal(2, 1, 300)
    scores[::17] = np.nan
    groups = rng.choice(np.array(["en", "de", None], dtype=object), 300).tolist()
    save_runs(tmp_path / "runs.npy", scores, groups)
    runs = load_runs(tmp_path / "runs.npy")
    assert sorted(runs) == ["de", "en"]  # a null group has no bucket, so no run
    for name, run in runs.items():
        mine = scores[np.array([g == name for g in groups]) & np.isfinite(scores)]
        assert run.tolist() == np.sort(mine).tolist()
        assert exact_percentiles([run], [30, 60]) == np.percentile(mine, [30, 60]).tolist()
    save_runs(tmp_path / "all.npy", scores)
    assert load_runs(tmp_path / "all.npy")[None].tolist() == np.sort(scores[np.isfinite(scores)]).tolist()
    labels = assign_group_buckets(
        np.array([1.0, 5.0, 5.0, 5.0, np.nan]), ["en", "en", "de", None, "en"],
        {"en": [2.0, 4.0], "de": [6.0, 8.0]}, ["head", "middle", "tail"],
    )  # fmt: skip
    assert labels.to_pylist() == ["head", "tail", "head", None, None]


PROSE = {"clean", "near_dup", "exact_dup", "long"}


@pytest.fixture(scope="module")
def by_lang(web: tuple[pa.Table, list[str]], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The web sample with a `lang` column: prose and junk as two "languages", a few rows without one."""
    table, kinds = web
    lang = ["prose" if k in PROSE else "junk" for k in kinds]
    for i in range(0, len(lang), 97):
        lang[i] = None
    folder = tmp_path_factory.mktemp("by-lang") / "in"
    write_shards(table.append_column("lang", pa.array(lang, pa.string())), folder, rows_per_shard=500)
    return folder


def test_group_column_cuts_each_group_at_its_own_percentiles(
    by_lang: Path, kenlm_model: Path, scored: Path, cli: Cli, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    thresher(
        "perplexity", "kenlm", by_lang, out, "--model", kenlm_model, "--group-column", "lang", "-w", "2", "-q"
    )
    rows = read_rows(out)
    # Same model, so the same scores as the ungrouped run; only the cuts differ.
    assert [r["kenlm_ppl"] for r in rows] == [r["kenlm_ppl"] for r in read_rows(scored)]
    cutoffs = json.loads((out / "_kenlm_ppl_cutoffs.json").read_text())
    assert cutoffs["group_column"] == "lang" and cutoffs["cutoffs"] == []
    summary = read_manifest(out)["summary"]
    for group in ("prose", "junk"):
        ppl = np.array([r["kenlm_ppl"] for r in rows if r["lang"] == group])
        c30, c60 = np.percentile(ppl, [30, 60])
        assert cutoffs["groups"][group] == [c30, c60] == summary["cutoffs"][group]
        assert cutoffs["group_documents"][group] == len(ppl)
        expected = np.where(ppl < c30, "head", np.where(ppl < c60, "middle", "tail")).tolist()
        assert [r["kenlm_bucket"] for r in rows if r["lang"] == group] == expected
        assert summary["group_buckets"][group] == {b: expected.count(b) for b in ("head", "middle", "tail")}
    # Cut globally, junk almost never reaches head; cut per group, its best 30% do.
    junk = [r["kenlm_bucket"] for r in rows if r["lang"] == "junk"]
    assert junk.count("head") / len(junk) > 0.25
    # No group, no bucket (cc_net's "all"), counted.
    unlabelled = [r for r in rows if r["lang"] is None]
    assert unlabelled and all(r["kenlm_bucket"] is None and r["kenlm_ppl"] for r in unlabelled)
    assert summary["unbucketed"] == {"no_group": len(unlabelled), "no_cutoffs": 0}
    # The grouped cutoff file is reused only with the same --group-column.
    again = tmp_path / "again"
    thresher(
        "perplexity", "kenlm", by_lang, again, "--model", kenlm_model, "--group-column", "lang", "-q",
        "--cutoffs-file", out / "_kenlm_ppl_cutoffs.json",
    )  # fmt: skip
    assert parquet_bytes(again) == parquet_bytes(out)
    result = cli("perplexity", "kenlm", by_lang, tmp_path / "x", "--model", kenlm_model,
                 "--cutoffs-file", out / "_kenlm_ppl_cutoffs.json")  # fmt: skip
    assert_user_error(result, 1, "cutoffs per lang", "--group-column lang")


def test_group_models_score_each_group_with_its_own_model(
    by_lang: Path, kenlm_model: Path, reference: Path, cli: Cli, tmp_path: Path
) -> None:
    other = tmp_path / "bigram"
    thresher("lm", "train-kenlm", reference, other, "--order", "2", "--workers", "1", "-q")
    alone = tmp_path / "alone"
    thresher("perplexity", "kenlm", by_lang, alone, "--model", other, "--buckets", "", "-q")
    base = tmp_path / "base"
    thresher("perplexity", "kenlm", by_lang, base, "--model", kenlm_model, "--buckets", "", "-q")
    out = tmp_path / "out"
    thresher(
        "perplexity", "kenlm", by_lang, out, "--model", kenlm_model, "--group-column", "lang",
        "--group-models", f"junk={other}", "-q",
    )  # fmt: skip
    rows = read_rows(out)
    for row, with_other, with_base in zip(rows, read_rows(alone), read_rows(base), strict=True):
        expected = with_other if row["lang"] == "junk" else with_base
        assert row["kenlm_ppl"] == expected["kenlm_ppl"]
    assert any(
        a["kenlm_ppl"] != b["kenlm_ppl"] for a, b in zip(read_rows(alone), read_rows(base), strict=True)
    )
    # Without --model, a row of no listed group has no score, counted as such.
    only = tmp_path / "only"
    thresher(
        "perplexity", "kenlm", by_lang, only, "--group-column", "lang", "-q",
        "--group-models", f"junk={other},prose={kenlm_model}",
    )  # fmt: skip
    rows = read_rows(only)
    unlabelled = [r for r in rows if r["lang"] is None]
    assert all(r["kenlm_ppl"] is None and r["kenlm_bucket"] is None for r in unlabelled)
    summary = read_manifest(only)["summary"]
    assert summary["no_model"] == len(unlabelled) and summary["unbucketed"]["no_group"] == 0
    assert sum(summary["buckets"].values()) == len(rows) - len(unlabelled)
    # Usage errors are one line.
    args = ("perplexity", "kenlm", by_lang, tmp_path / "e")
    assert_user_error(cli(*args, "--group-models", f"junk={other}"), 2, "--group-models needs --group-column")
    assert_user_error(cli(*args, "--group-column", "lang", "--group-models", "junk"), 2, "GROUP=MODEL")
    assert_user_error(cli(*args, "--group-column", "lang"), 2, "give --model")
    missing = cli(*args, "--group-column", "lang", "--group-models", f"junk={tmp_path / 'nope'}")
    assert_user_error(missing, 1, "--group-models junk=", "no such file or folder")
    assert_no_output(tmp_path / "e")
