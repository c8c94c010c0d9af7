"""fastText quality classifier: reproducible training, train and score stages end to end, language ID,
and one-line errors. Every model here is trained in the test on generated text; nothing is mocked."""

from __future__ import annotations

import json
import random
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

from thresher.pipelines.testing.sample_data import generate_web
from thresher.scorers.fasttext_model import FastTextModel, TrainSettings, fasttext_lines, train, training_line

TINY = ("--dim", "16", "--bucket", "20000")
TINY_SETTINGS = TrainSettings(dim=16, bucket=20_000, seed=3)


@pytest.fixture(scope="module")
def web() -> tuple[pa.Table, list[str]]:
    sample = generate_web(800, seed=2)
    return sample.table, sample.truth["kind"].to_pylist()


def split_by_kind(table: pa.Table, kinds: list[str], wanted: set[str]) -> pa.Table:
    return table.filter(pa.array([k in wanted for k in kinds]))


@pytest.fixture
def labelled_sets(tmp_path: Path, web: tuple[pa.Table, list[str]]) -> tuple[Path, Path]:
    table, kinds = web
    write_shards(split_by_kind(table, kinds, {"clean"}), tmp_path / "good", rows_per_shard=200)
    write_shards(split_by_kind(table, kinds, {"boilerplate", "spam"}), tmp_path / "bad", rows_per_shard=200)
    return tmp_path / "good", tmp_path / "bad"


def test_training_twice_with_one_seed_gives_identical_predictions(
    tmp_path: Path, web: tuple[pa.Table, list[str]]
) -> None:
    table, kinds = web
    lines = fasttext_lines(table["text"])
    labelled = [
        training_line("hq" if k == "clean" else "lq", line)
        for k, line in zip(kinds, lines, strict=True)
        if k in ("clean", "boilerplate", "spam")
    ]
    random.Random(0).shuffle(labelled)
    (tmp_path / "train.txt").write_text("".join(labelled), encoding="utf-8")
    runs = []
    for _ in range(3):
        model = train(tmp_path / "train.txt", TINY_SETTINGS)
        runs.append(model.probabilities(lines, "hq"))
    assert np.array_equal(runs[0], runs[1]) and np.array_equal(runs[0], runs[2])
    other_seed = train(tmp_path / "train.txt", TrainSettings(dim=16, bucket=20_000, seed=4))
    assert not np.array_equal(runs[0], other_seed.probabilities(lines, "hq"))


def test_probabilities_cover_every_label_not_just_the_top_one(
    tmp_path: Path, labelled_sets: tuple[Path, Path], cli: Cli
) -> None:
    """fasttext-wheel's batched predict repeats the top probability for every label under numpy 2;
    ours must give a distribution."""
    good, bad = labelled_sets
    assert (
        cli("quality", "train", good, tmp_path / "m", "--negative", bad, *TINY, "-w", "1", "-q").exit_code
        == 0
    )
    model = FastTextModel.load(tmp_path / "m" / "model.bin")
    lines = fasttext_lines(pq.read_table(good)["text"]) + fasttext_lines(pq.read_table(bad)["text"])
    hq, lq = model.probabilities(lines, "hq"), model.probabilities(lines, "lq")
    assert np.allclose(hq + lq, 1.0, atol=1e-4)
    top_labels, top_probs = model.top_labels(lines)
    assert np.allclose(np.where(np.array(top_labels) == "hq", hq, lq), top_probs)


def test_train_on_two_shard_sets_then_score(
    cli: Cli, tmp_path: Path, labelled_sets: tuple[Path, Path]
) -> None:
    good, bad = labelled_sets
    model_dir = tmp_path / "model"
    result = cli("quality", "train", good, model_dir, "--negative", bad, *TINY, "-w", "1", "-q")
    assert result.exit_code == 0, result.output

    manifest = read_manifest(model_dir)
    assert sorted(a["path"] for a in manifest["artifacts"]) == ["metrics.json", "model.bin"]
    summary = manifest["summary"]
    assert summary["labels"] == ["hq", "lq"]
    heldout = summary["heldout"]
    assert set(heldout) >= {"precision", "recall", "f1", "roc_auc"}
    assert heldout["roc_auc"] >= 0.95 and heldout["f1"] >= 0.9
    assert json.loads((model_dir / "metrics.json").read_text())["heldout"] == heldout
    good_rows = pq.read_metadata(next(good.glob("*.parquet"))).num_rows
    assert sum(summary["train_rows"].values()) + sum(summary["heldout_rows"].values()) > good_rows

    # Score a mixed set with the model folder; clean prose scores high, boilerplate and spam low.
    mixed = tmp_path / "mixed"
    both = pa.concat_tables([pq.read_table(good), pq.read_table(bad)])
    write_shards(both, mixed, rows_per_shard=150)
    scored = tmp_path / "scored"
    result = cli("quality", "score", mixed, scored, "--model", model_dir, "-w", "1", "-q")
    assert result.exit_code == 0, result.output
    rows = read_rows(scored)
    assert len(rows) == both.num_rows
    assert pq.read_schema(scored / "part-00000.parquet").field("quality_score").type == pa.float32()
    good_ids = set(pq.read_table(good)["id"].to_pylist())
    good_scores = [r["quality_score"] for r in rows if r["id"] in good_ids]
    bad_scores = [r["quality_score"] for r in rows if r["id"] not in good_ids]
    assert all(0.0 <= s <= 1.0 for s in good_scores + bad_scores)
    assert np.mean(good_scores) > 0.8 > 0.2 > np.mean(bad_scores)
    hist = read_manifest(scored)["summary"]["quality_score"]["histogram"]
    assert sum(hist["counts"]) == both.num_rows and len(hist["edges"]) == len(hist["counts"]) + 1


