"""Language ID: a small fastText language-ID model trained here on generated English, German and French
text, then the stage through the CLI (tag only, and --keep), with lid.176-style and GlotLID-style labels."""

from __future__ import annotations

import random
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import Cli, read_manifest, read_rows
from factories import write_shards
from test_bad_input import assert_no_output, assert_user_error

from thresher.scorers.fasttext_model import FastTextModel, TrainSettings, train

VOCABULARY = {
    "en": "the of and to with that have this from they would there their which about when "
    "house water morning garden children people window market river should little always",
    "de": "der die das und zu mit von ist nicht ein eine auch auf sich dem wird sind noch "
    "haus wasser morgen garten kinder leute fenster markt fluss immer kleine heute",
    "fr": "le la les et des que est une pour dans qui sur pas avec sont mais nous leur "
    "maison eau matin jardin enfants gens fenêtre marché rivière toujours petite aujourd'hui",
}


def sentences(n: int, seed: int) -> tuple[list[str], list[str]]:
    """`n` documents of a few sentences each, cycling through the languages, and their languages."""
    rng = random.Random(seed)
    langs = sorted(VOCABULARY)
    texts, truth = [], []
    for i in range(n):
        lang = langs[i % len(langs)]
        words = VOCABULARY[lang].split()
        parts = [
            " ".join(rng.choices(words, k=rng.randint(4, 12))).capitalize() for _ in range(rng.randint(1, 4))
        ]
        texts.append(". ".join(parts) + ".")
        truth.append(lang)
    return texts, truth


def train_langid(path: Path, label: dict[str, str] | None = None) -> Path:
    """A fastText language-ID model at `path`, labels as `label` maps the languages (default: as is)."""
    texts, truth = sentences(900, seed=1)
    lines = path.with_suffix(".train.txt")
    lines.write_text(
        "".join(
            f"__label__{(label or {}).get(lang, lang)} {text}\n"
            for text, lang in zip(texts, truth, strict=True)
        ),
        encoding="utf-8",
    )
    train(lines, TrainSettings(epoch=10, dim=16, word_ngrams=1, bucket=0, seed=0)).save(path)
    return path


@pytest.fixture(scope="module")
def lid_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_langid(tmp_path_factory.mktemp("lid") / "lid.bin")


@pytest.fixture
def mixed(tmp_path: Path) -> tuple[Path, list[str]]:
    texts, truth = sentences(300, seed=2)
    table = pa.table({"id": [f"doc-{i}" for i in range(300)], "text": texts, "source": ["web"] * 300})
    write_shards(table, tmp_path / "in", rows_per_shard=100)
    return tmp_path / "in", truth


def test_langid_adds_lang_and_lang_score(cli: Cli, tmp_path: Path, lid_model: Path, mixed: tuple) -> None:
    src, truth = mixed
    out = tmp_path / "out"
    result = cli("langid", src, out, "--model", lid_model, "-w", "2", "-q")
    assert result.exit_code == 0, result.output
    rows = read_rows(out)
    assert [r["id"] for r in rows] == [f"doc-{i}" for i in range(300)]  # input order, nothing dropped
    assert not (out / "_dropped").exists()
    right = sum(r["lang"] == want for r, want in zip(rows, truth, strict=True))
    assert right >= 0.95 * len(rows)
    assert all(0.3 < r["lang_score"] <= 1.0 for r in rows) and rows[0]["source"] == "web"
    assert pq.read_schema(out / "part-00000.parquet").field("lang_score").type == pa.float32()
    summary = read_manifest(out)["summary"]
    assert set(summary["languages"]) == {"de", "en", "fr"} and sum(summary["languages"].values()) == 300


def test_keep_drops_other_languages_with_their_language(
    cli: Cli, tmp_path: Path, lid_model: Path, mixed: tuple
) -> None:
    src, truth = mixed
    out = tmp_path / "kept"
    result = cli("langid", src, out, "--model", lid_model, "--keep", "en,de", "-w", "1", "-q")
    assert result.exit_code == 0, result.output
    rows = read_rows(out)
    dropped = pq.read_table(out / "_dropped").to_pylist()
    assert len(rows) + len(dropped) == 300
    assert {r["lang"] for r in rows} <= {"en", "de"}
    assert {r["reason"] for r in dropped} == {"language"}
    assert {r["detail"] for r in dropped} == {"fr"}
    french = {f"doc-{i}" for i, lang in enumerate(truth) if lang == "fr"}
    assert len({r["id"] for r in dropped} & french) >= 0.95 * len(french)
    manifest = read_manifest(out)
    assert manifest["totals"]["dropped"] == {"language": len(dropped)}
    assert manifest["summary"]["dropped"] == len(dropped)


