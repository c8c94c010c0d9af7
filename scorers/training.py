"""The training-loop mechanics every trainer in `scorers/` shares, in one place.

Two shapes of loop use them:

- epochs over a fixed set of examples (the quality classifier in deberta.py, MoDS's fine-tuning in
  instruct_lm.py, LESS's LoRA warmup in lora_grads.py): `EpochTrainer` owns the AdamW optimiser, the
  linear warmup-and-decay schedule, the seeded length-bucketed batches and the clipped step; the caller
  gives only the backward pass of one batch and does its own end-of-epoch work (logging, checkpoints).
- a number of steps over sampled windows (the proxy LM in proxy_lm.py, DoReMi's reference and proxy
  models in doremi.py): `training_steps` sets each step's learning rate and reports progress, and
  `backward_and_step` is the step itself; the loop body stays with the caller, because what happens
  between the forward pass and the step (DoReMi's domain weights, the proxy LM's evaluations and
  checkpoints) is the algorithm, not plumbing.

Each helper keeps the exact order of the random draws and float operations the trainers had, so runs
stay bit-identical and a resumed run matches an uninterrupted one. torch is imported inside functions
(stage modules import the trainers, and the CLI imports every stage at startup).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from thresher.scorers.device import Placement
from thresher.scorers.torch_runtime import length_batches


def seeded_generator(seed: int) -> Any:
    """A torch generator of its own, so a trainer's draws do not depend on (or disturb) the global one."""
    import torch

    return torch.Generator().manual_seed(seed)


def linear_schedule(optimizer: Any, total_steps: int, warmup_ratio: float = 0.03) -> Any:
    """Linear warmup over the first `warmup_ratio` of the steps, then linear decay to 0."""
    import torch

    warmup = max(1, int(warmup_ratio * total_steps))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def shuffled_batches(lengths: Sequence[int], batch_size: int, generator: Any) -> list[np.ndarray]:
    """Training batches: a seeded shuffle, length buckets inside windows of 50 batches, then the batches
    shuffled. Little padding, and still a different mix of examples in every batch and epoch."""
    import torch

    order = torch.randperm(len(lengths), generator=generator).numpy()
    window = batch_size * 50
    batches: list[np.ndarray] = []
    for start in range(0, len(order), window):
        chunk = order[start : start + window]
        batches += [chunk[b] for b in length_batches([lengths[i] for i in chunk], batch_size)]
    permutation = torch.randperm(len(batches), generator=generator).tolist()
    return [batches[i] for i in permutation]


def adamw_decay_matrices(
    model: Any, *, learning_rate: float, weight_decay: float, betas: tuple[float, float] = (0.9, 0.95)
) -> Any:
    """AdamW for a language model trained from scratch: weight decay on the matrices only, none on
    biases and layer norms (the 1-d tensors), with GPT-style betas."""
    import torch

    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    return torch.optim.AdamW(
        [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=learning_rate,
        betas=betas,
    )


def set_learning_rate(optimizer: Any, learning_rate: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = learning_rate


def clip_and_step(optimizer: Any, parameters: Iterable[Any], max_grad_norm: float = 1.0) -> None:
    """One optimiser step on the gradients already in `.grad`, their norm clipped first (0: no clipping)."""
    import torch

    if max_grad_norm > 0:
        torch.nn.utils.clip_grad_norm_(parameters, max_grad_norm)
    optimizer.step()


def backward_and_step(
    optimizer: Any, parameters: Iterable[Any], loss: Any, max_grad_norm: float = 1.0
) -> None:
    """Clear the gradients, backpropagate `loss`, clip and step."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    clip_and_step(optimizer, parameters, max_grad_norm)


def training_steps(
    optimizer: Any,
    first: int,
    last: int,
    learning_rate: Callable[[int], float],
    on_step: Callable[[int], None] | None = None,
) -> Iterator[int]:
    """Steps `first` .. `last` - 1 of a step-counted run, each with its learning rate set before the
    caller's loop body runs. `on_step(n)` hears of n more steps done: the resumed ones at once, then one
    after each body (a body that breaks out of the loop is not counted)."""
    if first and on_step is not None:
        on_step(first)
    for step in range(first, last):
        set_learning_rate(optimizer, learning_rate(step))
        yield step
        if on_step is not None:
            on_step(1)


def autocast_for(placement: Placement) -> Any:
    """A fresh autocast context in the placement's dtype on a GPU, nothing on a CPU (fp32 there)."""
    import torch

    if placement.is_cuda:
        return torch.autocast("cuda", dtype=placement.dtype)
    return contextlib.nullcontext()


@contextlib.contextmanager
def deterministic_training(placement: Placement, threads: int | None) -> Iterator[None]:
    """Deterministic kernels on CPU (so the same seed gives the same model, and a resumed run the
    uninterrupted one's) and, when given, the CPU thread count; both put back afterwards. A tiny model's
    matrices are too small to gain much from more threads, and on a busy machine the threads wait for
    each other: a tiny step measured 50x slower with two threads than one."""
    import torch

    deterministic = torch.are_deterministic_algorithms_enabled()
    threads_before = torch.get_num_threads()
    if not placement.is_cuda:
        torch.use_deterministic_algorithms(True, warn_only=True)
    if threads:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(deterministic)
        torch.set_num_threads(threads_before)


@dataclass
class Epoch:
    """What one epoch of `EpochTrainer.epochs` leaves for the caller's end-of-epoch work."""

    index: int  # 0-based
    loss_sum: float  # the sum over its batches of what `backward` returned
    steps: int  # optimiser steps so far, over every epoch
    learning_rates: list[float] = field(default_factory=list)  # the rate each of its steps ran with


class EpochTrainer:
    """AdamW over `epochs` passes of seeded, length-bucketed batches of `batch_size` examples, with a
    linear warmup and decay to 0 over all the steps and gradients clipped to `max_grad_norm` (0: none).

    One batch is one optimiser step; `backward(batch)` runs the forward and backward passes for the
    example indices in `batch` (accumulating micro-batches if it likes) and returns the loss to add to
    the epoch's sum."""

    def __init__(
        self,
        parameters: Iterable[Any],
        lengths: Sequence[int],
        *,
        epochs: int,
        batch_size: int,
        learning_rate: float,
        seed: int,
        weight_decay: float = 0.0,
        warmup_ratio: float = 0.03,
        max_grad_norm: float = 1.0,
    ) -> None:
        import torch

        self.parameters = list(parameters)
        self.lengths = list(lengths)
        self.epochs = epochs
        self.batch_size = batch_size
        self.max_grad_norm = max_grad_norm
        self.optimizer = torch.optim.AdamW(self.parameters, lr=learning_rate, weight_decay=weight_decay)
        self.steps_per_epoch = math.ceil(len(self.lengths) / batch_size)
        self.scheduler = linear_schedule(self.optimizer, self.steps_per_epoch * epochs, warmup_ratio)
        self.generator = seeded_generator(seed)

    def run(self, backward: Callable[[np.ndarray], float]) -> Iterator[Epoch]:
        """Train, yielding after each epoch (the next one starts when the caller asks for it)."""
        steps = 0
        for index in range(self.epochs):
            epoch = Epoch(index, 0.0, steps)
            for batch in shuffled_batches(self.lengths, self.batch_size, self.generator):
                epoch.learning_rates.append(self.optimizer.param_groups[0]["lr"])
                self.optimizer.zero_grad(set_to_none=True)
                epoch.loss_sum += backward(batch)
                clip_and_step(self.optimizer, self.parameters, self.max_grad_norm)
                self.scheduler.step()
                steps += 1
            epoch.steps = steps
            yield epoch