def test_same_command_and_seed_write_the_same_model(
    cli: Cli, tmp_path: Path, labelled_sets: tuple[Path, Path]
) -> None:
    good, bad = labelled_sets
    for name in ("a", "b"):
        args = (
            "quality",
            "train",
            good,
            tmp_path / name,
            "--negative",
            bad,
            *TINY,
            "--seed",
            "9",
            "-w",
            "1",
            "-q",
        )
        assert cli(*args).exit_code == 0
    assert (tmp_path / "a" / "model.bin").read_bytes() == (tmp_path / "b" / "model.bin").read_bytes()


def test_scores_are_byte_identical_with_one_or_two_workers(
    cli: Cli, tmp_path: Path, labelled_sets: tuple[Path, Path]
) -> None:
    good, bad = labelled_sets
    assert cli("quality", "train", good, tmp_path / "m", "--negative", bad, *TINY, "-q").exit_code == 0
    outputs = []
    for workers in ("1", "2"):
        out = tmp_path / f"scored-{workers}"
        assert (
            cli("quality", "score", good, out, "--model", tmp_path / "m", "-w", workers, "-q").exit_code == 0
        )
        outputs.append(parquet_bytes(out))
    assert outputs[0] == outputs[1] and len(outputs[0]) > 1


def test_train_from_a_label_file_joined_by_id(cli: Cli, tmp_path: Path) -> None:
    """What `make demo` does: labels live in the generator's truth table, apart from the text."""
    sample = generate_web(600, seed=4)
    write_shards(sample.table, tmp_path / "web", rows_per_shard=300)
    pq.write_table(sample.truth, tmp_path / "truth.parquet")
    out = tmp_path / "model"
    args = ("--labels", tmp_path / "truth.parquet", "--label-column", "kind", "--positive-values", "clean")
    result = cli(
        "quality", "train", tmp_path / "web", out, *args, "--negative-values", "boilerplate,spam", *TINY
    )
    assert result.exit_code == 0, result.output
    summary = read_manifest(out)["summary"]
    kinds = sample.truth["kind"].to_pylist()
    rows = {k: summary["train_rows"][k] + summary["heldout_rows"].get(k, 0) for k in ("hq", "lq")}
    assert rows == {"hq": kinds.count("clean"), "lq": kinds.count("boilerplate") + kinds.count("spam")}
    assert summary["heldout"]["roc_auc"] >= 0.9


def two_languages(n: int, seed: int) -> pa.Table:
    """Documents in two invented languages with different syllables, and a `lang` column."""
    rng = random.Random(seed)
    syllables = {
        "aa": ["ka", "lo", "mi", "nu", "pe", "ta", "si"],
        "bb": ["zor", "vex", "qua", "dri", "plon", "gux"],
    }
    langs, texts = [], []
    for i in range(n):
        lang = "aa" if i % 2 else "bb"
        words = [
            "".join(rng.choices(syllables[lang], k=rng.randint(1, 3))) for _ in range(rng.randint(5, 25))
        ]
        langs.append(lang)
        texts.append(" ".join(words).capitalize() + ".")
    return pa.table({"id": [f"{seed}-{i}" for i in range(n)], "text": texts, "lang": langs})


