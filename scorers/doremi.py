"""DoReMi domain reweighting (Xie et al., 2023) with the small GPT-2 proxy of `scorers/proxy_lm.py`.

Two models of one size, trained from scratch on per-domain token streams:

1. a **reference** model on a fixed baseline mixture (by default proportional to each domain's tokens);
2. a **proxy** model trained with Group DRO against it. Every step draws a batch with windows from every
   domain (stratified: the batch is split as evenly as the domains allow), and then:

   - excess[i] = mean over domain i's predicted tokens of max(proxy token loss - reference token loss, 0);
     a domain absent from the batch keeps its last excess;
   - weights = (1 - c) * softmax(log(weights) + eta * excess) + c / k   (`doremi_update`);
   - the proxy's loss is sum_i weights[i] * (mean token loss of domain i), with the new weights.

The answer is the mean of the weights over every step, the initial weights included (`average_weights`).

Stratified batches matter: with batches drawn from the data's own mixture, a small domain is often missing
from a batch; its weight then moves on stale excess alone and users of the reference code saw the weights
collapse to one domain.

The tokenizer, model config presets, model construction, learning-rate schedule, window sampler and device
choice come from `proxy_lm` and `device`; this module adds only what DoReMi needs on top. torch and
transformers are imported inside the functions. Nothing is pickled: models are written with
`save_pretrained` (safetensors) and read back with `use_safetensors=True`.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from thresher.pipelines.engine.errors import ThresherError
from thresher.scorers.checkpoints import CheckpointPlan
from thresher.scorers.device import DeviceName, Placement, resolve_device
from thresher.scorers.proxy_lm import EOS, ProxyConfig, WindowSampler, build_model, learning_rate
from thresher.scorers.training import (
    adamw_decay_matrices,
    autocast_for,
    backward_and_step,
    deterministic_training,
    seeded_generator,
    training_steps,
)

log = logging.getLogger("thresher")

# Fixed windows per domain for the before/after loss report: small, and the same for both models.
EVAL_WINDOWS = 8


# ---------------------------------------------------------------------------------------------------------
# The Group DRO update (pure numpy: unit-testable without torch)


def doremi_update(weights: np.ndarray, excess: np.ndarray, eta: float, smoothing: float) -> np.ndarray:
    """One DoReMi step: log-weights += eta * excess, normalise (softmax), then smooth towards uniform with
    (1 - c) * w + c / k. Uniform weights with eta = 0 stay as they are."""
    weights = np.asarray(weights, np.float64)
    log_weights = np.log(np.maximum(weights, np.finfo(np.float64).tiny)) + eta * np.asarray(
        excess, np.float64
    )
    log_weights -= log_weights.max()  # softmax without overflow
    new = np.exp(log_weights)
    new /= new.sum()
    k = len(new)
    return (1.0 - smoothing) * new + smoothing / k


def carry_excess(excess: np.ndarray, present: np.ndarray, last: np.ndarray) -> np.ndarray:
    """A domain absent from the batch keeps its last excess."""
    return np.where(np.asarray(present, bool), excess, last)


def average_weights(trajectory: Sequence[np.ndarray] | np.ndarray) -> np.ndarray:
    """The mean of the weights over all steps, the initial weights (row 0) included."""
    mean = np.asarray(trajectory, np.float64).mean(axis=0)
    return mean / mean.sum()


def stratified_counts(batch_size: int, domains: int, step: int) -> np.ndarray:
    """Windows per domain in one batch: an even split, the remainder going to domains in turn (rotating
    with the step), so every domain is in every batch and over steps each gets the same share."""
    if batch_size < domains:
        raise ThresherError(
            f"--batch-size {batch_size} is smaller than the {domains} domains; every batch needs a window "
            f"of every domain, so raise --batch-size to at least {domains}"
        )
    counts = np.full(domains, batch_size // domains, np.int64)
    extra = batch_size % domains
    if extra:
        first = (step * extra) % domains
        counts[(first + np.arange(extra)) % domains] += 1
    return counts


# ---------------------------------------------------------------------------------------------------------
# Per-domain data


@dataclass
class DomainStreams:
    """One domain's packed token streams (one per shard; memory-mapped arrays work)."""

    name: str
    streams: list[np.ndarray]
    docs: int = 0

    @property
    def tokens(self) -> int:
        return int(sum(len(s) for s in self.streams))


