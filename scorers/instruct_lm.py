"""A causal LM as an instruction follower: one prompt format, completion-only loss, fine-tuning on
(instruction, input, output) rows, and deterministic (greedy or beam-search) answers to new instructions.

Used by MoDS's necessity step (fine-tune the proxy/base LM on the seed set, then answer the remaining
instructions) and by LESS (the same encoding decides which tokens' loss the gradients come from).

The prompt is Alpaca's layout. Loss and gradients count the answer tokens and the closing EOS only, never
the prompt. Examples longer than `max_length` tokens keep their beginning; an example whose prompt alone
fills `max_length` has no answer tokens left and is reported as such, never silently scored.

Two losses: `batch_loss` is the mean over every answer token of a batch (what MoDS's fine-tuning step
uses); `example_losses` is each example's own mean, what a trainer stepping one example at a time and
accumulating gradients computes (LESS's warmup, and the per-example gradients of its features).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from thresher.scorers.device import DeviceName, resolve_device
from thresher.scorers.torch_runtime import (
    length_batches,
    load_pretrained,
    load_tokenizer,
    pad_batch,
    quiet_transformers,
    seed_torch,
)
from thresher.scorers.training import EpochTrainer

log = logging.getLogger("thresher")
IGNORE = -100  # the label transformers' loss skips


def prompt_text(instruction: str | None, inp: str | None) -> str:
    instruction = (instruction or "").strip()
    inp = (inp or "").strip()
    if inp:
        return f"### Instruction:\n{instruction}\n\n### Input:\n{inp}\n\n### Response:\n"
    return f"### Instruction:\n{instruction}\n\n### Response:\n"


@dataclass
class Encoded:
    ids: list[int]
    prompt_tokens: int  # tokens before the answer (BOS and prompt): masked out of the loss
    truncated: bool

    @property
    def answer_tokens(self) -> int:
        return len(self.ids) - self.prompt_tokens

    def labels(self) -> list[int]:
        return [IGNORE] * self.prompt_tokens + self.ids[self.prompt_tokens :]


@dataclass
class Generations:
    texts: list[str]
    # True where the answer reached the new-token limit before the model's EOS: cut, not finished.
    truncated: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))
    new_token_limits: list[int] = field(default_factory=list)  # the limit each batch ran with


class InstructLM:
    """A local causal LM folder (e.g. the proxy LM of `thresher lm train proxy`) with its tokenizer."""

    def __init__(
        self,
        model: str,
        *,
        device: DeviceName = "auto",
        max_length: int = 512,
        for_training: bool = False,
    ) -> None:
        import torch
        from transformers import AutoModelForCausalLM

        quiet_transformers()
        self.placement = resolve_device(device)
        self.tokenizer = load_tokenizer(model, "causal LM")
        # Training keeps fp32 master weights (bf16 comes from autocast); inference can run in bf16.
        dtype = torch.float32 if for_training else self.placement.dtype
        self.model = load_pretrained(AutoModelForCausalLM, model, "causal LM", dtype=dtype)
        self.model.to(self.placement.device).eval()
        config = self.model.config
        # The model's context: prompt + answer can never be longer. None where the config names none.
        self.context: int | None = next(
            (
                v
                for v in (getattr(config, n, None) for n in ("max_position_embeddings", "n_positions"))
                if isinstance(v, int) and v > 0
            ),
            None,
        )
        self.max_length = int(min(max_length, self.context or max_length))
        tok = self.tokenizer
        self.bos = [tok.bos_token_id] if tok.bos_token_id is not None else []
        self.eos_id = tok.eos_token_id
        self.pad_id = next((i for i in (tok.pad_token_id, tok.eos_token_id, 0) if i is not None), 0)

    def _ids(self, texts: Sequence[str]) -> list[list[int]]:
        if not texts:
            return []
        return [
            list(x) for x in self.tokenizer(list(texts), add_special_tokens=False, verbose=False)["input_ids"]
        ]

    def encode(
        self, instructions: Sequence[str | None], inputs: Sequence[str | None], outputs: Sequence[str | None]
    ) -> list[Encoded]:
        """Prompt + answer + EOS token ids with the prompt length, cut to max_length from the end."""
        prompts = self._ids([prompt_text(i, x) for i, x in zip(instructions, inputs, strict=True)])
        answers = self._ids([o or "" for o in outputs])
        eos = [self.eos_id] if self.eos_id is not None else []
        out = []
        for prompt, answer in zip(prompts, answers, strict=True):
            ids = self.bos + prompt + answer + eos
            head = len(self.bos) + len(prompt)
            truncated = len(ids) > self.max_length
            ids = ids[: self.max_length]
            out.append(Encoded(ids, min(head, len(ids)), truncated))
        return out

    # -- fine-tuning ---------------------------------------------------------------------------------------
    def finetune(
        self,
        examples: Sequence[Encoded],
        *,
        epochs: int,
        learning_rate: float,
        batch_size: int,
        seed: int,
        weight_decay: float = 0.0,
    ) -> list[float]:
        """Full fine-tuning on the answer tokens (AdamW, linear warmup and decay). Returns the mean loss
        of each epoch."""
        import torch

        usable = [e for e in examples if e.answer_tokens > 0]
        if not usable:
            return []
        seed_torch(seed)
        model = self.model
        model.train()
        trainer = EpochTrainer(
            model.parameters(),
            [len(e.ids) for e in usable],
            epochs=epochs,
            batch_size=batch_size,
            learning_rate=learning_rate,
            seed=seed,
            weight_decay=weight_decay,
        )
        autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.placement.is_cuda)

        def backward(batch: np.ndarray) -> float:
            loss = self.batch_loss([usable[i] for i in batch], autocast)
            loss.backward()
            return float(loss.detach()) * len(batch)

        losses = []
        for epoch in trainer.run(backward):
            losses.append(round(epoch.loss_sum / len(usable), 6))
            log.info("fine-tune: epoch %d/%d loss %.4f", epoch.index + 1, epochs, losses[-1])
        model.eval()
        return losses

    def _tensors(self, batch: Sequence[Encoded]) -> tuple[Any, Any, Any]:
        """(input_ids, attention_mask, labels) of a right-padded batch, on the model's device."""
        import torch

        ids, mask = pad_batch([e.ids for e in batch], self.pad_id)
        labels = torch.full_like(ids, IGNORE)
        for row, e in enumerate(batch):
            labels[row, : len(e.ids)] = torch.tensor(e.labels(), dtype=torch.long)
        device = self.placement.device
        return ids.to(device), mask.to(device), labels.to(device)

    def batch_loss(self, batch: Sequence[Encoded], autocast: Any) -> Any:
        """Mean cross-entropy over the answer tokens of a batch (right-padded)."""
        ids, mask, labels = self._tensors(batch)
        with autocast:
            out = self.model(input_ids=ids, attention_mask=mask, labels=labels)
        return out.loss.float()

    def example_losses(self, batch: Sequence[Encoded], autocast: Any) -> Any:
        """(len(batch),) tensor: each example's mean cross-entropy over its own answer tokens, from one
        right-padded forward pass. Padding sits after the real tokens and carries no label, so an
        example's loss does not depend on what it was batched with."""
        import torch

        ids, mask, labels = self._tensors(batch)
        with autocast:
            logits = self.model(input_ids=ids, attention_mask=mask).logits
        targets = labels[:, 1:]
        token_loss = torch.nn.functional.cross_entropy(
            logits[:, :-1].float().transpose(1, 2), targets, ignore_index=IGNORE, reduction="none"
        )
        counts = (targets != IGNORE).sum(dim=1).clamp(min=1)
        return token_loss.sum(dim=1) / counts

    # -- generation ----------------------------------------------------------------------------------------
    def generate(
        self,
        instructions: Sequence[str | None],
        inputs: Sequence[str | None],
        *,
        max_new_tokens: int = 1024,
        batch_size: int = 16,
        num_beams: int = 1,
    ) -> Generations:
        """Deterministic answers (greedy, or beam search with `num_beams` > 1), batched by prompt length
        with left padding.

        Prompt + answer stay within the model's context: a prompt keeps its last `max_length` tokens
        and leaves at least min(max_new_tokens, context / 2) tokens for the answer; a batch then
        generates up to what its longest prompt leaves of the context, at most `max_new_tokens`. An
        answer that stops at that limit without the model's EOS is flagged in `truncated`."""
        import torch

        context = self.context or self.max_length + max_new_tokens
        room = min(max_new_tokens, context // 2)
        prompt_limit = max(1, min(self.max_length, context - room))
        # Keep the end of an over-long prompt: "### Response:" must stay right before the answer.
        prompts = [
            (self.bos + p)[-prompt_limit:]
            for p in self._ids([prompt_text(i, x) for i, x in zip(instructions, inputs, strict=True)])
        ]
        answers = [""] * len(prompts)
        truncated = np.zeros(len(prompts), dtype=bool)
        limits: list[int] = []
        with torch.inference_mode():
            for batch in length_batches([len(p) for p in prompts], batch_size):
                ids, mask = pad_batch([prompts[i] for i in batch], self.pad_id, left=True)
                new_tokens = max(1, min(max_new_tokens, context - ids.shape[1]))
                limits.append(new_tokens)
                out = self.model.generate(
                    input_ids=ids.to(self.placement.device),
                    attention_mask=mask.to(self.placement.device),
                    max_new_tokens=new_tokens,
                    do_sample=False,
                    num_beams=num_beams,
                    pad_token_id=self.pad_id,
                    eos_token_id=self.eos_id,
                )
                generated = out[:, ids.shape[1] :].cpu().numpy()
                for row, i in enumerate(batch):
                    tokens = generated[row]
                    stop = np.nonzero(tokens == self.eos_id)[0] if self.eos_id is not None else []
                    if len(stop):
                        tokens = tokens[: stop[0]]
                    else:
                        truncated[i] = len(tokens) >= new_tokens
                    answers[i] = self.tokenizer.decode(tokens.tolist(), skip_special_tokens=True).strip()
        return Generations(answers, truncated, limits)