def test_glotlid_style_labels_are_kept_by_their_language(cli: Cli, tmp_path: Path, mixed: tuple) -> None:
    src, truth = mixed
    model = train_langid(tmp_path / "glot.bin", {"en": "eng_Latn", "de": "deu_Latn", "fr": "fra_Latn"})
    out = tmp_path / "out"
    assert cli("langid", src, out, "--model", model, "--keep", "deu", "-w", "1", "-q").exit_code == 0
    rows = read_rows(out)
    assert {r["lang"] for r in rows} == {"deu_Latn"}
    assert len(rows) >= 0.95 * truth.count("de")


def test_bad_langid_input_is_a_one_line_error(
    cli: Cli, tmp_path: Path, lid_model: Path, mixed: tuple
) -> None:
    src, _ = mixed
    out = tmp_path / "out"
    assert_user_error(cli("langid", src, out, "--model", tmp_path / "none.bin"), 2, "none.bin")
    assert_user_error(cli("langid", src, out, "--model", lid_model, "--keep", "xx"), 2, "--keep xx")
    broken = tmp_path / "broken.bin"
    broken.write_bytes(lid_model.read_bytes()[:1000])
    assert_user_error(cli("langid", src, out, "--model", broken), 1, "not a fastText model")
    write_shards(pa.table({"id": ["a"], "text": ["x"], "lang": ["en"]}), tmp_path / "has", 10)
    assert_user_error(cli("langid", tmp_path / "has", out, "--model", lid_model), 2, "'lang'")
    assert_no_output(out)
    assert FastTextModel.load(lid_model).labels  # the good model still loads after the broken one


def test_route_writes_one_shard_set_per_language(
    cli: Cli, tmp_path: Path, lid_model: Path, mixed: tuple
) -> None:
    src, _ = mixed
    out = tmp_path / "routed"
    args = ("langid", src, out, "--model", lid_model, "--keep", "en,de", "--route", "-w", "2", "-q")
    result = cli(*args)
    assert result.exit_code == 0, result.output
    rows = read_rows(out)  # the full shard set is still OUTPUT itself
    routes = read_manifest(out)["summary"]["routes"]
    assert sorted(routes) == sorted({r["lang"] for r in rows}) == ["de", "en"]
    for lang, route in routes.items():
        folder = out / route["path"]
        assert folder == out / "_by_lang" / lang
        routed = read_rows(folder)
        assert routed == [r for r in rows if r["lang"] == lang]  # same rows, in input order
        manifest = read_manifest(folder)
        assert route["rows"] == len(routed) == manifest["totals"]["rows_out"]
        assert manifest["params"]["language"] == lang and manifest["input"]["path"] == str(src.resolve())
        assert [f["path"] for f in manifest["outputs"]] == sorted(p.name for p in folder.glob("*.parquet"))
    # Readers that walk OUTPUT skip the routed copies, as they skip _dropped/.
    assert pq.read_table(out).num_rows == len(rows)

    # Each language folder is an input a later stage takes as it is.
    tagged = tmp_path / "tagged"
    result = cli("dedup", "exact", out / "_by_lang" / "de", tagged, "-w", "1", "-q")
    assert result.exit_code == 0, result.output
    assert read_manifest(tagged)["input"]["stage"] == "langid"
    assert len(read_rows(tagged)) <= routes["de"]["rows"]

    # A rerun that keeps fewer languages leaves no folder of a language it no longer writes.
    args = ("langid", src, out, "--model", lid_model, "--keep", "de", "--route", "-w", "1", "-q")
    assert cli(*args).exit_code == 0
    assert sorted(p.name for p in (out / "_by_lang").iterdir()) == ["de"]
    assert sorted(read_manifest(out)["summary"]["routes"]) == ["de"]


def test_route_without_keep_routes_every_language(
    cli: Cli, tmp_path: Path, lid_model: Path, mixed: tuple
) -> None:
    src, truth = mixed
    out = tmp_path / "out"
    assert cli("langid", src, out, "--model", lid_model, "--route", "-w", "1", "-q").exit_code == 0
    routes = read_manifest(out)["summary"]["routes"]
    assert sorted(routes) == ["de", "en", "fr"]
    assert sum(r["rows"] for r in routes.values()) == len(truth)
    # Without --route again, the routed copies of the earlier run go.
    assert cli("langid", src, out, "--model", lid_model, "-w", "1", "-q").exit_code == 0
    assert not (out / "_by_lang").exists() and "routes" not in read_manifest(out)["summary"]
