"""DoReMi: the Group DRO update, stratified batches, and `thresher reweight doremi` end to end on a
synthetic three-domain corpus with tiny real models (nothing mocked)."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from conftest import Cli, read_manifest, read_rows
from factories import write_shards
from test_bad_input import assert_no_output, assert_user_error

from thresher.pipelines.engine.errors import ThresherError
from thresher.scorers.doremi import (
    DomainStreams,
    average_weights,
    carry_excess,
    doremi_update,
    stratified_counts,
    train_doremi_proxy,
    train_reference,
)

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "recipes" / "mixture.yaml"
# A model small enough to train a few hundred steps in seconds on one busy CPU core.
TINY = (
    "--vocab-size", "300", "--context-length", "32", "--n-embd", "32", "--n-layer", "1", "--n-head", "2",
    "--batch-size", "12", "--warmup-steps", "5", "--learning-rate", "1e-2", "--device", "cpu",
    "--threads", "1",
)  # fmt: skip


# ---------------------------------------------------------------------------------------------------------
# The update


def test_update_matches_the_worked_example() -> None:
    weights = doremi_update(np.full(3, 1 / 3), np.array([0.0, 0.0, 1.0]), eta=1.0, smoothing=1e-3)
    assert weights == pytest.approx([0.21206, 0.21206, 0.57588], abs=1e-5)
    assert weights.sum() == pytest.approx(1.0)


def test_eta_zero_leaves_weights_unchanged() -> None:
    uniform = np.full(4, 0.25)
    excess = np.array([3.0, 0.0, 1.0, 0.5])
    assert doremi_update(uniform, excess, eta=0.0, smoothing=1e-3) == pytest.approx(uniform, abs=1e-15)
    skewed = np.array([0.1, 0.2, 0.3, 0.4])
    # Smoothing pulls towards uniform by design, so only without it do non-uniform weights stay put.
    assert doremi_update(skewed, excess, eta=0.0, smoothing=0.0) == pytest.approx(skewed, abs=1e-15)


def test_smoothing_keeps_every_weight_at_least_c_over_k() -> None:
    weights = doremi_update(np.full(3, 1 / 3), np.array([0.0, 0.0, 50.0]), eta=1.0, smoothing=1e-3)
    assert weights.min() >= 1e-3 / 3
    assert weights.sum() == pytest.approx(1.0)


def test_average_includes_the_initial_weights() -> None:
    initial = np.full(3, 1 / 3)
    after = doremi_update(initial, np.array([0.0, 0.0, 1.0]), eta=1.0, smoothing=1e-3)
    average = average_weights([initial, after])
    assert average == pytest.approx((initial + after) / 2)
    assert average == pytest.approx([0.272697, 0.272697, 0.454607], abs=1e-5)


def test_a_domain_missing_from_the_batch_keeps_its_last_excess() -> None:
    last = np.array([0.5, 0.7, 0.9])
    now = np.array([0.1, 0.0, 0.3])
    assert carry_excess(now, np.array([True, False, True]), last) == pytest.approx([0.1, 0.7, 0.3])


def test_stratified_batches_hold_every_domain_and_even_out_over_steps() -> None:
    totals = np.zeros(5, np.int64)
    for step in range(5):
        counts = stratified_counts(16, 5, step)
        assert counts.sum() == 16 and counts.min() >= 3
        totals += counts
    assert totals.tolist() == [16] * 5
    with pytest.raises(ThresherError, match="raise --batch-size to at least 5"):
        stratified_counts(4, 5, 0)


# ---------------------------------------------------------------------------------------------------------
# Training, in-process


def _tiny_setup(seed: int) -> tuple[Any, list[DomainStreams], Any]:
    """A tokenizer, three domains of random tokens and a one-layer config: seconds to train on CPU."""
    import dataclasses

    from thresher.scorers.proxy_lm import PRESETS, train_tokenizer

    rng = np.random.default_rng(seed)
    tokenizer = train_tokenizer(["some text to learn a few merges from"] * 20, 300)
    vocab = tokenizer.get_vocab_size()
    domains = [DomainStreams(n, [rng.integers(1, vocab, 400).astype(np.uint16)]) for n in ("a", "b", "c")]
    config = dataclasses.replace(
        PRESETS["tiny"], vocab_size=300, context_length=16, n_embd=16, n_layer=1, n_head=2, batch_size=6,
        warmup_steps=2,
    )  # fmt: skip
    return tokenizer, domains, config


def test_training_is_deterministic_for_a_seed(tmp_path: Path) -> None:
    tokenizer, domains, config = _tiny_setup(seed=0)
    runs = []
    for run in range(2):
        ref = tmp_path / f"ref{run}"
        train_reference(
            config,
            domains,
            np.ones(3),
            tokenizer=tokenizer,
            out_dir=ref,
            seed=5,
            steps=4,
            device="cpu",
            threads=1,
        )
        result = train_doremi_proxy(
            config, domains, ref, tokenizer=tokenizer, seed=5, steps=4, device="cpu", threads=1
        )
        runs.append(result)
    assert runs[0].trajectory == runs[1].trajectory
    assert len(runs[0].trajectory) == 5 and runs[0].trajectory[0] == pytest.approx([1 / 3] * 3)
    assert runs[0].weights == pytest.approx(average_weights(runs[0].trajectory))


class Interrupted(Exception):
    """Stands for a kill: raised from `on_step` once the given number of steps is done."""


def _interrupt_after(limit: int) -> Any:
    done = 0

    def on_step(n: int) -> None:
        nonlocal done
        done += n
        if done >= limit:
            raise Interrupted

    return on_step


def test_both_trainers_resume_from_a_checkpoint_exactly(tmp_path: Path) -> None:
    """Killed after step 5 with checkpoints every 3 steps, each trainer restarts from step 3 and ends with
    what an uninterrupted run gives, bit for bit; a checkpoint for other settings is not resumed from."""
    from safetensors.numpy import load_file

    from thresher.scorers.checkpoints import CheckpointPlan

    tokenizer, domains, config = _tiny_setup(seed=1)
    common: dict[str, Any] = {"tokenizer": tokenizer, "seed": 5, "steps": 8, "device": "cpu", "threads": 1}

    def reference(out: str, plan: CheckpointPlan | None = None, on_step: Any = None) -> Any:
        return train_reference(
            config, domains, np.ones(3), out_dir=tmp_path / out, checkpoints=plan, on_step=on_step, **common
        )

    def proxy(plan: CheckpointPlan | None = None, on_step: Any = None) -> Any:
        ref = tmp_path / "straight-ref"
        return train_doremi_proxy(config, domains, ref, checkpoints=plan, on_step=on_step, **common)

    straight_ref = reference("straight-ref")
    straight = proxy()
    for name, trainer in (("ref", lambda plan, stop: reference("resumed-ref", plan, stop)), ("proxy", proxy)):
        plan = CheckpointPlan(tmp_path / f"checkpoints-{name}", fingerprint="f", every=3)
        with pytest.raises(Interrupted):
            trainer(plan, _interrupt_after(5))
        assert [c.name for c in plan.folder.iterdir()] == ["step-00000003"]
        progress: list[int] = []
        result = trainer(plan, progress.append)
        assert result.resumed_from == 3 and progress == [3, 1, 1, 1, 1, 1]
        if name == "ref":
            assert result.domain_loss == straight_ref.domain_loss
            assert (
                load_file(str(tmp_path / "resumed-ref" / "model.safetensors")).keys()
                == load_file(str(tmp_path / "straight-ref" / "model.safetensors")).keys()
            )
            resumed_w = load_file(str(tmp_path / "resumed-ref" / "model.safetensors"))
            straight_w = load_file(str(tmp_path / "straight-ref" / "model.safetensors"))
            assert resumed_w.keys() == straight_w.keys()
            assert all((resumed_w[k] == straight_w[k]).all() for k in straight_w)
        else:
            assert result.trajectory == straight.trajectory and result.weights == straight.weights
            assert result.history == straight.history and result.proxy_loss == straight.proxy_loss
        other = CheckpointPlan(plan.folder, fingerprint="other settings", every=100)
        assert trainer(other, None).resumed_from == 0


# ---------------------------------------------------------------------------------------------------------
# End to end: noise, a constant domain and a learnable one


def synthetic_domains(docs: int = 60, words: int = 120, seed: int = 0) -> pa.Table:
    """Three domains: `noise` (uniformly random letters and spaces: nothing to learn), `constant` (one word
    repeated: learnt at once) and `structured` (a random Markov chain over 40 made-up words, two successors
    each: learnable, but it takes a while)."""
    rng = random.Random(seed)
    letters = "abcdefghijklmnopqrstuvwxyz"
    vocab = ["".join(rng.choice(letters) for _ in range(rng.randint(3, 6))) for _ in range(40)]
    successors = {w: rng.sample(vocab, 2) for w in vocab}
    rows = []
    for _ in range(docs):
        rows.append(("noise", "".join(rng.choice(letters + " ") for _ in range(words * 5))))
        rows.append(("constant", " ".join(["zzz"] * words)))
        word, chain = rng.choice(vocab), []
        for _ in range(words):
            chain.append(word)
            word = rng.choice(successors[word])
        rows.append(("structured", " ".join(chain)))
    return pa.table(
        {
            "id": [f"syn-{i:05d}" for i in range(len(rows))],
            "text": [text for _, text in rows],
            "domain": [domain for domain, _ in rows],
        }
    )


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("synthetic") / "in"
    write_shards(synthetic_domains(), folder, rows_per_shard=90)
    return folder


@pytest.fixture(scope="module")
def doremi_run(synthetic: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from typer.testing import CliRunner

    from thresher.cli.app import app

    out = tmp_path_factory.mktemp("doremi") / "out"
    args = ["reweight", "doremi", str(synthetic), str(out), *TINY, "--max-steps", "200"]
    result = CliRunner().invoke(app, [*args, "--reference-steps", "300", "-w", "1", "-q"])
    assert result.exit_code == 0, result.output
    return out


def test_doremi_weights_the_learnable_domain_above_noise_and_constant(doremi_run: Path) -> None:
    document = json.loads((doremi_run / "domain_weights.json").read_text())
    weights = document["weights"]
    assert set(weights) == {"constant", "noise", "structured"}
    assert sum(weights.values()) == pytest.approx(1.0, abs=1e-5)
    assert weights["structured"] > weights["noise"]
    assert weights["structured"] > weights["constant"]
    assert document["eta"] == 1.0 and document["smoothing"] == 1e-3 and document["steps"] == 200


def test_manifest_holds_the_trajectory_and_the_average_includes_the_start(doremi_run: Path) -> None:
    manifest = read_manifest(doremi_run)
    summary = manifest["summary"]
    trajectory = summary["trajectory"]
    assert json.loads((doremi_run / "trajectory.json").read_text()) == trajectory
    assert not any("trajectory" in task["extra"] for task in manifest["tasks"])  # in the manifest once
    assert trajectory["domains"] == ["constant", "noise", "structured"]
    rows = np.array(trajectory["weights"])
    assert rows.shape == (201, 3)
    assert rows[0] == pytest.approx([1 / 3] * 3)
    assert rows.sum(axis=1) == pytest.approx(np.ones(201), abs=1e-5)
    average = [summary["weights"][d] for d in trajectory["domains"]]
    assert average == pytest.approx(rows.mean(axis=0), abs=1e-5)
    assert summary["domain_docs"] == {"constant": 60, "noise": 60, "structured": 60}
    mixture = summary["reference"]["mixture"]
    tokens = summary["domain_tokens"]
    assert mixture["noise"] == pytest.approx(tokens["noise"] / sum(tokens.values()), abs=1e-5)
    assert summary["proxy"]["seconds_per_step"] > 0


def test_outputs_are_a_tokenizer_and_a_loadable_reference_model(doremi_run: Path) -> None:
    from thresher.scorers.causal_lm import CausalLMScorer

    assert (doremi_run / "tokenizer.json").is_file()
    scorer = CausalLMScorer(doremi_run / "reference", device="cpu")
    scores = scorer.score(["zzz zzz zzz zzz zzz zzz zzz zzz", "qxv mwo pzl ekr tyb"])
    assert scores.ppl[0] < scores.ppl[1]  # the constant domain is easy for it


def test_rerunning_is_up_to_date(doremi_run: Path, synthetic: Path, cli: Cli) -> None:
    before = (doremi_run / "_manifest.json").read_bytes()  # its mtime is touched: confirmed current
    args = [
        "reweight",
        "doremi",
        synthetic,
        doremi_run,
        *TINY,
        "--max-steps",
        "200",
        "--reference-steps",
        "300",
    ]
    result = cli(*args, "-w", "1")
    assert result.exit_code == 0, result.output
    assert (doremi_run / "_manifest.json").read_bytes() == before


def test_a_killed_run_resumes_each_model_from_its_checkpoint(
    synthetic: Path, tmp_path: Path, cli: Cli
) -> None:
    """Killed while the proxy trains, the stage run again keeps the reference, resumes the proxy from its
    last checkpoint and writes the weights of an uninterrupted run."""
    steps = ["--max-steps", "60", "--reference-steps", "30", "--checkpoint-every", "10"]
    straight = tmp_path / "straight"
    assert cli("reweight", "doremi", synthetic, straight, *TINY, *steps, "-w", "1", "-q").exit_code == 0
    killed = tmp_path / "killed"
    command = [sys.executable, "-m", "thresher.cli", "reweight", "doremi", str(synthetic), str(killed)]
    proc = subprocess.Popen(
        [*command, *TINY, *steps, "-w", "1", "-q"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    checkpoint = killed / "_thresher" / "work" / "checkpoints" / "proxy" / "step-00000020"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and not checkpoint.is_dir() and proc.poll() is None:
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert checkpoint.is_dir() and not (killed / "_manifest.json").exists()
    reference_bytes = (killed / "reference" / "model.safetensors").read_bytes()

    assert cli("reweight", "doremi", synthetic, killed, *TINY, *steps, "-w", "1", "-q").exit_code == 0
    assert (killed / "reference" / "model.safetensors").read_bytes() == reference_bytes  # not retrained
    assert (killed / "domain_weights.json").read_bytes() == (straight / "domain_weights.json").read_bytes()
    assert (killed / "trajectory.json").read_bytes() == (straight / "trajectory.json").read_bytes()
    proxy = next(t for t in read_manifest(killed)["tasks"] if t["phase"] == "proxy")
    # Step 20's checkpoint or a later one (the kill may land a little after step 20's was written).
    assert proxy["extra"]["resumed_from"] >= 20 and proxy["extra"]["resumed_from"] % 10 == 0
    assert not (killed / "_thresher" / "work").exists()


def test_a_row_without_a_domain_is_a_one_line_error(tmp_path: Path, cli: Cli) -> None:
    table = synthetic_domains(docs=4)
    domains = table["domain"].to_pylist()
    domains[5] = None
    write_shards(table.set_column(2, "domain", pa.array(domains, pa.string())), tmp_path / "in", 100)
    result = cli("reweight", "doremi", tmp_path / "in", tmp_path / "out", *TINY, "-w", "1", "-q")
    assert_user_error(result, 1, "part-00000.parquet: row 5 has no domain", "'domain'")
    assert_no_output(tmp_path / "out")


def test_a_batch_smaller_than_the_domains_is_refused(tmp_path: Path, cli: Cli) -> None:
    write_shards(synthetic_domains(docs=10), tmp_path / "in", 100)
    args = ["reweight", "doremi", tmp_path / "in", tmp_path / "out", *TINY, "--max-steps", "2"]
    result = cli(*args, "--batch-size", "2", "-w", "1", "-q")
    assert_user_error(result, 1, "--batch-size 2 is smaller than the 3 domains")


def test_a_missing_domain_column_names_the_file(tmp_path: Path, cli: Cli) -> None:
    write_shards(synthetic_domains(docs=2).drop_columns(["domain"]), tmp_path / "in", 100)
    result = cli("reweight", "doremi", tmp_path / "in", tmp_path / "out", "-w", "1", "-q")
    assert_user_error(result, 1, "no column 'domain'")


def test_mix_samples_the_found_weights_in_proxy_tokens(doremi_run: Path, synthetic: Path, cli: Cli) -> None:
    from thresher.scorers.proxy_lm import load_tokenizer

    out = doremi_run.parent / "mix"
    weights, tokenizer = doremi_run / "domain_weights.json", doremi_run / "tokenizer.json"
    result = cli(
        "mix", synthetic, out, "--weights", weights, "--tokenizer", tokenizer, "--tokens", "20000", "-q"
    )
    assert result.exit_code == 0, result.output
    rows = read_rows(out)
    encoded = load_tokenizer(tokenizer).encode_batch([r["text"] for r in rows])
    counts = {d: 0 for d in ("constant", "noise", "structured")}
    for row, e in zip(rows, encoded, strict=True):
        counts[row["domain"]] += len(e.ids)
    requested = json.loads(weights.read_text())["weights"]
    for domain, n in counts.items():
        assert abs(n / sum(counts.values()) - requested[domain]) < 0.02


# ---------------------------------------------------------------------------------------------------------
# The recipe


def test_the_mixture_recipe_is_valid_and_wires_mix_to_doremi(tmp_path: Path) -> None:
    from thresher.pipelines.engine.recipe import load_recipe, resolve

    recipe = load_recipe(RECIPE)
    steps = resolve(recipe, REPO / "sample_data" / "web", tmp_path / "out")
    assert [s.step.stage.name for s in steps] == ["reweight-doremi", "mix"]
    assert steps[1].input_path == REPO / "sample_data" / "web"
    assert steps[1].params.weights == str(tmp_path / "out" / "00-reweight-doremi" / "domain_weights.json")
    assert steps[1].params.tokenizer == str(tmp_path / "out" / "00-reweight-doremi" / "tokenizer.json")


@pytest.mark.slow
def test_the_mixture_recipe_runs_on_the_sample_data(tmp_path: Path) -> None:
    from factories import run_cli

    out = tmp_path / "mixture"
    run_cli("run", str(RECIPE), "-i", str(REPO / "sample_data" / "web"), "-o", str(out), "-w", "2")
    weights = json.loads((out / "00-reweight-doremi" / "domain_weights.json").read_text())["weights"]
    assert set(weights) == {"code", "forum", "news", "recipes", "science"}
    summary = read_manifest(out / "01-mix")["summary"]
    assert summary["max_weight_error"] < 0.02
