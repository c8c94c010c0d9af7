"""KenLM scoring the cc_net way: normalise each line, tokenise it with sentencepiece, score it with KenLM,
and take a document's perplexity from the sum of its line log10-probabilities over its token count
(each line's tokens plus its end-of-sentence), so a one-line document gets exactly
`kenlm.Model.perplexity` of its tokenised line.

Also: training the sentencepiece tokenizer, and resolving `--model`/`--tokenizer` into checked files.
`kenlm` and `sentencepiece` are imported inside functions so loading a stage module stays cheap.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from thresher.pipelines.engine import storage
from thresher.pipelines.engine.digest import file_digest
from thresher.pipelines.engine.errors import ThresherError
from thresher.scorers.doc_scores import DocScores
from thresher.scorers.kenlm_text import document_lines

MODEL_FILE = "model.binary"
TOKENIZER_FILE = "tokenizer.model"
META_FILE = "kenlm.json"
# Below this share of the tokenizer's pieces in the KenLM vocabulary, the two were not trained together.
MIN_SHARED_VOCAB = 0.5


@dataclass(frozen=True)
class KenLMFiles:
    model: Path
    tokenizer: Path


def resolve_files(model: str, tokenizer: str | None) -> KenLMFiles:
    """`--model` is a `thresher lm train-kenlm` output folder (model.binary + tokenizer.model) or a KenLM
    .binary/.arpa file, with `--tokenizer` next to it or given explicitly."""
    path = storage.location(model)
    if not path.exists():
        raise ThresherError(
            f"--model {model}: no such file or folder; pass a `thresher lm train-kenlm` output folder "
            "or a KenLM .binary/.arpa file"
        )
    folder = path if path.is_dir() else path.parent
    model_file = path / MODEL_FILE if path.is_dir() else path
    if not model_file.is_file():
        raise ThresherError(
            f"--model {model}: no {MODEL_FILE} in this folder; is it a `thresher lm train-kenlm` output?"
        )
    tokenizer_file = storage.location(tokenizer) if tokenizer else folder / TOKENIZER_FILE
    if not tokenizer_file.is_file():
        raise ThresherError(
            f"--tokenizer {tokenizer_file}: no sentencepiece model there; pass --tokenizer with the "
            "tokenizer the KenLM model was trained on"
        )
    meta = folder / META_FILE
    if tokenizer and meta.is_file():
        trained_with = json.loads(meta.read_text()).get("tokenizer_digest")
        if trained_with and trained_with != file_digest(tokenizer_file):
            raise ThresherError(
                f"--tokenizer {tokenizer}: not the tokenizer {model_file} was trained with "
                f"({folder / TOKENIZER_FILE}); drop --tokenizer or pass that one"
            )
    return KenLMFiles(model_file, tokenizer_file)


def load_sentencepiece(path: Path) -> Any:
    import sentencepiece as spm

    try:
        return spm.SentencePieceProcessor(model_file=str(storage.local_file(path)))
    except (RuntimeError, OSError) as exc:
        raise ThresherError(f"{path}: not a sentencepiece model ({str(exc).splitlines()[0]})") from None


# What a KenLM binary starts with, and the compressed forms KenLM reads an ARPA file from.
_KENLM_STARTS = (b"mmap lm http://kheafield.com/code", b"\x1f\x8b", b"BZh", b"\xfd7zXZ")


def _looks_like_kenlm(path: Path) -> bool:
    """A KenLM binary, compressed, or an ARPA file: after blank and `#` lines, ARPA text opens with
    `\\data\\`. Checked first because KenLM reads anything else as ARPA text, drawing a progress bar
    on stderr before it fails."""
    with open(path, "rb") as f:
        head = f.read(1 << 16)
    if head.startswith(_KENLM_STARTS):
        return True
    for line in head.splitlines():
        if line.strip() and not line.startswith(b"#"):
            return line.strip() == b"\\data\\"
    return True  # nothing but blank or comment lines so far: KenLM decides


def load_kenlm(path: Path) -> Any:
    import kenlm

    path = storage.local_file(path)  # KenLM maps the file by name: a remote model is fetched once
    if not _looks_like_kenlm(path):
        raise ThresherError(f"{path}: not a KenLM model (neither a KenLM binary nor an ARPA file)")
    try:
        return kenlm.Model(str(path))
    except OSError as exc:
        raise ThresherError(f"{path}: not a KenLM model ({str(exc).split(' (')[0]})") from None
    except UnicodeDecodeError:
        # KenLM's message quotes the bytes it could not parse, which then fail to decode.
        raise ThresherError(f"{path}: not a KenLM model (corrupt or truncated)") from None


def train_sentencepiece(
    lines: Iterable[str],
    out: Path,
    *,
    vocab_size: int,
    sample_lines: int,
    character_coverage: float,
    threads: int,
    seed: int,
) -> int:
    """Train a unigram sentencepiece model on normalised lines; returns its vocabulary size.

    `vocab_size` is an upper bound (a small corpus gets a smaller vocabulary instead of an error). The
    result depends on `threads` (the EM sums are split by thread), so it is a param, not the core count.
    """
    import sentencepiece as spm

    spm.set_random_generator_seed(seed)
    model = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(lines),
            model_writer=model,
            model_type="unigram",
            vocab_size=vocab_size,
            hard_vocab_limit=False,
            character_coverage=character_coverage,
            input_sentence_size=sample_lines,
            shuffle_input_sentence=True,
            num_threads=threads,
            minloglevel=2,
        )
    except RuntimeError as exc:
        raise ThresherError(f"sentencepiece training failed: {str(exc).splitlines()[0]}") from None
    out.write_bytes(model.getvalue())
    return int(load_sentencepiece(out).get_piece_size())


class KenLMScorer:
    """A loaded KenLM model and its sentencepiece tokenizer, scoring documents in batches."""

    def __init__(self, files: KenLMFiles, threads: int = 1) -> None:
        self.files = files
        self.threads = threads
        self.sp = load_sentencepiece(files.tokenizer)
        self.model = load_kenlm(files.model)
        self._check_vocabulary()

    def _check_vocabulary(self) -> None:
        sp = self.sp
        pieces = [
            sp.id_to_piece(i)
            for i in range(sp.get_piece_size())
            if not (sp.is_control(i) or sp.is_unknown(i) or sp.is_byte(i))
        ]
        if not pieces:
            return
        shared = sum(p in self.model for p in pieces) / len(pieces)
        if shared < MIN_SHARED_VOCAB:
            raise ThresherError(
                f"{self.files.tokenizer} does not match {self.files.model}: only {shared:.0%} of its pieces "
                "are in the model's vocabulary; pass the tokenizer the model was trained on"
            )

    def tokenize(self, lines: Sequence[str]) -> list[str]:
        """Normalised lines to space-separated sentencepiece pieces, KenLM's input format."""
        if not lines:
            return []
        return [" ".join(p) for p in self.sp.encode(list(lines), out_type=str, num_threads=self.threads)]

    def score(self, texts: Sequence[str | None]) -> DocScores:
        lines: list[str] = []
        owner: list[int] = []
        for doc, text in enumerate(texts):
            doc_lines = document_lines(text)
            lines += doc_lines
            owner += [doc] * len(doc_lines)
        score = self.model.score
        tokenized = self.tokenize(lines)
        log10 = np.fromiter((score(t) for t in tokenized), np.float64, len(tokenized))
        # +1 per line: KenLM scores the end-of-sentence token too (as kenlm.Model.perplexity counts it).
        lengths = np.fromiter((len(t.split()) + 1 for t in tokenized), np.int64, len(tokenized))
        doc = np.asarray(owner, np.int64)
        sums = np.bincount(doc, weights=log10, minlength=len(texts))
        tokens = np.bincount(doc, weights=lengths, minlength=len(texts)).astype(np.int64)
        with np.errstate(divide="ignore", invalid="ignore"):
            ppl = np.where(tokens > 0, 10.0 ** (-sums / np.maximum(tokens, 1)), np.nan)
        return DocScores(ppl, tokens)
