"""Perplexity of documents under a local Hugging Face causal LM.

Offline by construction: a model is a local folder or a name already in the local Hugging Face cache,
loaded with `local_files_only=True`, safetensors weights only (never a pickle) and no remote code.

Scoring: each document is tokenised, prefixed with the model's BOS token when it has one (so the first
word is predicted too), and cut into windows of at most the model's context. Windows are sorted by length
before batching, so a batch pads to a similar length instead of to the longest document of the shard. The
loss counts real tokens only: padding and, in strided windows, the overlap already scored are masked.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from thresher.pipelines.engine.digest import file_digest
from thresher.pipelines.engine.errors import ThresherError
from thresher.scorers.device import DeviceName, resolve_device
from thresher.scorers.doc_scores import DocScores

LongDocs = Literal["stride", "truncate"]


def resolve_model_dir(name_or_path: str) -> Path:
    """A local model folder, or the local Hugging Face cache snapshot of a hub name; never a download."""
    path = Path(name_or_path).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise ThresherError(f"--model {name_or_path}: not a Hugging Face model folder (no config.json)")
        folder = path
    else:
        from huggingface_hub import snapshot_download

        try:
            folder = Path(snapshot_download(name_or_path, local_files_only=True))
        except Exception:  # not a valid repo id, or not cached: the same answer for the user
            raise ThresherError(
                f"--model {name_or_path}: no such folder, and not in the local Hugging Face cache "
                f"(runs are offline; fetch it first, e.g. `hf download {name_or_path}`)"
            ) from None
    if not any(folder.glob("*.safetensors")):
        raise ThresherError(
            f"--model {name_or_path}: no .safetensors weights in {folder} (pickled .bin weights are "
            "never loaded; convert them to safetensors)"
        )
    return folder


def model_digests(folder: Path) -> dict[str, str]:
    """Digests of the files that decide the scores, so a changed model re-runs the tasks."""
    return {
        p.name: file_digest(p)
        for p in sorted(folder.iterdir())
        if p.is_file()
        and not p.name.startswith(".")
        and p.suffix in (".json", ".safetensors", ".model", ".txt")
    }


def load_causal_lm(folder: Path, device: DeviceName = "auto") -> tuple[Any, Any, Any]:
    """(model, tokenizer, placement), the model in eval mode on its device."""
    from safetensors import SafetensorError
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    placement = resolve_device(device)
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True, trust_remote_code=False)
    except (OSError, ValueError, TypeError) as exc:
        raise ThresherError(f"{folder}: no usable tokenizer ({_first_line(exc)})") from None
    shown = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # a per-tensor loading bar is noise next to thresher's progress
    try:
        model = AutoModelForCausalLM.from_pretrained(
            folder,
            local_files_only=True,
            use_safetensors=True,
            trust_remote_code=False,
            dtype=placement.dtype,
        )
    except (OSError, ValueError, KeyError, TypeError, RuntimeError, SafetensorError) as exc:
        raise ThresherError(f"{folder}: not a loadable causal LM ({_first_line(exc)})") from None
    finally:
        if shown:
            hf_logging.enable_progress_bar()
    rows = model.get_input_embeddings().num_embeddings
    if len(tokenizer) > rows:
        raise ThresherError(
            f"{folder}: tokenizer has {len(tokenizer)} tokens but the model only {rows} embeddings; "
            "the tokenizer does not belong to this model"
        )
    model.to(placement.device).eval()
    return model, tokenizer, placement


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


@dataclass(frozen=True)
class Window:
    doc: int
    ids: list[int]
    skip: int  # leading targets already scored by the previous window (strided overlap)


def context_length(model: Any) -> int:
    config = model.config
    for name in ("max_position_embeddings", "n_positions", "n_ctx"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return 1024


def windows_for(doc: int, ids: list[int], max_length: int, stride: int, long_docs: LongDocs) -> list[Window]:
    """Cut a document into windows of at most `max_length` tokens. A window predicts its tokens 1..n from
    the ones before; with `stride`, each later window starts `stride` tokens on and scores only the tokens
    the previous window did not, with up to `max_length - stride` tokens of context before them."""
    if len(ids) <= max_length or long_docs == "truncate":
        return [Window(doc, ids[:max_length], 0)]
    out = []
    scored_to = 0  # targets [1, scored_to) are scored
    begin = 0
    while scored_to < len(ids):
        end = min(begin + max_length, len(ids))
        first_target = max(begin + 1, scored_to)
        out.append(Window(doc, ids[begin:end], first_target - (begin + 1)))
        scored_to = end
        begin += stride
    return out


class CausalLMScorer:
    def __init__(
        self,
        folder: Path,
        *,
        device: DeviceName = "auto",
        batch_size: int = 16,
        max_length: int | None = None,
        stride: int | None = None,
        long_docs: LongDocs = "stride",
        sort_by_length: bool = True,
        threads: int | None = None,
    ) -> None:
        self.model, self.tokenizer, self.placement = load_causal_lm(folder, device)
        if threads and not self.placement.is_cuda:
            import torch

            torch.set_num_threads(threads)
        limit = context_length(self.model)
        self.max_length = min(max_length or limit, limit)
        if self.max_length < 2:
            raise ThresherError(f"--max-length {self.max_length}: need at least 2 tokens to predict one")
        self.stride = min(stride or self.max_length // 2, self.max_length - 1) if long_docs == "stride" else 0
        self.stride = max(self.stride, 1)
        self.long_docs = long_docs
        self.batch_size = batch_size
        self.sort_by_length = sort_by_length
        tok = self.tokenizer
        self.prefix = [tok.bos_token_id] if tok.bos_token_id is not None else []
        # Any id works for padding: padded positions are masked out of attention and of the loss.
        self.pad_id = next((i for i in (tok.pad_token_id, tok.eos_token_id, 0) if i is not None), 0)

    def encode(self, texts: Sequence[str | None]) -> list[list[int]]:
        present = [i for i, t in enumerate(texts) if t and t.strip()]
        encoded: list[list[int]] = [[] for _ in texts]
        if present:
            ids = self.tokenizer([texts[i] for i in present], add_special_tokens=False, verbose=False)[
                "input_ids"
            ]
            for i, doc_ids in zip(present, ids, strict=True):
                encoded[i] = list(doc_ids)
        return encoded

    def score(self, texts: Sequence[str | None]) -> DocScores:
        import torch

        nll = np.zeros(len(texts), np.float64)
        counts = np.zeros(len(texts), np.int64)
        windows = [
            w
            for doc, ids in enumerate(self.encode(texts))
            if ids
            for w in windows_for(doc, self.prefix + ids, self.max_length, self.stride, self.long_docs)
        ]
        if self.sort_by_length:
            # Stable sort: equal lengths keep document order, so batches (and scores) are reproducible.
            windows.sort(key=lambda w: len(w.ids))
        with torch.inference_mode():
            for start in range(0, len(windows), self.batch_size):
                batch = windows[start : start + self.batch_size]
                for w, (loss, n) in zip(batch, self._batch_nll(batch), strict=True):
                    nll[w.doc] += loss
                    counts[w.doc] += n
        with np.errstate(invalid="ignore", divide="ignore"):
            ppl = np.where(counts > 0, np.exp(nll / np.maximum(counts, 1)), np.nan)
        return DocScores(ppl, counts)

    def _batch_nll(self, batch: list[Window]) -> list[tuple[float, int]]:
        """Summed negative log-likelihood (nats) and target count of each window."""
        import torch

        device = self.placement.device
        width = max(len(w.ids) for w in batch)
        ids = torch.full((len(batch), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, w in enumerate(batch):
            ids[row, : len(w.ids)] = torch.tensor(w.ids, dtype=torch.long)
            mask[row, : len(w.ids)] = 1
        ids, mask = ids.to(device), mask.to(device)
        logits = self.model(input_ids=ids, attention_mask=mask).logits
        out = []
        for row, w in enumerate(batch):
            n = len(w.ids)
            if n < 2:
                out.append((0.0, 0))
                continue
            # Row by row, in fp32: a (batch, length, vocab) fp32 copy at once would dwarf the model.
            row_logits = logits[row, w.skip : n - 1].float()
            targets = ids[row, w.skip + 1 : n]
            loss = torch.nn.functional.cross_entropy(row_logits, targets, reduction="sum")
            out.append((float(loss), n - 1 - w.skip))
        return out
