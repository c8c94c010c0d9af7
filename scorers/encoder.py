"""Sentence embeddings from a local encoder model, L2-normalised, in length-bucketed batches (bf16 on a
GPU). Two poolings of the last hidden states:

- `mean` over the real tokens: what sentence-transformers models such as all-MiniLM-L6-v2 are trained
  for, and thresher's default for placing instructions before k-center greedy;
- `cls`, the first token's state: what MoDS uses (bert-base-uncased's [CLS] vector of the instruction,
  at most 96 tokens). MoDS compares the raw vectors; here they are normalised too, so k-center distances
  depend on direction only, whatever the pooling.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np

from thresher.scorers.device import DeviceName, resolve_device
from thresher.scorers.torch_runtime import length_batches, load_pretrained, load_tokenizer, quiet_transformers


class TextEncoder:
    def __init__(
        self,
        model: str,
        *,
        device: DeviceName = "auto",
        batch_size: int = 64,
        max_length: int = 256,
        pooling: Literal["mean", "cls"] = "mean",
    ) -> None:
        from transformers import AutoModel

        quiet_transformers()
        self.placement = resolve_device(device)
        self.tokenizer = load_tokenizer(model, "encoder")
        self.model = load_pretrained(AutoModel, model, "encoder", dtype=self.placement.dtype)
        self.model.to(self.placement.device).eval()
        limit = getattr(self.model.config, "max_position_embeddings", None) or max_length
        self.max_length = int(min(max_length, limit))
        self.batch_size = batch_size
        if pooling not in ("mean", "cls"):
            raise ValueError(f"pooling must be mean or cls, not {pooling!r}")
        self.pooling = pooling

    @property
    def dim(self) -> int:
        return int(self.model.config.hidden_size)

    @staticmethod
    def dimension(model: str) -> int:
        """The embedding size of an encoder folder, from its config alone (no weights loaded)."""
        from transformers import AutoConfig

        from thresher.scorers.causal_lm import resolve_model_dir
        from thresher.scorers.torch_runtime import _from_pretrained

        config = _from_pretrained(AutoConfig, resolve_model_dir(model), "encoder config")
        return int(config.hidden_size)

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """(len(texts), dim) float32 unit vectors; an empty text gets the embedding of its special tokens."""
        import torch

        enc = self.tokenizer(list(texts), truncation=True, max_length=self.max_length, verbose=False)
        rows = [{k: enc[k][i] for k in enc} for i in range(len(texts))]
        out = np.zeros((len(rows), self.dim), dtype=np.float32)
        with torch.inference_mode():
            for batch in length_batches([len(r["input_ids"]) for r in rows], self.batch_size):
                inputs = self.tokenizer.pad([rows[i] for i in batch], return_tensors="pt")
                inputs = {k: v.to(self.placement.device) for k, v in inputs.items()}
                hidden = self.model(**inputs).last_hidden_state.float()
                attention = inputs["attention_mask"]
                if self.pooling == "cls":
                    # The first real token ([CLS]), wherever the tokenizer puts the padding.
                    first = attention.argmax(dim=1)
                    pooled = hidden[torch.arange(len(first), device=first.device), first]
                else:
                    mask = attention.unsqueeze(-1).float()
                    pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)
                out[batch] = torch.nn.functional.normalize(pooled, dim=-1).cpu().numpy()
        return out
