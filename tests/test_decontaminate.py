"""Decontamination: n-gram hashing and lookup, then the stage end to end in drop and tag mode, against
JSON-lines and Parquet evaluation files, through the CLI, a recipe and a resumed run."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import Cli, read_manifest, read_rows, write_jsonl
from factories import WORDS, run_cli, write_shards
from test_bad_input import assert_no_output, assert_user_error

from thresher.pipelines.stages.decontaminate.eval_index import EvalIndex
from thresher.pipelines.text.ngrams import ngram_hashes

# Evaluation text from words the documents never use, so only planted passages can match.
EVAL_WORDS = (
    "which planet orbits closest sun mercury venus mars jupiter saturn neptune what number equals seven "
    "times eight answer fifty six sum prime largest ocean pacific capital france paris"
).split()


def test_ngrams_are_normalised_and_never_cross_texts() -> None:
    texts = pa.array(["The cat, sat ON the mat!", None, "the cat sat on the mat", "cat sat", "on the mat"])
    hashes, doc = ngram_hashes(texts, 3)
    assert doc.tolist() == [0, 0, 0, 0, 2, 2, 2, 2, 4]
    assert hashes.dtype == np.uint64
    assert hashes[:4].tolist() == hashes[4:8].tolist()  # case and punctuation do not matter
    # "sat on the" spans the texts 0 and 2 only inside each; "mat cat sat" (text 0's end + 3) is no n-gram.
    assert len(set(hashes.tolist())) == 4
    assert hashes[8] == hashes[3]  # "on the mat"
    assert ngram_hashes(pa.array(["a b"]), 3)[0].size == 0


def test_index_finds_every_file_holding_an_ngram(tmp_path: Path) -> None:
    a = write_jsonl(tmp_path / "a.jsonl", [{"q": "one two three four", "n": 1}])
    b = write_jsonl(tmp_path / "b.jsonl", [{"q": "two three four five"}, {"q": "six"}])
    c = write_jsonl(tmp_path / "c.jsonl", [{"q": "too short"}])  # gives no n-gram, still has a column
    index, tallies = EvalIndex.build([a, b, c], [], 3)
    assert [t.short_texts for t in tallies] == [0, 1, 1]
    index.save(tmp_path / "index.npz")
    index = EvalIndex.load(tmp_path / "index.npz")
    hashes, doc = ngram_hashes(pa.array(["x two three four", "one two three", "nothing here at all"]), 3)
    per_doc, by_file = index.matches(hashes, doc, 3)
    assert per_doc.tolist() == [1, 1, 0]
    assert by_file.tolist() == [[True, True, False], [True, False, False], [False, False, False]]


def _passage(rng: random.Random, words: int) -> str:
    return " ".join(rng.choice(EVAL_WORDS) for _ in range(words))


@pytest.fixture
def corpus(tmp_path: Path) -> dict[str, object]:
    """400 documents of farm words; some carry a 13-word passage of an evaluation item (in another case
    and with punctuation), some only 12 words of one, which must not count."""
    rng = random.Random(0)
    questions = [_passage(rng, 20) for _ in range(30)]
    answers = [_passage(rng, 15) for _ in range(30)]
    write_jsonl(
        tmp_path / "evals" / "qa.jsonl", [{"question": q, "id": f"q{i}"} for i, q in enumerate(questions)]
    )
    pq.write_table(
        pa.table({"prompt": ["unused"] * 30, "answer": answers, "score": list(range(30))}),
        tmp_path / "evals" / "mc.parquet",
    )
    ids, texts, truth = [], [], {}
    for i in range(400):
        body = [rng.choice(WORDS) for _ in range(60)]
        kind = rng.choice(["clean"] * 6 + ["qa", "mc", "short"])
        if kind in ("qa", "mc"):
            source = questions if kind == "qa" else answers
            words = rng.choice(source).split()
            start = rng.randrange(len(words) - 13 + 1)
            planted = " ".join(words[start : start + 13]).upper().replace(" ", ", ", 2)
            body.insert(rng.randrange(len(body)), planted)
            truth[f"d{i}"] = "qa.jsonl" if kind == "qa" else "mc.parquet"
        elif kind == "short":
            body.insert(rng.randrange(len(body)), " ".join(rng.choice(questions).split()[:12]))
        ids.append(f"d{i}")
        texts.append(" ".join(body) + ".")
    write_shards(pa.table({"id": ids, "text": texts}), tmp_path / "in", rows_per_shard=150)
    return {"src": tmp_path / "in", "evals": tmp_path / "evals", "truth": truth}


def test_drop_mode_drops_exactly_the_planted_documents(cli: Cli, tmp_path: Path, corpus: dict) -> None:
    evals, truth = corpus["evals"], corpus["truth"]
    out = tmp_path / "out"
    against = f"{evals / 'qa.jsonl'},{evals / 'mc.parquet'}"
    result = cli("decontaminate", corpus["src"], out, "--against", against, "-w", "2", "-q")
    assert result.exit_code == 0, result.output
    dropped = pq.read_table(out / "_dropped").to_pylist()
    assert {r["id"]: r["detail"] for r in dropped} == truth
    assert {r["reason"] for r in dropped} == {"contaminated"}
    kept = {r["id"] for r in read_rows(out)}
    assert len(kept) + len(dropped) == 400 and not kept & set(truth)
    manifest = read_manifest(out)
    assert manifest["totals"]["dropped"] == {"contaminated": len(truth)}
    summary = manifest["summary"]
    want = {name: sum(1 for v in truth.values() if v == name) for name in ("qa.jsonl", "mc.parquet")}
    assert summary["documents_by_file"] == want and all(want.values())
    # The Parquet file's string fields are both checked by default; its int field is not text.
    assert summary["eval_files"]["mc.parquet"]["texts"] == 60
    assert summary["eval_files"]["qa.jsonl"]["short_texts"] == 30  # the ids are one word each

    # A finished run reruns nothing and leaves the output as it was.
    assert cli("decontaminate", corpus["src"], out, "--against", against, "-w", "1", "-q").exit_code == 0
    assert {r["id"] for r in pq.read_table(out / "_dropped").to_pylist()} == set(truth)


def test_tag_mode_adds_columns_and_drops_nothing(cli: Cli, tmp_path: Path, corpus: dict) -> None:
    evals, truth = corpus["evals"], corpus["truth"]
    out = tmp_path / "tagged"
    args = ("--against", evals / "qa.jsonl", "--mode", "tag", "--fields", "question", "-w", "1", "-q")
    result = cli("decontaminate", corpus["src"], out, *args)
    assert result.exit_code == 0, result.output
    rows = read_rows(out)
    assert len(rows) == 400 and not (out / "_dropped").exists()
    tagged = {r["id"]: r["contaminated_by"] for r in rows if r["contaminated"]}
    assert tagged == {i: f for i, f in truth.items() if f == "qa.jsonl"}
    assert all(r["contaminated_by"] is None for r in rows if not r["contaminated"])
    schema = pq.read_schema(out / "part-00000.parquet")
    assert schema.field("contaminated").type == pa.bool_()

    # A shorter n-gram also catches the 12-word passages.
    out12 = tmp_path / "tagged12"
    assert cli("decontaminate", corpus["src"], out12, *args, "--ngram", "12").exit_code == 0
    assert sum(r["contaminated"] for r in read_rows(out12)) > len(tagged)


def test_runs_as_a_recipe_step_with_relative_paths(tmp_path: Path, corpus: dict) -> None:
    recipe = corpus["evals"].parent / "decon.yaml"
    recipe.write_text(
        "name: decon\nstages:\n  - stage: decontaminate\n    params:\n      against: [evals/qa.jsonl]\n",
        encoding="utf-8",
    )
    out = tmp_path / "run"
    run_cli("run", str(recipe), "-i", str(corpus["src"]), "-o", str(out), "-w", "1", "-q")
    step = next(p for p in out.iterdir() if p.name.endswith("decontaminate"))
    qa = {i for i, f in corpus["truth"].items() if f == "qa.jsonl"}
    assert {r["id"] for r in pq.read_table(step / "_dropped").to_pylist()} == qa


def test_bad_decontaminate_input_is_a_one_line_error(cli: Cli, tmp_path: Path, corpus: dict) -> None:
    src, evals = corpus["src"], corpus["evals"]
    out = tmp_path / "out"
    assert_user_error(cli("decontaminate", src, out, "--against", tmp_path / "nope.jsonl"), 2, "nope.jsonl")
    assert_user_error(
        cli("decontaminate", src, out, "--against", evals / "qa.jsonl", "--fields", "prompt"), 2, "--fields"
    )
    assert_user_error(cli("decontaminate", src, out, "--against", evals / "qa.jsonl", "--mode", "x"), 2)
    assert_no_output(out)