def check_domains(domains: Sequence[DomainStreams], context_length: int, batch_size: int) -> None:
    stratified_counts(batch_size, len(domains), 0)  # every domain must fit in a batch
    if len(domains) < 2:
        found = ", ".join(d.name for d in domains) or "none"
        raise ThresherError(f"DoReMi needs at least two domains with text; found: {found}")
    for d in domains:
        if not any(len(s) >= context_length for s in d.streams):
            raise ThresherError(
                f"domain '{d.name}' has {d.tokens} tokens and no shard with a full window of "
                f"{context_length}; add text to it or lower --context-length"
            )


class DomainBatches:
    """A seeded window sampler per domain (proxy_lm's `WindowSampler`); a batch is rows of domain 0, then
    domain 1, ..., with how many rows of each set by the caller."""

    def __init__(self, domains: Sequence[DomainStreams], length: int, seed: int) -> None:
        self.samplers = [WindowSampler(d.streams, length, seed + 1000 * i) for i, d in enumerate(domains)]

    def batch(self, counts: np.ndarray) -> tuple[Any, Any]:
        """(rows, domain index of each row)."""
        import torch

        parts = [self.samplers[i].batch(int(n)) for i, n in enumerate(counts) if n > 0]
        labels = np.repeat(np.arange(len(counts)), counts)
        return torch.cat(parts), torch.from_numpy(labels)

    def generators(self) -> dict[str, Any]:
        """The samplers' random generators by name, for a checkpoint."""
        return {f"domain{i}": s.generator for i, s in enumerate(self.samplers)}


def eval_windows(domains: Sequence[DomainStreams], length: int) -> list[np.ndarray]:
    """Fixed windows per domain (evenly spaced through its first stream long enough), for a report of
    each model's per-domain loss; the same rows for both models, so the two are comparable."""
    out = []
    for d in domains:
        stream = next(s for s in d.streams if len(s) >= length)
        starts = np.linspace(0, len(stream) - length, EVAL_WINDOWS).astype(np.int64)
        out.append(np.stack([np.asarray(stream[s : s + length], np.int64) for s in starts]))
    return out


# ---------------------------------------------------------------------------------------------------------
# Training


def token_losses(model: Any, rows: Any) -> Any:
    """Cross-entropy of every predicted token, shape (rows, length - 1), in fp32."""
    import torch

    logits = model(input_ids=rows, attention_mask=torch.ones_like(rows)).logits
    flat = torch.nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]).float(), rows[:, 1:].reshape(-1), reduction="none"
    )
    return flat.view(rows.shape[0], rows.shape[1] - 1)


def per_domain_mean(values: Any, labels: Any, domains: int) -> tuple[Any, Any]:
    """(mean of each domain's rows, tokens per domain) for a (rows, tokens) tensor; every row has the same
    number of tokens, so a domain's token mean is the mean of its row sums over its token count."""
    import torch

    sums = torch.zeros(domains, dtype=values.dtype, device=values.device)
    sums = sums.index_add(0, labels, values.sum(dim=1))
    tokens = torch.bincount(labels, minlength=domains).to(values.dtype) * values.shape[1]
    return sums / tokens.clamp(min=1), tokens


def evaluate_domains(model: Any, windows: Sequence[np.ndarray], placement: Placement) -> list[float]:
    """Mean token loss of the model on each domain's fixed windows."""
    import torch

    was_training = model.training
    model.eval()
    out = []
    with torch.inference_mode(), autocast_for(placement):
        for rows in windows:
            out.append(float(token_losses(model, torch.from_numpy(rows).to(placement.device)).mean()))
    model.train(was_training)
    return out


@dataclass
class ReferenceReport:
    steps: int
    mixture: list[float]
    domain_loss: list[float]
    seconds_per_step: float
    parameters: int
    resumed_from: int = 0


