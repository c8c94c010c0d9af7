"""`thresher lm train-proxy`: a GPT-2 proxy LM trained here on the sample data learns (validation loss far
below the unigram entropy of its tokens), is reproducible from its seed, resumes exactly from a
checkpoint, and `thresher perplexity lm` scores with what it saved."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from conftest import read_manifest, read_rows
from factories import write_shards
from typer.testing import CliRunner

from thresher.cli.app import app
from thresher.pipelines.testing.sample_data import generate_web
from thresher.scorers.proxy_lm import PRESETS, encode_documents, train_proxy_lm, train_tokenizer

# Small enough to train in seconds on one CPU thread, big enough to learn the generator's templates.
FAST = (
    "--vocab-size", "512", "--context-length", "64", "--n-embd", "32", "--n-layer", "1", "--n-head", "2",
    "--batch-size", "16", "--learning-rate", "0.01", "--warmup-steps", "10", "--threads", "1",
    "--workers", "1", "-q",
)  # fmt: skip


def thresher(*args: str | Path) -> None:
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    sample = generate_web(700, seed=1)
    folder = tmp_path_factory.mktemp("reference")
    write_shards(sample.table.filter(pc.equal(sample.truth["kind"], "clean")), folder, rows_per_shard=200)
    return folder


@pytest.fixture(scope="module")
def proxy(reference: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("proxy") / "out"
    thresher("lm", "train-proxy", reference, out, *FAST, "--max-steps", "150", "--eval-every", "50")
    return out


def test_validation_loss_falls_far_below_the_unigram_entropy(proxy: Path) -> None:
    report = json.loads((proxy / "training.json").read_text())
    assert report["steps"] == 150 and [h["step"] for h in report["history"]] == [50, 100, 150]
    assert report["val_tokens"] > 5000 and report["train_tokens"] > 10 * report["val_tokens"]
    # A model that ignores context scores unigram_entropy nats per token; this one must use context.
    assert report["final_val_loss"] < report["unigram_entropy"] - 1.0, report
    assert report["history"][0]["val_loss"] > report["final_val_loss"]
    assert read_manifest(proxy)["summary"]["final_val_loss"] == report["final_val_loss"]
    names = {p.name for p in (proxy / "model").iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= names
    assert not any(n.endswith((".bin", ".pt", ".pkl")) for n in names)
    assert not (proxy / "_thresher" / "work").exists()  # checkpoints and token streams are gone


def test_perplexity_lm_scores_with_the_trained_proxy(proxy: Path, tmp_path: Path) -> None:
    sample = generate_web(400, seed=0)
    write_shards(sample.table, tmp_path / "in", rows_per_shard=200)
    thresher(
        "perplexity",
        "lm",
        tmp_path / "in",
        tmp_path / "out",
        "--model",
        proxy / "model",
        "-q",
        "--workers",
        "1",
    )
    ppl = {r["id"]: r["lm_ppl"] for r in read_rows(tmp_path / "out")}
    kinds = dict(zip(sample.table["id"].to_pylist(), sample.truth["kind"].to_pylist(), strict=True))

    def median(wanted: set[str]) -> float:
        return float(np.median([ppl[i] for i, k in kinds.items() if k in wanted]))

    assert median({"clean"}) * 3 < median({"spam", "boilerplate", "non_latin"})


def test_same_seed_same_model_other_seed_other_model(reference: Path, tmp_path: Path) -> None:
    steps = ("--max-steps", "12", "--eval-every", "12")
    for name, seed in (("a", "0"), ("b", "0"), ("c", "1")):
        thresher("lm", "train-proxy", reference, tmp_path / name, *FAST, *steps, "--seed", seed)
    weights = {n: (tmp_path / n / "model" / "model.safetensors").read_bytes() for n in "abc"}
    assert weights["a"] == weights["b"]
    assert weights["a"] != weights["c"]
    assert (tmp_path / "a" / "model" / "tokenizer.json").read_bytes() == (
        tmp_path / "b" / "model" / "tokenizer.json"
    ).read_bytes()


def test_resuming_from_a_checkpoint_continues_exactly(tmp_path: Path) -> None:
    from safetensors.torch import load_file

    texts = generate_web(150, seed=8).table["text"].to_pylist()
    tokenizer = train_tokenizer(iter(texts), 400)
    tokenizer.save(str(tmp_path / "tokenizer.json"))
    train = [encode_documents(tokenizer, texts[:120])]
    val = [encode_documents(tokenizer, texts[120:])]
    config = dataclasses.replace(
        PRESETS["tiny"], context_length=32, n_embd=16, n_layer=1, n_head=2, batch_size=4, max_steps=20,
        eval_every=10, checkpoint_every=5, val_tokens=2000,
    )  # fmt: skip

    def run(out: str, checkpoints: str, fingerprint: str = "f", stop_after: int | None = None) -> dict:
        report = train_proxy_lm(
            config, tokenizer_path=tmp_path / "tokenizer.json", train_streams=train, val_streams=val,
            out_dir=tmp_path / out, checkpoint_dir=tmp_path / checkpoints, fingerprint=fingerprint, seed=3,
            device="cpu", threads=1, stop_after=stop_after,
        )  # fmt: skip
        return {"report": report, "weights": load_file(str(tmp_path / out / "model.safetensors"))}

    straight = run("straight", "ck-straight")
    interrupted = run("first", "ck", stop_after=12)
    assert interrupted["report"].steps == 12
    resumed = run("resumed", "ck")
    assert resumed["report"].resumed_from == 12 and resumed["report"].steps == 20
    for name, tensor in straight["weights"].items():
        assert (tensor == resumed["weights"][name]).all(), name
    assert resumed["report"].final_val_loss == straight["report"].final_val_loss
    # A checkpoint written for other params or data is not resumed from.
    other = run("other", "ck", fingerprint="g")
    assert other["report"].resumed_from == 0


@pytest.mark.slow
def test_tiny_preset_on_the_whole_sample_set(tmp_path: Path) -> None:
    sample = generate_web(3000, seed=0)
    write_shards(sample.table, tmp_path / "in", rows_per_shard=1000)
    out = tmp_path / "out"
    thresher("lm", "train-proxy", tmp_path / "in", out, "--preset", "tiny", "--threads", "1", "-q")
    report = json.loads((out / "training.json").read_text())
    assert report["final_val_loss"] < report["unigram_entropy"] - 2.0, report


def test_empty_input_text_is_a_one_line_error(tmp_path: Path) -> None:
    write_shards(pa.table({"id": ["a", "b"], "text": ["", " "]}), tmp_path / "in", 10)
    result = CliRunner().invoke(app, ["lm", "train-proxy", str(tmp_path / "in"), str(tmp_path / "out"), "-q"])
    assert result.exit_code == 1 and "no text to train on" in result.output
