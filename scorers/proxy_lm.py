"""A small GPT-2-style proxy LM trained from scratch on shard text: byte-level BPE tokenizer, packed
training windows, a held-out validation split, safetensors checkpoints, and a `save_pretrained` folder
that `thresher perplexity lm` (or any transformers code) loads.

Seeded and resumable: the weights are initialised from the seed, training windows are drawn from a seeded
generator, dropout is off, and on CPU torch runs its deterministic kernels. A checkpoint holds the weights,
the AdamW moments and the sampler's generator state (safetensors) and the step and history (JSON); a run
resumed from it continues exactly as the uninterrupted run would. Nothing is pickled.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from thresher.pipelines.engine.errors import ThresherError
from thresher.scorers.checkpoints import latest_checkpoint, load_checkpoint, save_checkpoint
from thresher.scorers.device import DeviceName, resolve_device
from thresher.scorers.training import (
    adamw_decay_matrices,
    autocast_for,
    backward_and_step,
    deterministic_training,
    seeded_generator,
    training_steps,
)

log = logging.getLogger("thresher")

EOS = "<|endoftext|>"


@dataclass(frozen=True)
class ProxyConfig:
    vocab_size: int
    context_length: int
    n_embd: int
    n_layer: int
    n_head: int
    batch_size: int
    max_steps: int
    learning_rate: float
    warmup_steps: int
    weight_decay: float = 0.1
    eval_every: int = 100
    checkpoint_every: int = 200
    val_tokens: int = 65_536  # validation tokens evaluated at most: a fixed, deterministic set


PRESETS: dict[str, ProxyConfig] = {
    # About 0.4M parameters: a few minutes on two CPU cores, enough to learn the sample data's templates.
    "tiny": ProxyConfig(
        vocab_size=4096,
        context_length=128,
        n_embd=64,
        n_layer=2,
        n_head=2,
        batch_size=16,
        max_steps=600,
        learning_rate=3e-3,
        warmup_steps=30,
    ),
    # About 40M parameters: for real reference text on a GPU.
    "small": ProxyConfig(
        vocab_size=32_000,
        context_length=512,
        n_embd=512,
        n_layer=8,
        n_head=8,
        batch_size=32,
        max_steps=20_000,
        learning_rate=6e-4,
        warmup_steps=500,
        eval_every=500,
        checkpoint_every=1000,
    ),
}


# ---------------------------------------------------------------------------------------------------------
# Tokenizer and token files


def train_tokenizer(texts: Iterable[str], vocab_size: int) -> Any:
    """A GPT-2-style byte-level BPE: every string encodes (no unknown token), with `<|endoftext|>` as id 0."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer)
    return tokenizer


def load_tokenizer(path: Path) -> Any:
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(path))


def token_dtype(vocab_size: int) -> np.dtype[Any]:
    return np.dtype(np.uint16) if vocab_size <= np.iinfo(np.uint16).max + 1 else np.dtype(np.uint32)


def encode_documents(tokenizer: Any, texts: Sequence[str]) -> np.ndarray:
    """Documents as one packed token stream, each followed by `<|endoftext|>`."""
    eos = tokenizer.token_to_id(EOS)
    dtype = token_dtype(tokenizer.get_vocab_size())
    parts = [np.asarray([*e.ids, eos], dtype=dtype) for e in tokenizer.encode_batch(list(texts))]
    return np.concatenate(parts) if parts else np.zeros(0, dtype)


def unigram_cross_entropy(train: Sequence[np.ndarray], val: Sequence[np.ndarray], vocab_size: int) -> float:
    """Nats per validation token under the training set's (add-one smoothed) token frequencies: the loss
    of a model that ignores context, the floor a useful LM must beat."""
    counts = np.ones(vocab_size, np.float64)
    for part in train:
        counts += np.bincount(part, minlength=vocab_size)[:vocab_size]
    logp = np.log(counts / counts.sum())
    seen = np.zeros(vocab_size, np.float64)
    for part in val:
        seen += np.bincount(part, minlength=vocab_size)[:vocab_size]
    return float(-(seen * logp).sum() / max(seen.sum(), 1))


# ---------------------------------------------------------------------------------------------------------
# Training data: seeded random windows over the packed training streams, fixed windows for validation