def train_reference(
    config: ProxyConfig,
    domains: Sequence[DomainStreams],
    mixture: np.ndarray,
    *,
    tokenizer: Any,
    out_dir: Path,
    seed: int,
    steps: int | None = None,
    device: DeviceName = "auto",
    threads: int | None = None,
    on_step: Callable[[int], None] | None = None,
    checkpoints: CheckpointPlan | None = None,
) -> ReferenceReport:
    """Train the reference model on the baseline mixture and `save_pretrained` it (with the tokenizer) to
    `out_dir`, a folder `thresher perplexity lm --model` can read. Each step's windows are split between
    domains by a seeded multinomial draw from `mixture`.

    With `checkpoints`, the run resumes from the newest matching checkpoint and writes one every
    `checkpoints.every` steps; `on_step(n)` is told of n more steps done (the resumed ones at once)."""
    import torch

    from thresher.scorers.torch_runtime import quiet_transformers

    steps = steps or config.max_steps
    placement = resolve_device(device)
    check_domains(domains, config.context_length, config.batch_size)
    mixture = np.asarray(mixture, np.float64) / np.sum(mixture)
    with deterministic_training(placement, threads):
        model = build_model(config, tokenizer.get_vocab_size(), tokenizer.token_to_id(EOS), seed)
        model.to(placement.device).train()
        optimizer = adamw_decay_matrices(
            model, learning_rate=config.learning_rate, weight_decay=config.weight_decay
        )
        batches = DomainBatches(domains, config.context_length, seed + 1)
        draws = seeded_generator(seed + 2)
        generators = {"draws": draws, **batches.generators()}
        probabilities = torch.from_numpy(mixture)
        resumed = checkpoints.resume(model, optimizer, generators) if checkpoints else None
        first = int(resumed["step"]) if resumed else 0
        if first:
            log.info("doremi reference: resuming from step %d", first)
        started = time.perf_counter()
        schedule = _with_steps(config, steps)
        # Counted in steps, not epochs: each step splits its windows between domains by a draw from the
        # mixture (a generator the checkpoints carry, for an exact resume), so the body stays here.
        for step in training_steps(optimizer, first, steps, lambda s: learning_rate(schedule, s), on_step):
            picks = torch.multinomial(probabilities, config.batch_size, replacement=True, generator=draws)
            counts = np.bincount(picks.numpy(), minlength=len(domains))
            rows, _ = batches.batch(counts)
            with autocast_for(placement):
                loss = token_losses(model, rows.to(placement.device)).mean()
            backward_and_step(optimizer, model.parameters(), loss)
            if checkpoints is not None and checkpoints.due(step + 1, steps):
                checkpoints.save(step + 1, model, optimizer, generators)
            if (step + 1) % max(1, steps // 5) == 0:
                log.info("doremi reference: step %d/%d  loss %.3f", step + 1, steps, loss.item())
        seconds = time.perf_counter() - started
        domain_loss = evaluate_domains(model, eval_windows(domains, config.context_length), placement)
        quiet_transformers()
        out_dir.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(out_dir)
        save_tokenizer(tokenizer, out_dir, config.context_length)
        return ReferenceReport(
            steps=steps,
            mixture=[float(x) for x in mixture],
            domain_loss=domain_loss,
            seconds_per_step=seconds / max(steps - first, 1),
            parameters=int(sum(p.numel() for p in model.parameters())),
            resumed_from=first,
        )


def save_tokenizer(tokenizer: Any, out_dir: Path, context_length: int) -> None:
    """The proxy_lm tokenizer as transformers files, so the model folder loads with AutoTokenizer."""
    from transformers import PreTrainedTokenizerFast

    PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=EOS,
        eos_token=EOS,
        pad_token=EOS,
        model_max_length=context_length,
    ).save_pretrained(out_dir)


def load_reference(folder: Path, placement: Placement) -> Any:
    from transformers import GPT2LMHeadModel

    from thresher.scorers.torch_runtime import load_pretrained, quiet_transformers

    quiet_transformers()
    model = load_pretrained(GPT2LMHeadModel, str(folder), "DoReMi reference model")
    return model.to(placement.device).eval()


def _with_steps(config: ProxyConfig, steps: int) -> ProxyConfig:
    import dataclasses

    return dataclasses.replace(config, max_steps=steps, warmup_steps=min(config.warmup_steps, steps))


@dataclass
class DoReMiResult:
    domains: list[str]
    weights: list[float]  # the answer: mean over all steps, initial weights included
    final_weights: list[float]
    initial_weights: list[float]
    trajectory: list[list[float]]  # steps + 1 rows: the initial weights, then after each step
    mean_excess: list[float]
    reference_loss: list[float]
    proxy_loss: list[float]
    steps: int
    seconds_per_step: float
    history: list[dict[str, Any]] = field(default_factory=list)
    resumed_from: int = 0


