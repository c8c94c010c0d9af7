"""LESS gradient features (Xia et al. 2024, "LESS: Selecting Influential Data for Targeted Instruction
Tuning"): a LoRA warmup of a small causal LM, then for every example and warmup checkpoint the gradient of
its answer-token loss with respect to the LoRA weights, made comparable by a seeded random projection and
L2 normalisation.

- Warmup (`warmup_lora`): LoRA (peft) on the four attention projections (q, k, v, o; `lora_targets`)
  of a small random part of the pool, for a few epochs with AdamW and a linear schedule, as LESS's
  reference trainer runs it: 128 examples per optimiser step (gradients accumulated over micro-batches),
  the step's loss the mean of each example's own mean answer-token loss, gradients clipped to norm 1.0.
  After each epoch a checkpoint holds the LoRA weights, AdamW's two moment estimates and the epoch's
  mean learning rate (the checkpoint's weight in the score).
- Features (`GradientFeaturizer`): per example (batch of one, eval mode, so no dropout), the flat LoRA
  gradient g. Pool examples are scored by the update Adam would make from that checkpoint,
  `m' / (sqrt(v') + eps)` with `m' = b1 m + (1 - b1) g` and `v' = b2 v + (1 - b2) g^2`; target examples by
  the plain gradient (`adam_direction`). Bias correction is left out: it scales every coordinate by the
  same factor, which the normalisation removes.
- Projection (`RademacherProjector`): a seeded d x k matrix of +-1/sqrt(k) signs, generated in row blocks
  from (seed, block) so it never has to exist whole; inner products are preserved in expectation with
  error shrinking like 1/sqrt(k) (Johnson-Lindenstrauss).
- Score (`subtask_scores`): the learning-rate-weighted sum over checkpoints of cosine similarities to each
  target example, averaged within each target subtask, then the maximum over subtasks.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import xxhash

from thresher.pipelines.engine.errors import ThresherError
from thresher.scorers.instruct_lm import Encoded, InstructLM
from thresher.scorers.torch_runtime import seed_torch
from thresher.scorers.training import EpochTrainer

log = logging.getLogger("thresher")
CHECKPOINT_META = "checkpoints.json"


# ---------------------------------------------------------------------------------------------------------
# The math, on plain arrays


def adam_direction(
    grad: np.ndarray, exp_avg: np.ndarray, exp_avg_sq: np.ndarray, beta1: float, beta2: float, eps: float
) -> np.ndarray:
    """The step direction Adam would take from moments (m, v) on seeing gradient g (rows: examples)."""
    m = beta1 * exp_avg + (1.0 - beta1) * grad
    v = beta2 * exp_avg_sq + (1.0 - beta2) * grad * grad
    return m / (np.sqrt(v) + eps)


def normalise_rows(x: np.ndarray) -> np.ndarray:
    """Unit rows; an all-zero row (no gradient) becomes NaN so it can never look similar to anything."""
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(norms > 0, x / norms, np.nan).astype(np.float32)


def subtask_scores(
    similarity: np.ndarray, subtasks: Sequence[str] | np.ndarray
) -> tuple[np.ndarray, list[str]]:
    """(n_pool, n_target) similarities -> per pool row, the best subtask's mean similarity.

    Returns the scores and the name of the winning subtask of each row (the first in sorted order on a
    tie)."""
    subtasks = np.asarray(subtasks)
    names = sorted(set(subtasks.tolist()))
    if not names:
        raise ValueError("no target examples")
    means = np.stack([similarity[:, subtasks == name].mean(axis=1) for name in names], axis=1)
    best = np.argmax(means, axis=1)
    return means[np.arange(len(means)), best], [names[i] for i in best]


class RademacherProjector:
    """x -> x P with P[i, j] = +-1/sqrt(k), signs drawn from a hash of (seed, row block): the same seed
    gives the same P on any machine, and P is built block by block (cached when it is small)."""

    BLOCK_ROWS = 4096
    CACHE_ENTRIES = 1 << 24  # 64 MB of float32: beyond that, blocks are regenerated per call

    def __init__(self, dim_in: int, dim_out: int, seed: int) -> None:
        if dim_in < 1 or dim_out < 1:
            raise ValueError("projection dimensions must be positive")
        self.dim_in, self.dim_out, self.seed = dim_in, dim_out, seed
        self._cache: np.ndarray | None = None
        if dim_in * dim_out <= self.CACHE_ENTRIES:
            self._cache = np.concatenate([self._block(b) for b in range(self._blocks)], axis=0)

    @property
    def _blocks(self) -> int:
        return math.ceil(self.dim_in / self.BLOCK_ROWS)

    def _block(self, b: int) -> np.ndarray:
        rows = min(self.BLOCK_ROWS, self.dim_in - b * self.BLOCK_ROWS)
        block_seed = xxhash.xxh3_64_intdigest(f"rademacher:{self.seed}:{b}".encode())
        signs = np.random.default_rng(block_seed).integers(0, 2, size=(rows, self.dim_out), dtype=np.int8)
        return (signs.astype(np.float32) * 2.0 - 1.0) / np.float32(math.sqrt(self.dim_out))

    def project(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float32)
        if x.shape[-1] != self.dim_in:
            raise ValueError(f"expected vectors of {self.dim_in} values, got {x.shape[-1]}")
        if self._cache is not None:
            return x @ self._cache
        out = np.zeros((*x.shape[:-1], self.dim_out), dtype=np.float32)
        for b in range(self._blocks):
            lo = b * self.BLOCK_ROWS
            out += x[..., lo : lo + self.BLOCK_ROWS] @ self._block(b)
        return out


# ---------------------------------------------------------------------------------------------------------
# Warmup


# The attention projections LESS wraps (q, k, v, o), under the names architectures give them; the first
# set a model has every name of wins. A fused q/k/v layer (GPT-2's c_attn, GPT-NeoX's query_key_value)
# stands for all three. Names match as peft matches them: the whole module name or its last parts.
ATTENTION_PROJECTIONS: tuple[tuple[str, ...], ...] = (
    ("q_proj", "k_proj", "v_proj", "o_proj"),  # Llama, Mistral, Qwen2, Gemma (LESS's models)
    ("q_proj", "k_proj", "v_proj", "out_proj"),  # OPT, GPT-J, GPT-Neo
    ("q_proj", "k_proj", "v_proj", "dense"),  # Phi
    ("c_attn", "attn.c_proj"),  # GPT-2 and the proxy LM (attn.c_proj: not the MLP's c_proj)
    ("query_key_value", "dense"),  # GPT-NeoX, Falcon, BLOOM
)


@dataclass(frozen=True)
class LoraSettings:
    rank: int = 128
    alpha: int = 512
    dropout: float = 0.1
    # None: the attention projections (`ATTENTION_PROJECTIONS`); peft's default where none match.
    target_modules: tuple[str, ...] | None = None


@dataclass(frozen=True)
class WarmupSettings:
    epochs: int = 4
    learning_rate: float = 2e-5
    batch_size: int = 128  # examples per optimiser step (LESS: 1 per device x 32 accumulated x 4 GPUs)
    micro_batch_size: int = 16  # examples per forward/backward pass: memory, not the optimisation
    max_grad_norm: float = 1.0  # the HF Trainer's default, which LESS trains with; 0: no clipping
    seed: int = 0
    lora: LoraSettings = LoraSettings()


@dataclass(frozen=True)
class CheckpointInfo:
    path: str  # safetensors file: LoRA weights and AdamW moments
    epoch: int
    learning_rate: float  # mean learning rate over the epoch: the checkpoint's weight in the score
    steps: int


@dataclass(frozen=True)
class WarmupResult:
    checkpoints: list[CheckpointInfo]
    target_modules: list[str]  # what LoRA wrapped, as peft reports it
    steps_per_epoch: int
    micro_batches_per_step: int
    epoch_loss: list[float]


def _module_names(model: Any) -> list[str]:
    return [n for n, _ in model.named_modules()]


def _has_module(names: Sequence[str], target: str) -> bool:
    return any(n == target or n.endswith("." + target) for n in names)


def lora_targets(model: Any, lora: LoraSettings) -> tuple[str, ...] | None:
    """The module names LoRA wraps: the user's, else the model's attention projections, else None
    (peft's default for the architecture)."""
    if lora.target_modules:
        return lora.target_modules
    names = _module_names(model)
    return next((c for c in ATTENTION_PROJECTIONS if all(_has_module(names, t) for t in c)), None)


def _lora_model(lm: InstructLM, lora: LoraSettings) -> Any:
    from peft import LoraConfig, TaskType, get_peft_model
    from transformers.pytorch_utils import Conv1D

    targets = lora_targets(lm.model, lora)
    if targets is None:
        log.info("LESS: no q/k/v/o attention projections found by name; LoRA wraps peft's default modules")
    # GPT-2 keeps its projections in Conv1D (weights stored transposed): tell peft, rather than have it
    # guess with a warning.
    transposed = any(isinstance(m, Conv1D) for m in lm.model.modules())
    config = LoraConfig(
        task_type=TaskType.CAUSAL_LM,
        fan_in_fan_out=transposed,
        r=lora.rank,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=list(targets) if targets else None,
    )
    try:
        return get_peft_model(lm.model, config)
    except ValueError as exc:
        raise ThresherError(
            f"LoRA cannot wrap this model ({' '.join(str(exc).split())[:200]}); "
            "name its projection modules with --lora-target-modules"
        ) from None


def wrapped_modules(model: Any) -> list[str]:
    """The target module names a peft model was built with (sorted), for the manifest."""
    config = next(iter(model.peft_config.values()))
    return sorted(config.target_modules)


def _lora_params(model: Any) -> list[tuple[str, Any]]:
    """The trainable LoRA tensors in a fixed (name) order: the layout of every flat gradient."""
    return sorted((n, p) for n, p in model.named_parameters() if p.requires_grad)


def accumulate_step(lm: InstructLM, batch: Sequence[Encoded], micro_batch_size: int, autocast: Any) -> float:
    """Backpropagate one optimiser step's loss: the mean over `batch` of each example's mean
    answer-token loss, `micro_batch_size` examples per forward pass, gradients adding up in `.grad`.

    This is what LESS's trainer computes (one example per device, gradients accumulated and averaged), so
    a long answer weighs as much as a short one, and the gradient does not depend on the micro-batch
    size. Returns the sum of the examples' losses."""
    total = 0.0
    for lo in range(0, len(batch), micro_batch_size):
        losses = lm.example_losses(batch[lo : lo + micro_batch_size], autocast)
        (losses.sum() / len(batch)).backward()
        total += float(losses.detach().sum())
    return total


def warmup_lora(
    model_path: str, examples: Sequence[Encoded], out_dir: Path, settings: WarmupSettings, device: str
) -> WarmupResult:
    """Train LoRA on `examples` and write one checkpoint per epoch to `out_dir`."""
    import torch
    from safetensors.torch import save_file

    usable = [e for e in examples if e.answer_tokens > 0]
    if not usable:
        raise ThresherError("LESS warmup: no warmup example has answer tokens left within --max-length")
    lm = InstructLM(model_path, device=device, for_training=True)  # type: ignore[arg-type]
    seed_torch(settings.seed)
    model = _lora_model(lm, settings.lora)
    lm.model = model
    params = _lora_params(model)
    trainable = [p for _, p in params]
    trainer = EpochTrainer(
        trainable,
        [len(e.ids) for e in usable],
        epochs=settings.epochs,
        batch_size=settings.batch_size,
        learning_rate=settings.learning_rate,
        seed=settings.seed,
        max_grad_norm=settings.max_grad_norm,
    )
    optimizer = trainer.optimizer
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=lm.placement.is_cuda)
    beta1, beta2 = optimizer.param_groups[0]["betas"]
    eps = optimizer.param_groups[0]["eps"]
    out_dir.mkdir(parents=True, exist_ok=True)
    checkpoints, epoch_loss = [], []
    model.train()

    def backward(batch: np.ndarray) -> float:
        return accumulate_step(lm, [usable[i] for i in batch], settings.micro_batch_size, autocast)

    for epoch in trainer.run(backward):
        tensors = {}
        for name, p in params:
            state = optimizer.state[p]
            tensors[f"weight::{name}"] = p.detach().float().cpu().contiguous()
            tensors[f"exp_avg::{name}"] = state["exp_avg"].float().cpu().contiguous()
            tensors[f"exp_avg_sq::{name}"] = state["exp_avg_sq"].float().cpu().contiguous()
        number = epoch.index + 1
        path = out_dir / f"epoch-{number}.safetensors"
        meta = {"beta1": str(beta1), "beta2": str(beta2), "eps": str(eps), "step": str(epoch.steps)}
        save_file(tensors, str(path), metadata=meta)
        checkpoints.append(
            CheckpointInfo(str(path), number, float(np.mean(epoch.learning_rates)), epoch.steps)
        )
        epoch_loss.append(round(epoch.loss_sum / len(usable), 6))
        log.info("LESS warmup: epoch %d/%d loss %.4f", number, settings.epochs, epoch_loss[-1])
    (out_dir / CHECKPOINT_META).write_text(
        json.dumps([c.__dict__ for c in checkpoints], indent=2) + "\n", encoding="utf-8"
    )
    return WarmupResult(
        checkpoints,
        wrapped_modules(model),
        trainer.steps_per_epoch,
        math.ceil(min(settings.batch_size, len(usable)) / settings.micro_batch_size),
        epoch_loss,
    )