class WindowSampler:
    def __init__(self, streams: Sequence[np.ndarray], length: int, seed: int) -> None:

        self.streams = [s for s in streams if len(s) >= length]
        if not self.streams:
            raise ThresherError(
                f"not enough training text: no shard has {length} tokens; lower --context-length or add text"
            )
        self.length = length
        self.starts = np.cumsum([len(s) - length + 1 for s in self.streams])
        self.generator = seeded_generator(seed)

    def batch(self, size: int) -> Any:
        import torch

        picks = torch.randint(0, int(self.starts[-1]), (size,), generator=self.generator).numpy()
        rows = []
        for pick in picks:
            i = int(np.searchsorted(self.starts, pick, side="right"))
            offset = int(pick - (self.starts[i - 1] if i else 0))
            rows.append(torch.from_numpy(self.streams[i][offset : offset + self.length].astype(np.int64)))
        return torch.stack(rows)


def validation_windows(streams: Sequence[np.ndarray], length: int, max_tokens: int) -> list[np.ndarray]:
    """Consecutive non-overlapping windows from the validation streams, up to `max_tokens`."""
    out: list[np.ndarray] = []
    total = 0
    for stream in streams:
        for start in range(0, len(stream) - 1, length):
            window = np.asarray(stream[start : start + length], np.int64)
            if len(window) < 2 or total >= max_tokens:
                continue
            out.append(window)
            total += len(window)
    if not out:
        raise ThresherError("the validation split is empty; raise --val-fraction or add documents")
    return out


# ---------------------------------------------------------------------------------------------------------
# Checkpoints (see scorers/checkpoints.py)


@dataclass
class TrainingState:
    step: int = 0
    history: list[dict[str, float]] = field(default_factory=list)
    fingerprint: str = ""


# ---------------------------------------------------------------------------------------------------------
# Training


def save_pretrained(model: Any, tokenizer: Any, out_dir: Path) -> None:
    """The model (safetensors) and its tokenizer as one transformers folder, `<|endoftext|>` doubling as
    BOS (what scoring prefixes a document with), EOS and padding."""
    from transformers import PreTrainedTokenizerFast
    from transformers.utils import logging as hf_logging

    out_dir.mkdir(parents=True, exist_ok=True)
    # save_pretrained draws a tqdm bar per shard; under thresher's own progress and logs it is noise.
    shown = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        model.save_pretrained(out_dir)
    finally:
        if shown:
            hf_logging.enable_progress_bar()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=EOS,
        eos_token=EOS,
        pad_token=EOS,
        model_max_length=model.config.n_positions,
    )
    fast.save_pretrained(out_dir)


def build_model(config: ProxyConfig, vocab_size: int, eos_id: int, seed: int) -> Any:
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    gpt2 = GPT2Config(
        vocab_size=vocab_size,
        n_positions=config.context_length,
        n_embd=config.n_embd,
        n_layer=config.n_layer,
        n_head=config.n_head,
        # No dropout: short runs on small data gain little from it, and it would make every step consume
        # global random state that a resumed run would have to restore too.
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=eos_id,
        eos_token_id=eos_id,
        pad_token_id=eos_id,
    )
    return GPT2LMHeadModel(gpt2)


def learning_rate(config: ProxyConfig, step: int) -> float:
    """Linear warmup, then cosine decay to a tenth of the peak at `max_steps`."""
    if step < config.warmup_steps:
        return config.learning_rate * (step + 1) / config.warmup_steps
    progress = (step - config.warmup_steps) / max(1, config.max_steps - config.warmup_steps)
    return config.learning_rate * (0.1 + 0.45 * (1 + math.cos(math.pi * min(progress, 1.0))))


def next_token_loss(model: Any, rows: Any) -> Any:
    """Mean cross-entropy of predicting each token of the (unpadded) windows from the ones before it."""
    import torch

    logits = model(input_ids=rows, attention_mask=torch.ones_like(rows)).logits
    return torch.nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]).float(), rows[:, 1:].reshape(-1)
    )


def evaluate(model: Any, windows: Sequence[np.ndarray], batch_size: int, device: Any, autocast: Any) -> float:
    """Mean loss (nats per predicted token) over the validation windows."""
    import torch

    total, count = 0.0, 0
    model.eval()
    with torch.inference_mode():
        # Equal-length windows first, so batches do not need padding.
        ordered = sorted(windows, key=len, reverse=True)
        for start in range(0, len(ordered), batch_size):
            group = ordered[start : start + batch_size]
            for length in sorted({len(w) for w in group}, reverse=True):
                rows = torch.from_numpy(np.stack([w for w in group if len(w) == length])).to(device)
                with autocast():
                    loss = next_token_loss(model, rows)
                total += loss.item() * rows.shape[0] * (length - 1)
                count += rows.shape[0] * (length - 1)
    model.train()
    return total / count