def train_doremi_proxy(
    config: ProxyConfig,
    domains: Sequence[DomainStreams],
    reference: Any,
    *,
    tokenizer: Any,
    seed: int,
    eta: float = 1.0,
    smoothing: float = 1e-3,
    initial: np.ndarray | None = None,
    steps: int | None = None,
    device: DeviceName = "auto",
    threads: int | None = None,
    on_step: Callable[[int], None] | None = None,
    checkpoints: CheckpointPlan | None = None,
) -> DoReMiResult:
    """Train a proxy of the reference's size from scratch with Group DRO; return the domain weights.

    `reference` is a model folder (from `train_reference`) or a loaded causal LM. `checkpoints` and
    `on_step` as for `train_reference`; a checkpoint also holds the domain weights so far."""
    import torch

    steps = steps or config.max_steps
    placement = resolve_device(device)
    check_domains(domains, config.context_length, config.batch_size)
    k = len(domains)
    weights = np.full(k, 1.0 / k) if initial is None else np.asarray(initial, np.float64) / np.sum(initial)
    with deterministic_training(placement, threads):
        ref_model = (
            load_reference(reference, placement) if isinstance(reference, str | os.PathLike) else reference
        )
        # Another init than the reference's: the proxy starts from scratch, not from a copy of it.
        model = build_model(config, tokenizer.get_vocab_size(), tokenizer.token_to_id(EOS), seed + 7)
        model.to(placement.device).train()
        optimizer = adamw_decay_matrices(
            model, learning_rate=config.learning_rate, weight_decay=config.weight_decay
        )
        batches = DomainBatches(domains, config.context_length, seed + 3)
        schedule = _with_steps(config, steps)
        trajectory = [weights.copy()]
        last_excess = np.zeros(k)
        excess_sum = np.zeros(k)
        history: list[dict[str, Any]] = []
        generators = batches.generators()
        resumed = checkpoints.resume(model, optimizer, generators) if checkpoints else None
        first = int(resumed["step"]) if resumed else 0
        if resumed:
            # JSON keeps every float64 exactly, so the resumed weights are the ones the run had.
            trajectory = [np.array(w, np.float64) for w in resumed["trajectory"]]
            weights = trajectory[-1].copy()
            last_excess = np.array(resumed["last_excess"], np.float64)
            excess_sum = np.array(resumed["excess_sum"], np.float64)
            history = resumed["history"]
            log.info("doremi proxy: resuming from step %d", first)
        started = time.perf_counter()
        # Group DRO (DoReMi's Algorithm 1): before each step the domain weights move with the excess loss
        # over the reference model, and the loss stepped on is the weighted per-domain loss, so this body
        # stays here; the step mechanics around it are the shared ones.
        for step in training_steps(optimizer, first, steps, lambda s: learning_rate(schedule, s), on_step):
            rows, labels = batches.batch(stratified_counts(config.batch_size, k, step))
            rows, labels = rows.to(placement.device), labels.to(placement.device)
            with torch.inference_mode(), autocast_for(placement):
                ref_losses = token_losses(ref_model, rows)
            with autocast_for(placement):
                losses = token_losses(model, rows)
            excess_tokens = (losses.detach() - ref_losses).clamp(min=0)
            excess_t, tokens = per_domain_mean(excess_tokens, labels, k)
            present = (tokens > 0).cpu().numpy()
            excess = carry_excess(excess_t.cpu().numpy().astype(np.float64), present, last_excess)
            last_excess = excess
            excess_sum += excess
            weights = doremi_update(weights, excess, eta, smoothing)
            trajectory.append(weights.copy())
            domain_loss, _ = per_domain_mean(losses, labels, k)
            loss = (torch.from_numpy(weights).to(domain_loss) * domain_loss).sum()
            backward_and_step(optimizer, model.parameters(), loss)
            if (step + 1) % max(1, steps // 5) == 0 or step + 1 == steps:
                history.append(
                    {
                        "step": step + 1,
                        "loss": round(float(loss.item()), 5),
                        "excess": [round(float(x), 5) for x in excess],
                        "weights": [round(float(x), 5) for x in weights],
                    }
                )
                log.info(
                    "doremi proxy: step %d/%d  weights %s",
                    step + 1,
                    steps,
                    " ".join(f"{d.name}={w:.3f}" for d, w in zip(domains, weights, strict=True)),
                )
            if checkpoints is not None and checkpoints.due(step + 1, steps):
                checkpoints.save(
                    step + 1,
                    model,
                    optimizer,
                    generators,
                    trajectory=[w.tolist() for w in trajectory],
                    last_excess=last_excess.tolist(),
                    excess_sum=excess_sum.tolist(),
                    history=history,
                )
        seconds = time.perf_counter() - started
        windows = eval_windows(domains, config.context_length)
        return DoReMiResult(
            domains=[d.name for d in domains],
            weights=[float(x) for x in average_weights(trajectory)],
            final_weights=[float(x) for x in weights],
            initial_weights=[float(x) for x in trajectory[0]],
            trajectory=[[float(x) for x in w] for w in trajectory],
            mean_excess=[float(x) for x in excess_sum / max(steps, 1)],
            reference_loss=evaluate_domains(ref_model, windows, placement),
            proxy_loss=evaluate_domains(model, windows, placement),
            steps=steps,
            seconds_per_step=seconds / max(steps - first, 1),
            history=history,
            resumed_from=first,
        )
