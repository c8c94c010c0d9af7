"""`thresher perplexity lm`: a tiny GPT-2 and byte-level BPE built here and saved like a real checkpoint,
scored through the real loading code and checked against a direct forward pass. Nothing is mocked."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from conftest import Cli, read_manifest, read_rows
from factories import write_shards
from test_bad_input import assert_no_output, assert_user_error
from typer.testing import CliRunner

from thresher.cli.app import app
from thresher.pipelines.testing.sample_data import generate_web
from thresher.scorers.causal_lm import windows_for
from thresher.scorers.proxy_lm import PRESETS, build_model, save_pretrained, train_tokenizer

CONTEXT = 64


def thresher(*args: str | Path) -> None:
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output


@pytest.fixture(scope="module")
def gpt2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Random weights are enough here: the tests check the scoring arithmetic, not the model's taste."""
    import dataclasses

    texts = generate_web(200, seed=4).table["text"].to_pylist()
    tokenizer = train_tokenizer(iter(texts), 400)
    config = dataclasses.replace(PRESETS["tiny"], context_length=CONTEXT, n_embd=32, n_layer=2, n_head=2)
    model = build_model(config, tokenizer.get_vocab_size(), tokenizer.token_to_id("<|endoftext|>"), seed=0)
    folder = tmp_path_factory.mktemp("gpt2") / "model"
    save_pretrained(model, tokenizer, folder)
    return folder