def read_checkpoints(out_dir: Path) -> list[CheckpointInfo]:
    data = json.loads((out_dir / CHECKPOINT_META).read_text(encoding="utf-8"))
    return [CheckpointInfo(**c) for c in data]


# ---------------------------------------------------------------------------------------------------------
# Features


class GradientFeaturizer:
    """Per-example LoRA gradient features at each warmup checkpoint: projected and L2-normalised."""

    def __init__(
        self,
        model_path: str,
        checkpoints: Sequence[CheckpointInfo],
        lora: LoraSettings,
        proj_dim: int,
        seed: int,
        device: str,
        max_length: int,
        batch_size: int = 16,
    ) -> None:
        from safetensors import safe_open

        self.lm = InstructLM(model_path, device=device, max_length=max_length, for_training=True)  # type: ignore[arg-type]
        seed_torch(seed)
        self.model = _lora_model(self.lm, lora)
        self.lm.model = self.model
        self.model.eval()  # no dropout: a feature must not depend on a random mask
        self.params = _lora_params(self.model)
        self.dim = int(sum(p.numel() for _, p in self.params))
        self.checkpoints = list(checkpoints)
        self.states: list[dict[str, Any]] = []
        for c in self.checkpoints:
            with safe_open(c.path, framework="pt") as f:
                meta = f.metadata()
                tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open has no __iter__
            names = [n for n, _ in self.params]
            missing = [n for n in names if f"weight::{n}" not in tensors]
            if missing:
                raise ThresherError(f"{c.path}: checkpoint lacks LoRA weights for {missing[0]}")
            self.states.append(
                {
                    "weights": [tensors[f"weight::{n}"] for n in names],
                    "exp_avg": np.concatenate([tensors[f"exp_avg::{n}"].numpy().ravel() for n in names]),
                    "exp_avg_sq": np.concatenate(
                        [tensors[f"exp_avg_sq::{n}"].numpy().ravel() for n in names]
                    ),
                    "beta1": float(meta["beta1"]),
                    "beta2": float(meta["beta2"]),
                    "eps": float(meta["eps"]),
                }
            )
        self.proj_dim = min(proj_dim, self.dim)
        self.projector = RademacherProjector(self.dim, self.proj_dim, seed)
        self.batch_size = batch_size
        self._hooked = _linear_modules_of(self.model, [n for n, _ in self.params])

    def _load(self, index: int) -> None:
        import torch

        with torch.no_grad():
            for (_, p), w in zip(self.params, self.states[index]["weights"], strict=True):
                p.copy_(w.to(p.device, p.dtype))

    def gradients_one_by_one(self, examples: Sequence[Encoded]) -> np.ndarray:
        """Per-example flat LoRA gradients, one backward pass each (the reference for `gradients`)."""
        import torch

        autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.lm.placement.is_cuda)
        rows = []
        for example in examples:
            for _, p in self.params:
                p.grad = None
            self.lm.batch_loss([example], autocast).backward()
            rows.append(
                torch.cat([p.grad.detach().float().reshape(-1) for _, p in self.params]).cpu().numpy()
            )
        return np.stack(rows) if rows else np.zeros((0, self.dim), np.float32)

    def gradients(self, examples: Sequence[Encoded]) -> np.ndarray:
        """Per-example flat LoRA gradients of each example's mean answer-token loss, from one batched
        forward and backward pass.

        Every LoRA tensor is the weight W of a bias-free linear map z = u W^T, so the gradient of example
        i is sum_t dL/dz[i, t]^T u[i, t]: hooks keep each map's input u and output gradient dL/dz, and
        the loss is the sum of the examples' own mean losses, so no example's gradient mixes with
        another's. Padding sits after the real tokens and has no loss, so it adds nothing."""
        import torch

        if self._hooked is None:
            return self.gradients_one_by_one(examples)
        captured: dict[str, dict[str, Any]] = {name: {} for name in self._hooked}
        handles = []
        for name, module in self._hooked.items():

            def keep(mod: Any, args: Any, out: Any, slot: dict[str, Any] = captured[name]) -> None:
                slot["u"] = args[0].detach()
                out.register_hook(lambda g, slot=slot: slot.__setitem__("g", g.detach()))

            handles.append(module.register_forward_hook(keep))
        try:
            autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.lm.placement.is_cuda)
            self.lm.example_losses(examples, autocast).sum().backward()
            parts = []
            for name, _ in self.params:
                slot = captured[name]
                grad = torch.einsum("bto,bti->boi", slot["g"].float(), slot["u"].float())
                parts.append(grad.reshape(len(examples), -1))
            return torch.cat(parts, dim=1).cpu().numpy()
        finally:
            for handle in handles:
                handle.remove()
            for _, p in self.params:
                p.grad = None

    def features(self, examples: Sequence[Encoded], adam: bool) -> np.ndarray:
        """(checkpoints, len(examples), proj_dim) float32 unit rows; NaN rows for examples with no answer
        tokens (no gradient to compare)."""
        out = np.full((len(self.checkpoints), len(examples), self.proj_dim), np.nan, dtype=np.float32)
        usable = [i for i, e in enumerate(examples) if e.answer_tokens > 0]
        if not usable:
            return out
        for c, state in enumerate(self.states):
            self._load(c)
            grads = np.concatenate(
                [
                    self.gradients([examples[i] for i in batch])
                    for batch in _batches_of(usable, [len(examples[i].ids) for i in usable], self.batch_size)
                ]
            )
            order = np.concatenate(
                _batches_of(usable, [len(examples[i].ids) for i in usable], self.batch_size)
            )
            grads = grads[np.argsort(order, kind="stable")]
            if adam:
                grads = adam_direction(
                    grads, state["exp_avg"], state["exp_avg_sq"], state["beta1"], state["beta2"], state["eps"]
                )
            out[c, usable] = normalise_rows(self.projector.project(grads))
        return out


def _batches_of(items: Sequence[int], lengths: Sequence[int], batch_size: int) -> list[np.ndarray]:
    """`items` in length-bucketed batches (see torch_runtime.length_batches)."""
    from thresher.scorers.torch_runtime import length_batches

    items = np.asarray(items)
    return [items[b] for b in length_batches(lengths, batch_size)]


def _linear_modules_of(model: Any, param_names: Sequence[str]) -> dict[str, Any] | None:
    """The bias-free nn.Linear owning each trainable weight, by parameter name; None when some trainable
    tensor is anything else (then gradients are taken one example at a time)."""
    import torch

    modules = dict(model.named_modules())
    found = {}
    for name in param_names:
        owner, _, leaf = name.rpartition(".")
        module = modules.get(owner)
        if leaf != "weight" or not isinstance(module, torch.nn.Linear) or module.bias is not None:
            return None
        found[name] = module
    return found
