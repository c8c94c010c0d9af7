"""What a token is here: a local tokenizer, either a `tokenizers` JSON file (`tokenizer.json`), a
`transformers` tokenizer folder (one with `tokenizer_config.json`) or a sentencepiece model (`.model`,
such as the one `lm train-kenlm` writes), loaded offline. Nothing is downloaded and no code from the
folder runs (`local_files_only`, `trust_remote_code=False`).

Texts are encoded with the tokenizer's own special tokens (`add_special_tokens=True`, as
`tokenizer(text)` does): a Llama-style tokenizer's BOS is part of each document's tokens.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from thresher.pipelines.engine import storage
from thresher.pipelines.engine.errors import ThresherError, UsageError

# End-of-document tokens by the names common tokenizers give them, for a bare tokenizer.json, which
# carries no "this is the EOS" field (a transformers folder says so in its tokenizer_config.json).
EOS_NAMES = ("<|endoftext|>", "</s>", "<|end_of_text|>", "<eos>", "<|eos|>", "[EOS]")
TRANSFORMERS_CONFIG = "tokenizer_config.json"
TOKENIZER_FILE = "tokenizer.json"


@dataclass(frozen=True)
class LocalTokenizer:
    """A loaded tokenizer: the `tokenizers` object that encodes (a transformers fast tokenizer's
    backend), how many ids it can give, and its end-of-document id when it names one."""

    backend: Any  # tokenizers.Tokenizer, or a sentencepiece processor
    vocab_size: int  # one past the largest id, added tokens included
    eos_id: int | None
    source: Path
    sentencepiece: bool = False

    def encode(self, texts: Sequence[str | None]) -> list[list[int]]:
        if self.sentencepiece:
            return self.backend.encode([t or "" for t in texts])  # type: ignore[no-any-return]
        encodings = self.backend.encode_batch([t or "" for t in texts], add_special_tokens=True)
        return [e.ids for e in encodings]

    def count(self, texts: pa.Array | pa.ChunkedArray) -> np.ndarray:
        """Tokens per text (a null text counts as empty)."""
        ids = self.encode(texts.to_pylist())
        return np.fromiter((len(i) for i in ids), dtype=np.int64, count=len(ids))


def check_path(path: Path, flag: str = "--tokenizer") -> Path:
    """The path, if it can hold a tokenizer; a one-line usage error naming what to pass otherwise."""
    if path.is_file():
        return path
    if path.is_dir() and ((path / TRANSFORMERS_CONFIG).is_file() or (path / TOKENIZER_FILE).is_file()):
        return path
    what = "no such file or folder" if not path.exists() else f"no {TRANSFORMERS_CONFIG} or {TOKENIZER_FILE}"
    raise UsageError(
        f"{flag} {path}: {what} (pass a tokenizers JSON file or a transformers tokenizer folder)"
    )


def load_tokenizer(path: Path, flag: str = "--tokenizer") -> LocalTokenizer:
    path = check_path(path, flag)
    if path.is_dir() and (path / TRANSFORMERS_CONFIG).is_file():
        return _from_transformers(path, flag)
    if path.is_file() and path.suffix == ".model":
        return _from_sentencepiece(path, flag)
    file = path / TOKENIZER_FILE if path.is_dir() else path
    from tokenizers import Tokenizer

    try:
        backend = Tokenizer.from_file(str(storage.local_file(file)))  # by name: a remote file is fetched
    except Exception as exc:  # tokenizers raises a bare Exception for a file it cannot parse
        reason = " ".join(str(exc).split())[:200]
        raise ThresherError(f"{flag} {file}: not a tokenizers JSON file ({reason})") from None
    return LocalTokenizer(_whole(backend), _vocab_size(backend), _named_eos(backend), path)


def _from_transformers(folder: Path, flag: str) -> LocalTokenizer:
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(
            str(folder), local_files_only=True, trust_remote_code=False, use_fast=True
        )
    except (OSError, ValueError, KeyError, TypeError, ImportError) as exc:
        reason = " ".join(str(exc).split())[:300] or type(exc).__name__
        raise ThresherError(f"{flag} {folder}: cannot load the tokenizer: {reason}") from None
    if not getattr(tokenizer, "is_fast", False):
        # Only a fast tokenizer has a `tokenizers` backend, which encodes a batch in Rust threads.
        raise ThresherError(f"{flag} {folder}: {type(tokenizer).__name__} has no fast (tokenizers) version")
    backend = tokenizer.backend_tokenizer
    eos = tokenizer.eos_token_id
    return LocalTokenizer(
        _whole(backend),
        max(len(tokenizer), _vocab_size(backend)),
        eos if eos is not None else _named_eos(backend),
        folder,
    )


def _from_sentencepiece(file: Path, flag: str) -> LocalTokenizer:
    from thresher.scorers.kenlm_model import load_sentencepiece

    try:
        processor = load_sentencepiece(file)
    except ThresherError as exc:
        raise ThresherError(f"{flag} {exc}") from None
    eos = processor.eos_id()
    return LocalTokenizer(processor, processor.get_piece_size(), eos if eos >= 0 else None, file, True)


def _whole(backend: Any) -> Any:
    # A saved tokenizer.json may carry truncation or padding (a model's 512-token limit, say): a count or
    # a training file needs every token of every document, and no pad ids.
    backend.no_truncation()
    backend.no_padding()
    return backend


def _vocab_size(backend: Any) -> int:
    vocab = backend.get_vocab(with_added_tokens=True)
    return max(backend.get_vocab_size(with_added_tokens=True), max(vocab.values(), default=-1) + 1)


def _named_eos(backend: Any) -> int | None:
    special = {t.content: i for i, t in backend.get_added_tokens_decoder().items() if t.special}
    for name in EOS_NAMES:
        if name in special:
            return int(special[name])
    return None