def direct_ppl(folder: Path, text: str) -> tuple[float, int]:
    """Perplexity from one plain forward pass over `<|endoftext|> + text`, no batching or windows."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    ids = torch.tensor([[tokenizer.bos_token_id, *tokenizer(text, add_special_tokens=False)["input_ids"]]])
    with torch.no_grad():
        logits = model(ids).logits[0, :-1]
    nll = torch.nn.functional.cross_entropy(logits, ids[0, 1:], reduction="sum").item()
    return math.exp(nll / (ids.shape[1] - 1)), ids.shape[1] - 1


def test_lm_ppl_equals_a_direct_forward_pass(gpt2: Path, tmp_path: Path) -> None:
    texts = ["The mill reopened on Friday.", "Preheat the oven, then whisk the eggs.", "ok", "Résumé 42 ✓"]
    write_shards(pa.table({"id": list("abcd"), "text": texts}), tmp_path / "in", 2)
    thresher("perplexity", "lm", tmp_path / "in", tmp_path / "out", "--model", gpt2, "--workers", "1", "-q")
    rows = read_rows(tmp_path / "out")
    assert [r["id"] for r in rows] == list("abcd")
    for text, row in zip(texts, rows, strict=True):
        ppl, _ = direct_ppl(gpt2, text)
        assert row["lm_ppl"] == pytest.approx(ppl, rel=1e-5)
    manifest = read_manifest(tmp_path / "out")
    assert manifest["summary"]["scored"] == 4 and manifest["summary"]["empty"] == 0
    assert "lm_bucket" not in rows[0]


def test_long_documents_are_scored_whole_with_strided_windows_or_truncated(
    gpt2: Path, tmp_path: Path
) -> None:
    from transformers import AutoTokenizer

    long_text = " ".join(generate_web(40, seed=5).table["text"].to_pylist())[:3000]
    n_tokens = len(AutoTokenizer.from_pretrained(gpt2)(long_text, add_special_tokens=False)["input_ids"])
    assert n_tokens > 4 * CONTEXT
    write_shards(
        pa.table({"id": ["long", "short"], "text": [long_text, "The river rose."]}), tmp_path / "in", 5
    )
    out = {}
    for mode in ("stride", "truncate"):
        thresher(
            "perplexity", "lm", tmp_path / "in", tmp_path / mode, "--model", gpt2, "--long-docs", mode,
            "--batch-size", "3", "-q",
        )  # fmt: skip
        out[mode] = read_rows(tmp_path / mode)
    summary = read_manifest(tmp_path / "stride")["summary"]
    short_tokens = direct_ppl(gpt2, "The river rose.")[1]
    # Strided: every token of the document is predicted exactly once (BOS is context only).
    assert summary["tokens"] == n_tokens + short_tokens
    assert read_manifest(tmp_path / "truncate")["summary"]["tokens"] == CONTEXT - 1 + short_tokens
    assert all(math.isfinite(r["lm_ppl"]) for mode in out for r in out[mode])
    # The short document is unaffected by how the long one is windowed.
    assert out["stride"][1]["lm_ppl"] == pytest.approx(out["truncate"][1]["lm_ppl"], rel=1e-5)


def test_windows_cover_every_target_once_with_context() -> None:
    ids = list(range(1000))
    for length, stride in ((64, 32), (64, 63), (64, 1), (10, 7)):
        windows = windows_for(0, ids, length, stride, "stride")
        targets = [w.ids[t] for w in windows for t in range(1 + w.skip, len(w.ids))]
        assert targets == ids[1:]
        assert all(len(w.ids) <= length for w in windows)
        # Every window after the first scores its targets with at least length - stride tokens before them.
        assert all(w.skip + 1 >= length - stride for w in windows[1:])
    assert windows_for(0, ids[:50], 64, 32, "stride") == windows_for(0, ids[:50], 64, 32, "truncate")


def test_length_sorted_batches_give_the_same_scores_as_naive_ones(gpt2: Path, tmp_path: Path) -> None:
    texts = generate_web(60, seed=6).table["text"].to_pylist()
    write_shards(pa.table({"id": [str(i) for i in range(60)], "text": texts}), tmp_path / "in", 60)
    thresher("perplexity", "lm", tmp_path / "in", tmp_path / "sorted", "--model", gpt2, "-q")
    thresher(
        "perplexity", "lm", tmp_path / "in", tmp_path / "naive", "--model", gpt2, "--no-sort-by-length", "-q"
    )
    a = np.array([r["lm_ppl"] for r in read_rows(tmp_path / "sorted")])
    b = np.array([r["lm_ppl"] for r in read_rows(tmp_path / "naive")])
    np.testing.assert_allclose(a, b, rtol=1e-4)


def test_empty_documents_get_a_null_score_and_buckets_work(gpt2: Path, tmp_path: Path) -> None:
    texts = ["The harvest was good.", "", None, "   ", "The barn is red.", "Rain fell on the field."]
    write_shards(pa.table({"id": list("abcdef"), "text": pa.array(texts, pa.string())}), tmp_path / "in", 10)
    thresher(
        "perplexity", "lm", tmp_path / "in", tmp_path / "out", "--model", gpt2, "--buckets", "low,high",
        "--percentiles", "50", "-q",
    )  # fmt: skip
    rows = read_rows(tmp_path / "out")
    assert [r["lm_ppl"] is None for r in rows] == [False, True, True, True, False, False]
    assert [r["lm_bucket"] is None for r in rows] == [False, True, True, True, False, False]
    summary = read_manifest(tmp_path / "out")["summary"]
    assert summary["empty"] == 3 and summary["scored"] == 3
    assert summary["buckets"] == {"low": 1, "high": 2}


def test_bad_models_are_one_line_errors(cli: Cli, gpt2: Path, tmp_path: Path) -> None:
    write_shards(pa.table({"id": ["a"], "text": ["some text"]}), tmp_path / "in", 10)
    out = tmp_path / "out"

    def run(*args: str | Path) -> object:
        return cli("perplexity", "lm", tmp_path / "in", out, *args)

    assert_user_error(run("--model", tmp_path / "missing"), 1, "not in the local Hugging Face cache")
    assert_user_error(run("--model", "no-such-org/no-such-model"), 1, "offline")
    assert_user_error(run("--model", tmp_path / "in"), 1, "no config.json")
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    shutil.copy(gpt2 / "config.json", pickled)
    (pickled / "pytorch_model.bin").write_bytes(b"\x80\x04not read")
    assert_user_error(run("--model", pickled), 1, "no .safetensors weights")
    broken = tmp_path / "broken"
    shutil.copytree(gpt2, broken)
    (broken / "model.safetensors").write_bytes(b"garbage")
    assert_user_error(run("--model", broken), 1, "not a loadable causal LM")
    assert_no_output(out)


def test_tokenizer_larger_than_the_model_is_a_one_line_error(cli: Cli, gpt2: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    shutil.copytree(gpt2, other)
    texts = generate_web(200, seed=7).table["text"].to_pylist()
    bigger = train_tokenizer(iter(texts), 900)
    assert bigger.get_vocab_size() > 400
    from transformers import PreTrainedTokenizerFast

    PreTrainedTokenizerFast(
        tokenizer_object=bigger, bos_token="<|endoftext|>", eos_token="<|endoftext|>"
    ).save_pretrained(other)
    write_shards(pa.table({"id": ["a"], "text": ["some text"]}), tmp_path / "in", 10)
    result = cli("perplexity", "lm", tmp_path / "in", tmp_path / "out", "--model", other)
    assert_user_error(result, 1, "tokenizer has", "does not belong to this model")


def test_device_choice(cli: Cli, gpt2: Path, tmp_path: Path) -> None:
    import torch

    write_shards(pa.table({"id": ["a"], "text": ["The mill reopened on Friday."]}), tmp_path / "in", 10)
    result = cli("perplexity", "lm", tmp_path / "in", tmp_path / "cuda", "--model", gpt2, "--device", "cuda")
    if torch.cuda.is_available():
        # bf16 on the GPU: close to the fp32 CPU score, not equal.
        assert result.exit_code == 0, result.output
        thresher("perplexity", "lm", tmp_path / "in", tmp_path / "cpu", "--model", gpt2, "--device", "cpu")
        gpu, cpu = (read_rows(tmp_path / d)[0]["lm_ppl"] for d in ("cuda", "cpu"))
        assert gpu == pytest.approx(cpu, rel=0.05)
    else:
        assert_user_error(result, 1, "--device cuda", "no CUDA GPU")