def test_language_id_model_adds_lang_and_lang_score(cli: Cli, tmp_path: Path) -> None:
    write_shards(two_languages(400, seed=1), tmp_path / "train", rows_per_shard=200)
    out = tmp_path / "lid"
    # No --positive-values: each value of the column is its own label, as in a language-ID model.
    args = ("--label-column", "lang", "--label", "aa", "--dim", "8", "--bucket", "0", "--word-ngrams", "1")
    result = cli("quality", "train", tmp_path / "train", out, *args, "-w", "1", "-q")
    assert result.exit_code == 0, result.output
    assert set(FastTextModel.load(out / "model.bin").labels) == {"aa", "bb"}

    test_set = two_languages(200, seed=2)
    write_shards(test_set.drop(["lang"]), tmp_path / "test", rows_per_shard=100)
    scored = tmp_path / "scored"
    result = cli(
        "quality", "score", tmp_path / "test", scored, "--langid-model", out / "model.bin", "-w", "1", "-q"
    )
    assert result.exit_code == 0, result.output
    rows = read_rows(scored)
    assert "quality_score" not in rows[0]
    accuracy = np.mean(
        [r["lang"] == want for r, want in zip(rows, test_set["lang"].to_pylist(), strict=True)]
    )
    assert accuracy >= 0.95
    assert all(0.5 <= r["lang_score"] <= 1.0 for r in rows)
    assert sum(read_manifest(scored)["summary"]["languages"].values()) == 200


def test_replacing_the_model_file_rescores(
    cli: Cli, tmp_path: Path, labelled_sets: tuple[Path, Path]
) -> None:
    good, bad = labelled_sets
    for name, negative_label in (("m1", "lq"), ("m2", "junk")):
        args = ("--negative-label", negative_label, "--epoch", "1" if name == "m2" else "5")
        assert (
            cli("quality", "train", good, tmp_path / name, "--negative", bad, *TINY, *args, "-q").exit_code
            == 0
        )
    model = tmp_path / "current.bin"
    shutil.copy(tmp_path / "m1" / "model.bin", model)
    scored = tmp_path / "scored"
    command = ("quality", "score", bad, scored, "--model", model, "-w", "1", "-q")
    assert cli(*command).exit_code == 0
    first = pc.sum(pq.read_table(scored)["quality_score"]).as_py()
    shutil.copy(tmp_path / "m2" / "model.bin", model)
    assert cli(*command).exit_code == 0
    assert pc.sum(pq.read_table(scored)["quality_score"]).as_py() != first


def test_bad_quality_input_is_a_one_line_error(
    cli: Cli, tmp_path: Path, labelled_sets: tuple[Path, Path]
) -> None:
    good, bad = labelled_sets
    out = tmp_path / "out"
    assert_user_error(cli("quality", "score", good, out, "--model", tmp_path / "nope.bin"), 2, "nope.bin")
    assert_user_error(cli("quality", "score", good, out, "--model", good), 2, "has no model.bin")
    (tmp_path / "junk.bin").write_bytes(b"not a model at all" * 10)
    assert_user_error(
        cli("quality", "score", good, out, "--model", tmp_path / "junk.bin"), 1, "not a fastText model"
    )
    assert_user_error(cli("quality", "score", good, out), 2, "--model")

    assert_user_error(cli("quality", "train", good, out), 2, "--negative DIR", "--label-column")
    assert_user_error(
        cli("quality", "train", good, out, "--labels", tmp_path / "x.parquet"), 2, "--labels needs"
    )
    assert_user_error(
        cli("quality", "train", good, out, "--negative", tmp_path / "missing"), 2, "does not exist"
    )
    assert_user_error(cli("quality", "train", good, out, "--label-column", "kind"), 2, "no column 'kind'")
    assert_user_error(
        cli("quality", "train", good, out, "--negative", bad, "--bucket", "0"), 2, "--word-ngrams 1"
    )
    write_shards(
        pa.table({"id": ["a", "b"], "text": ["x y", "y z"], "kind": ["k", "k"]}), tmp_path / "one", 10
    )
    assert_user_error(
        cli("quality", "train", tmp_path / "one", out, "--label-column", "kind", "-q"), 1, "two labels"
    )
    assert_no_output(out)

    model_dir = tmp_path / "model"
    assert cli("quality", "train", good, model_dir, "--negative", bad, *TINY, "-q").exit_code == 0
    assert_user_error(
        cli("quality", "score", good, out, "--model", model_dir, "--label", "gold"), 2, "labels: hq, lq"
    )
    write_shards(pa.table({"id": ["a"], "text": ["x"], "quality_score": [0.3]}), tmp_path / "scored", 10)
    assert_user_error(
        cli("quality", "score", tmp_path / "scored", out, "--model", model_dir), 2, "'quality_score'"
    )
    assert_no_output(out)
