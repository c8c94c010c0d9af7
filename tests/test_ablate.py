"""`thresher ablate` end to end on tiny data: proxy LMs trained on clean text beat ones trained on noise,
on clean held-out text, by more than the bootstrap interval; resumable; results table and JSON."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
from factories import run_cli, write_shards

SUBJECTS = ["the cat", "a dog", "my friend", "the teacher", "our neighbour", "the old man", "a small bird"]
VERBS = ["walks to", "looks at", "runs past", "waits for", "talks about", "sits near"]
OBJECTS = ["the river", "a green house", "the market", "the school", "a quiet garden", "the station"]


def sentences(rows: int, seed: int) -> pa.Table:
    rng = np.random.default_rng(seed)
    texts = [
        " ".join(f"{rng.choice(SUBJECTS)} {rng.choice(VERBS)} {rng.choice(OBJECTS)}." for _ in range(4))
        for _ in range(rows)
    ]
    return pa.table({"id": [f"s{seed}-{i:05d}" for i in range(rows)], "text": texts})


def noise(rows: int, seed: int) -> pa.Table:
    rng = np.random.default_rng(seed)
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz  .,"))
    texts = ["".join(rng.choice(letters, size=120)) for _ in range(rows)]
    return pa.table({"id": [f"n{seed}-{i:05d}" for i in range(rows)], "text": texts})


TINY = ["--n-embd", "32", "--n-layer", "1", "--n-head", "2", "--context-length", "32", "--batch-size", "8"]


def test_clean_train_set_beats_noise_on_clean_eval_text(tmp_path: Path) -> None:
    write_shards(noise(300, 1), tmp_path / "noise", rows_per_shard=150)
    write_shards(sentences(300, 2), tmp_path / "clean", rows_per_shard=150)
    write_shards(sentences(100, 3), tmp_path / "heldout", rows_per_shard=100)
    out = tmp_path / "ablation"
    args = [
        "ablate",
        str(out),
        "--train",
        f"noise={tmp_path / 'noise'}",
        "--train",
        f"clean={tmp_path / 'clean'}",
    ]
    args += [
        "--eval",
        f"clean={tmp_path / 'heldout'}",
        "--tokens",
        "12000",
        "--seeds",
        "2",
        "--vocab-size",
        "300",
    ]
    args += [*TINY, "--device", "cpu", "--threads", "1", "-w", "2"]
    shown = run_cli(*args).stdout
    results = json.loads((out / "ablation.json").read_text())
    assert results["baseline"] == "noise" and results["seeds"] == [0, 1]
    cells = {(c["train"], c["eval"]): c for c in results["results"]}
    clean, base = cells[("clean", "clean")], cells[("noise", "clean")]
    assert clean["seeds"] == base["seeds"] == 2 and base["diff"] is None
    # Lower loss for the clean set, and the whole interval below zero: not seed noise.
    assert clean["loss_mean"] < base["loss_mean"]
    assert (
        clean["diff"] < 0
        and clean["diff_high"] < 0
        and clean["diff_low"] <= clean["diff"] <= clean["diff_high"]
    )
    assert "vs noise" in shown and "clean" in shown
    manifest = json.loads((out / "_manifest.json").read_text())
    training = manifest["summary"]["training"]
    assert sorted((t["train"], t["seed"]) for t in training) == [
        ("clean", 0),
        ("clean", 1),
        ("noise", 0),
        ("noise", 1),
    ]
    # Every model saw the same budget: the same number of steps.
    assert len({t["steps"] for t in training}) == 1 and all(t["history"] for t in training)
    assert (out / "tokenizer.json").exists()
    again = run_cli(*args)
    assert "up to date" in again.stderr


def test_named_sets_are_checked_on_the_command_line(tmp_path: Path) -> None:
    bad = run_cli("ablate", str(tmp_path / "o"), "--train", "nodir", "--eval", "a=b", check=False)
    assert bad.returncode == 2 and "--train nodir: expected NAME=DIR" in bad.stderr
    missing = run_cli("ablate", str(tmp_path / "o"), "--train", f"a={tmp_path}", check=False)
    assert missing.returncode == 2 and "--eval NAME=DIR is required" in missing.stderr


def test_a_recipe_ending_in_ablate_compares_its_output_with_its_input(tmp_path: Path) -> None:
    """`ablate: {baseline: input, eval: ...}` at the end of a recipe: the run's raw input (ingested) and
    the recipe's output train identical proxy LMs, compared on held-out text named relative to the recipe."""
    rows = [
        {"text": t, "kind": kind}
        for table, kind in ((sentences(300, 2), "clean"), (noise(300, 1), "noise"))
        for t in table["text"].to_pylist()
    ]
    raw = tmp_path / "raw.jsonl"
    raw.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    recipes = tmp_path / "recipes"
    write_shards(sentences(100, 3), recipes / "heldout", rows_per_shard=100)
    (recipes / "clean-only.yaml").write_text(
        """
name: clean-only
stages:
  - stage: ingest
  - stage: filter
    params: {where: "kind == 'clean'"}
ablate:
  baseline: input
  eval: {clean: heldout}
  tokens: 12000
  seeds: 2
  vocab_size: 300
  n_embd: 32
  n_layer: 1
  n_head: 2
  context_length: 32
  batch_size: 8
  device: cpu
  threads: 1
""",
        encoding="utf-8",
    )
    out = tmp_path / "run"
    shown = run_cli("run", str(recipes / "clean-only.yaml"), "-i", str(raw), "-o", str(out), "-w", "2").stdout
    steps = sorted(p.name for p in out.iterdir() if p.is_dir() and not p.name.startswith("_"))
    assert steps == ["00-ingest", "01-filter", "02-ablate"]
    results = json.loads((out / "02-ablate" / "ablation.json").read_text())
    assert results["baseline"] == "input"
    cells = {(c["train"], c["eval"]): c for c in results["results"]}
    curated = cells[("clean-only", "clean")]
    params = json.loads((out / "02-ablate" / "_manifest.json").read_text())["params"]
    assert params["train"] == {"input": str(out / "00-ingest"), "clean-only": str(out / "01-filter")}
    assert params["eval"] == {"clean": str(recipes / "heldout")}
    # Half the baseline's tokens are noise: the recipe's output wins by more than the interval.
    assert curated["diff"] < 0 and curated["diff_high"] < 0
    assert "vs input" in shown and "clean-only" in shown
