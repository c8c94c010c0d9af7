"""LESS: the math (Adam feature, random projection, subtask aggregation), batched per-example gradients
against one backward pass per example, and `select less` end to end with a tiny GPT-2 built here."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import read_manifest, read_rows
from factories import write_shards
from tiny_models import build_tiny_gpt2

from thresher.pipelines.engine.recipe import load_recipe
from thresher.pipelines.engine.shards import ShardSet
from thresher.pipelines.engine.stage import StageContext
from thresher.pipelines.stages.select.instruction import InstructionParams
from thresher.pipelines.stages.select.less import LESSParams, LESSSelect
from thresher.pipelines.testing.sample_data import generate_instructions
from thresher.scorers import lora_grads
from thresher.scorers.lora_grads import (
    GradientFeaturizer,
    LoraSettings,
    RademacherProjector,
    WarmupSettings,
    adam_direction,
    lora_targets,
    normalise_rows,
    subtask_scores,
    warmup_lora,
    wrapped_modules,
)

LORA = LoraSettings(rank=4, alpha=16, dropout=0.0)
REPO = Path(__file__).resolve().parent.parent
RECIPE = REPO / "recipes" / "instruct-select.yaml"


def test_adam_feature_equals_the_formula_for_hand_set_moments() -> None:
    g = np.array([[0.5, -2.0, 0.0, 1e-3]])
    m = np.array([0.1, 0.2, -0.3, 0.0])
    v = np.array([0.04, 0.01, 0.09, 0.0])
    b1, b2, eps = 0.9, 0.999, 1e-8
    expected = []
    for gi, mi, vi in zip(g[0], m, v, strict=True):
        m_new = 0.9 * mi + 0.1 * gi
        v_new = 0.999 * vi + 0.001 * gi * gi
        expected.append(m_new / (np.sqrt(v_new) + 1e-8))
    assert adam_direction(g, m, v, b1, b2, eps)[0] == pytest.approx(expected, rel=1e-12)
    # With zero moments, the first Adam step is sign(g) up to eps: sqrt((1-b2) g^2) = sqrt(1-b2) |g|.
    first = adam_direction(g[:, :2], np.zeros(2), np.zeros(2), b1, b2, 0.0)[0]
    assert first == pytest.approx(0.1 / np.sqrt(0.001) * np.sign(g[0, :2]))


def test_projected_inner_products_approach_the_raw_ones_as_dimension_grows() -> None:
    rng = np.random.default_rng(0)
    x = normalise_rows(rng.normal(size=(40, 3000)) + rng.normal(size=(1, 3000)))  # correlated rows
    raw = x @ x.T
    errors = []
    for k in (32, 256, 2048):
        y = RademacherProjector(3000, k, seed=1).project(x)
        errors.append(np.abs(y @ y.T - raw).mean())
    assert errors[0] > errors[1] > errors[2]
    assert errors[2] < 0.05
    # Error ~ 1/sqrt(k): 64 times the dimension, about an eighth of the error.
    assert errors[2] < errors[0] / 4


def test_projection_is_seeded_and_the_same_built_whole_or_by_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    x = np.random.default_rng(3).normal(size=(5, 9000)).astype(np.float32)
    cached = RademacherProjector(9000, 64, seed=4)
    assert cached._cache is not None
    monkeypatch.setattr(RademacherProjector, "CACHE_ENTRIES", 0)
    streamed = RademacherProjector(9000, 64, seed=4)
    assert streamed._cache is None
    np.testing.assert_allclose(cached.project(x), streamed.project(x), rtol=1e-5, atol=1e-4)
    other = RademacherProjector(9000, 64, seed=5).project(x)
    assert not np.allclose(other, cached.project(x))


def test_subtask_aggregation_is_mean_within_then_max_across() -> None:
    similarity = np.array(
        [
            [0.9, 0.1, 0.0, 0.2, 0.2],
            [0.0, 0.0, 0.6, 0.5, 0.4],
            [0.3, 0.3, -1.0, 1.0, 1.0],
        ]
    )
    subtasks = ["a", "a", "b", "b", "b"]
    scores, best = subtask_scores(similarity, subtasks)
    # a: means 0.5, 0.0, 0.3; b: means 0.1333, 0.5, 0.3333
    assert scores == pytest.approx([0.5, 0.5, 1 / 3])
    assert best == ["a", "b", "b"]


@pytest.fixture(scope="module")
def gpt2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_gpt2(tmp_path_factory.mktemp("models") / "gpt2", context=256)


def _encoded(featurizer: GradientFeaturizer, rows: list[dict]) -> list:
    return featurizer.lm.encode(
        [r["instruction"] for r in rows], [r["input"] for r in rows], [r["output"] for r in rows]
    )


def test_batched_gradients_and_adam_features_match_one_example_at_a_time(gpt2: Path, tmp_path: Path) -> None:
    import torch

    torch.set_num_threads(1)
    rows = generate_instructions(40, seed=4).to_pylist()
    featurizer = GradientFeaturizer(str(gpt2), [], LORA, 64, 0, "cpu", 256)
    warm = _encoded(featurizer, rows[:16])
    settings = WarmupSettings(epochs=2, learning_rate=1e-3, batch_size=8, lora=LORA)
    checkpoints = warmup_lora(str(gpt2), warm, tmp_path / "ckpt", settings, "cpu").checkpoints
    assert [c.epoch for c in checkpoints] == [1, 2]
    assert checkpoints[0].learning_rate > checkpoints[1].learning_rate > 0  # linear decay
    featurizer = GradientFeaturizer(str(gpt2), checkpoints, LORA, 64, 0, "cpu", 256, batch_size=8)
    assert featurizer._hooked is not None
    examples = _encoded(featurizer, rows[16:40])
    featurizer._load(1)
    batched = featurizer.gradients(examples)
    single = featurizer.gradients_one_by_one(examples)
    np.testing.assert_allclose(batched, single, rtol=1e-4, atol=1e-7)
    # The Adam feature of the pipeline is the formula applied to the checkpoint's own moments.
    state = featurizer.states[1]
    expected = normalise_rows(
        featurizer.projector.project(
            adam_direction(
                single, state["exp_avg"], state["exp_avg_sq"], state["beta1"], state["beta2"], state["eps"]
            )
        )
    )
    features = featurizer.features(examples, adam=True)
    np.testing.assert_allclose(features[1], expected, rtol=1e-3, atol=1e-4)
    assert np.linalg.norm(features, axis=2) == pytest.approx(1.0, abs=1e-5)
    plain = featurizer.features(examples, adam=False)
    assert not np.allclose(plain[1], features[1])
    assert lora_grads.read_checkpoints(tmp_path / "ckpt") == checkpoints


def test_less_defaults_are_the_reference_scripts(tmp_path: Path) -> None:
    """The effective warmup configuration of a default `select less` run, against LESS's scripts
    (base_training_args.sh: r 128, alpha 512, dropout 0.1 on q/k/v/o, lr 2e-5, 4 epochs, 2048 tokens,
    1 example x 32 accumulation steps per GPU on 4 GPUs, the HF Trainer's clipping at 1.0)."""
    params = LESSParams(target="t", model="m")
    stage = LESSSelect(params, StageContext(tmp_path / "in", tmp_path / "out", seed=3))
    settings = stage._warmup_settings()
    assert settings == WarmupSettings(
        epochs=4,
        learning_rate=2e-5,
        batch_size=128,
        micro_batch_size=16,
        max_grad_norm=1.0,
        seed=3,
        lora=LoraSettings(rank=128, alpha=512, dropout=0.1, target_modules=None),
    )
    assert params.max_length == 2048 and params.warmup_fraction == 0.05 and params.proj_dim == 8192
    # --max-length stays the shared instruction default elsewhere (MoDS, whose reward model reads 512).
    assert InstructionParams.model_fields["max_length"].default == 512


def test_lora_wraps_the_four_attention_projections_by_default(gpt2: Path) -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    llama = LlamaForCausalLM(
        LlamaConfig(
            hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
            num_key_value_heads=2, vocab_size=64, bos_token_id=0, eos_token_id=0, pad_token_id=0,
        )
    )  # fmt: skip
    assert lora_targets(llama, LoraSettings()) == ("q_proj", "k_proj", "v_proj", "o_proj")
    assert lora_targets(llama, LoraSettings(target_modules=("q_proj", "v_proj"))) == ("q_proj", "v_proj")
    import torch

    assert lora_targets(torch.nn.Sequential(torch.nn.Linear(2, 2)), LoraSettings()) is None  # peft decides
    # GPT-2 fuses q, k and v into c_attn; o is the attention's c_proj, not the MLP's.
    featurizer = GradientFeaturizer(str(gpt2), [], LORA, 64, 0, "cpu", 256)
    assert wrapped_modules(featurizer.model) == ["attn.c_proj", "c_attn"]
    names = [n for n, _ in featurizer.params]
    assert any(".attn.c_proj.lora_A" in n for n in names) and any(".attn.c_attn.lora_B" in n for n in names)
    assert not any(".mlp." in n for n in names)
    assert featurizer._hooked is not None  # still the batched per-example gradients


def test_a_warmup_step_is_the_mean_of_per_example_losses_and_is_clipped(
    gpt2: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch

    torch.set_num_threads(1)
    rows = generate_instructions(12, seed=5).to_pylist()
    featurizer = GradientFeaturizer(str(gpt2), [], LORA, 64, 0, "cpu", 256)
    examples = _encoded(featurizer, rows)[:8]
    assert len({e.answer_tokens for e in examples}) > 1  # answers of different lengths
    no_autocast = torch.autocast("cuda", enabled=False)

    def step_gradient(micro: int) -> np.ndarray:
        for _, p in featurizer.params:
            p.grad = None
        lora_grads.accumulate_step(featurizer.lm, examples, micro, no_autocast)
        return torch.cat([p.grad.reshape(-1) for _, p in featurizer.params]).numpy().copy()

    per_example = featurizer.gradients_one_by_one(examples)
    for micro in (3, 8):
        np.testing.assert_allclose(step_gradient(micro), per_example.mean(axis=0), rtol=1e-4, atol=1e-7)
    # Not the mean over all tokens of the batch, which weighs long answers more.
    for _, p in featurizer.params:
        p.grad = None
    featurizer.lm.batch_loss(examples, no_autocast).backward()
    token_mean = torch.cat([p.grad.reshape(-1) for _, p in featurizer.params]).numpy()
    assert not np.allclose(token_mean, per_example.mean(axis=0), rtol=1e-3)
    # Every optimiser step clips the accumulated gradient at --max-grad-norm; 0 turns it off.
    calls: list[float] = []
    clip = torch.nn.utils.clip_grad_norm_

    def recording(parameters: Any, max_norm: float, *args: Any, **kwargs: Any) -> Any:
        calls.append(max_norm)
        return clip(parameters, max_norm, *args, **kwargs)

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", recording)
    settings = WarmupSettings(epochs=2, learning_rate=1e-3, batch_size=4, micro_batch_size=3, lora=LORA)
    result = warmup_lora(str(gpt2), examples, tmp_path / "a", settings, "cpu")
    assert calls == [1.0] * 4 and result.steps_per_epoch == 2 and result.micro_batches_per_step == 2
    assert [c.steps for c in result.checkpoints] == [2, 4]
    calls.clear()
    unclipped = dataclasses.replace(settings, max_grad_norm=0.0)
    warmup_lora(str(gpt2), examples, tmp_path / "b", unclipped, "cpu")
    assert calls == []


def _sets(tmp_path: Path, target_task: str) -> tuple[Path, Path, pa.Table]:
    pool = generate_instructions(360, seed=3)
    write_shards(pool, tmp_path / "pool", rows_per_shard=130)
    target = generate_instructions(200, seed=9)
    mask = np.array([t == target_task for t in target["task"].to_pylist()]) & np.array(
        target["is_correct"].to_pylist()
    )
    write_shards(target.filter(pa.array(mask)).slice(0, 8), tmp_path / "target", rows_per_shard=8)
    return tmp_path / "pool", tmp_path / "target", pool


def test_less_puts_the_target_task_in_the_top_fraction(gpt2: Path, tmp_path: Path, cli) -> None:
    pool_dir, target_dir, pool = _sets(tmp_path, "list")
    out = tmp_path / "out"
    args = [
        "select", "less", pool_dir, out, "--target", target_dir, "--model", gpt2,
        "--fraction", "0.1", "--warmup-fraction", "0.1", "--epochs", "2", "--learning-rate", "1e-3",
        "--lora-rank", "4", "--lora-alpha", "16", "--lora-dropout", "0", "--proj-dim", "256",
        "--max-length", "256", "--batch-size", "16", "--device", "cpu", "-w", "1", "-q",
    ]  # fmt: skip
    result = cli(*args)
    assert result.exit_code == 0, result.output
    kept = read_rows(out)
    tasks = pool["task"].to_pylist()
    base_rate = tasks.count("list") / len(tasks)
    precision = sum(r["task"] == "list" for r in kept) / len(kept)
    print(f"LESS list precision {precision:.2f} at base rate {base_rate:.2f}")
    assert len(kept) == round(0.1 * len(tasks))
    assert precision >= 2.5 * base_rate
    assert len({r["task"] for r in pool.to_pylist()}) >= 3
    scores = [r["less_score"] for r in kept]
    dropped = pq.read_table(out / "_dropped")
    assert min(scores) >= np.nanmax(
        np.array([float(d) for d in dropped["detail"].to_pylist() if d], dtype=float)
    )
    manifest = read_manifest(out)
    totals = manifest["totals"]
    assert totals["rows_in"] == len(tasks) == totals["rows_out"] + sum(totals["dropped"].values())
    summary = manifest["summary"]
    assert summary["selection"]["selected"] == len(kept)
    assert summary["target"]["proj_dim"] == 256 and summary["target"]["subtasks"] == {"list": 8}
    assert [c["epoch"] for c in summary["warmup"]["checkpoints"]] == [1, 2]
    # The reference warmup's shape, in effect: q/k/v/o LoRA (GPT-2's c_attn + attn.c_proj), 128 examples
    # per optimiser step (so the 36 warmup rows make one step an epoch), clipping at 1.0.
    warmup = summary["warmup"]
    assert warmup["lora_target_modules"] == ["attn.c_proj", "c_attn"]
    assert warmup["examples_per_step"] == 128 and warmup["micro_batches_per_step"] == 3
    assert warmup["steps_per_epoch"] == 1 == -(-warmup["warmup_rows"] // 128)
    assert warmup["max_grad_norm"] == 1.0 and warmup["max_length"] == 256
    assert set(totals["dropped"]) <= {"below_top_fraction", "no_answer_tokens", "unscorable"}
    assert totals["dropped"].get("no_answer_tokens", 0) == sum(summary["failures"].values())
    # Same seed, same selection; the rerun is a no-op that reads the finished manifest.
    again = cli(*args)
    assert again.exit_code == 0 and read_rows(out) == kept


def test_less_rejects_a_missing_model_in_one_line(tmp_path: Path, cli) -> None:
    pool_dir, target_dir, _ = _sets(tmp_path, "qa")
    result = cli(
        "select",
        "less",
        pool_dir,
        tmp_path / "out",
        "--target",
        target_dir,
        "--model",
        tmp_path / "nope",
        "-q",
    )
    assert result.exit_code != 0
    message = result.output.strip().splitlines()
    assert len(message) == 1 and "nope" in message[0]


def test_instruct_select_recipe_is_valid_and_its_target_set_is_there() -> None:
    recipe = load_recipe(RECIPE)
    assert [s.stage.name for s in recipe.steps] == ["exact-dedup", "proxy-train", "select-less"]
    target = ShardSet.open(REPO / recipe.steps[2].params["target"], ["id", "instruction", "output"])
    tasks = [t for s in target.shards for t in pq.read_table(s.path)["task"].to_pylist()]
    assert tasks == ["list"] * 10


@pytest.mark.slow
def test_instruct_select_recipe_runs_on_the_sample_data(
    tmp_path: Path, cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # the recipe names its target set relative to its own folder
    out = tmp_path / "run"
    result = cli(
        "run", RECIPE, "--input", REPO / "sample_data" / "instructions", "--output", out, "-w", "2", "-q"
    )
    assert result.exit_code == 0, result.output
    kept = read_rows(out / "02-select-less")
    deduped = read_manifest(out / "00-exact-dedup")["totals"]["rows_out"]
    assert deduped < 1000  # the generator repeats some instruction + input pairs
    # The top fraction is a share of the rows LESS could score (pipelines/stats: missing scores are out).
    less = read_manifest(out / "02-select-less")["totals"]
    scored = less["rows_in"] - less["dropped"].get("no_answer_tokens", 0)
    assert less["rows_in"] == deduped and scored < deduped
    assert len(kept) == round(0.1 * scored)
    assert sum(r["task"] == "list" for r in kept) / len(kept) > 0.5  # 15% of the sample data