@dataclass
class TrainingReport:
    steps: int
    resumed_from: int
    final_val_loss: float
    unigram_entropy: float
    train_tokens: int
    val_tokens: int
    parameters: int
    seconds: float
    history: list[dict[str, float]]


def train_proxy_lm(
    config: ProxyConfig,
    *,
    tokenizer_path: Path,
    train_streams: Sequence[np.ndarray],
    val_streams: Sequence[np.ndarray],
    out_dir: Path,
    checkpoint_dir: Path,
    fingerprint: str,
    seed: int,
    device: DeviceName = "auto",
    threads: int | None = None,
    stop_after: int | None = None,
) -> TrainingReport:
    """Train (or resume) and write a `save_pretrained` model + tokenizer folder to `out_dir`.

    `fingerprint` names what is being trained (params, seed, data); a checkpoint with another fingerprint
    is never resumed from. `stop_after` ends the run early after checkpointing that step (what an
    interruption looks like, for tests).
    """
    placement = resolve_device(device)
    tokenizer = load_tokenizer(tokenizer_path)
    vocab_size = tokenizer.get_vocab_size()
    eos_id = tokenizer.token_to_id(EOS)
    # --threads counts CPU threads for the CPU's matmuls; on a GPU torch's own default stays.
    with deterministic_training(placement, None if placement.is_cuda else threads):
        model = build_model(config, vocab_size, eos_id, seed).to(placement.device)
        optimizer = adamw_decay_matrices(
            model, learning_rate=config.learning_rate, weight_decay=config.weight_decay
        )
        sampler = WindowSampler(train_streams, config.context_length, seed + 1)
        val_windows = validation_windows(val_streams, config.context_length, config.val_tokens)

        def autocast() -> Any:
            return autocast_for(placement)

        state = TrainingState(fingerprint=fingerprint)
        generators = {"sampler": sampler.generator}
        resume = latest_checkpoint(checkpoint_dir, fingerprint)
        if resume is not None:
            state = TrainingState(**load_checkpoint(resume, model, optimizer, generators))
            log.info("proxy-train: resuming from step %d (%s)", state.step, resume.name)
        resumed_from = state.step
        model.train()
        started = time.perf_counter()
        recent: list[float] = []
        # The step mechanics are the shared ones; evaluation every --eval-every steps, checkpoints that
        # carry the sampler's generator for an exact resume, and `stop_after` are this trainer's own.
        for step in training_steps(
            optimizer, state.step, config.max_steps, lambda s: learning_rate(config, s)
        ):
            batch = sampler.batch(config.batch_size).to(placement.device)
            with autocast():
                loss = next_token_loss(model, batch)
            backward_and_step(optimizer, model.parameters(), loss)
            state.step = step + 1
            recent.append(loss.item())
            last = state.step == config.max_steps
            if state.step % config.eval_every == 0 or last:
                val_loss = evaluate(model, val_windows, config.batch_size, placement.device, autocast)
                train_loss = float(np.mean(recent))
                recent = []
                state.history.append({"step": state.step, "train_loss": train_loss, "val_loss": val_loss})
                rate = (state.step - resumed_from) / max(time.perf_counter() - started, 1e-9)
                log.info(
                    "proxy-train: step %d/%d  train loss %.3f  val loss %.3f  (%.1f steps/s)",
                    state.step,
                    config.max_steps,
                    train_loss,
                    val_loss,
                    rate,
                )
            if state.step % config.checkpoint_every == 0 or state.step == stop_after:
                save_checkpoint(checkpoint_dir, model, optimizer, generators, asdict(state))
            if state.step == stop_after:
                break
        if not state.history or state.history[-1]["step"] != state.step:
            val_loss = evaluate(model, val_windows, config.batch_size, placement.device, autocast)
            state.history.append({"step": state.step, "val_loss": val_loss})
        save_pretrained(model, tokenizer, out_dir)
        return TrainingReport(
            steps=state.step,
            resumed_from=resumed_from,
            final_val_loss=state.history[-1]["val_loss"],
            unigram_entropy=unigram_cross_entropy(train_streams, val_streams, vocab_size),
            train_tokens=int(sum(len(s) for s in train_streams)),
            val_tokens=int(sum(len(w) for w in val_windows)),
            parameters=int(sum(p.numel() for p in model.parameters())),
            seconds=round(time.perf_counter() - started, 3),
            history=state.history,
        )
