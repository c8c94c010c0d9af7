"""fastText classifiers: train a supervised model, load one (ours, or e.g. lid.176.bin), predict in batches.

The package is `fasttext-wheel==0.9.2`: on this project's machines it trains reproducibly with `thread=1`
and a fixed seed, where the numpy-2 builds were seen to abort training at random with "Encountered NaN".
Its Python wrapper has two prediction paths that are wrong under numpy 2, so this module calls the
compiled binding (`model.f.predict`) one line at a time instead:

- `FastText.predict(str)` ends in `np.array(probs, copy=False)`, which numpy 2 refuses to do.
- `FastText.predict(list)` (the binding's `multilinePredict`) returns the right labels but probability
  arrays in which every element repeats the first one, so the probability of any label but the top one
  is wrong. `tests/test_quality.py` checks that our path sums to 1 over a model's labels.

`model.f.predict` returns plain (probability, label) tuples, runs at the same speed as the batched call,
and needs no numpy. Model files are fastText's own .bin/.ftz format; nothing is ever unpickled.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from thresher.pipelines.errors import ThresherError, UsageError
from thresher.pipelines.textnorm import separator

LABEL_PREFIX = "__label__"
MODEL_FILE = "model.bin"  # what `thresher quality train` writes into its output folder


@dataclass(frozen=True)
class TrainSettings:
    """fastText supervised-training hyperparameters; `thread` is always 1, so a seed fixes the model."""

    epoch: int = 10
    lr: float = 0.5
    dim: int = 32
    word_ngrams: int = 2
    min_count: int = 1
    bucket: int = 200_000
    seed: int = 0


def fasttext_lines(texts: pa.Array | pa.ChunkedArray) -> list[str]:
    """Texts as fastText input lines: newlines become spaces (fastText reads one line per example) and
    each line ends in "\\n", as fastText's own predict and training files do, so the end-of-line token it
    learned in training is there at prediction time too."""
    texts = pc.replace_substring(pc.fill_null(texts, ""), "\n", " ")
    return pc.binary_join_element_wise(
        texts, separator("", texts.type), separator("\n", texts.type)
    ).to_pylist()


def training_line(label: str, text_line: str) -> str:
    return f"{LABEL_PREFIX}{label} {text_line}"


def clean_label(value: str) -> str:
    """A label as fastText can hold it: one token, no whitespace."""
    return "_".join(str(value).split()) or "_"


class FastTextModel:
    """A loaded fastText supervised model."""

    def __init__(self, raw: Any, path: Path | None = None) -> None:
        self._raw = raw
        self._predict = raw.f.predict
        self.path = path
        self.labels = [label.removeprefix(LABEL_PREFIX) for label in raw.get_labels()]

    @classmethod
    def load(cls, path: Path) -> FastTextModel:
        """Load a .bin/.ftz model. A worker scoring many shards loads each model file once."""
        path = Path(path)
        if not path.is_file():
            raise UsageError(f"{path}: model file does not exist")
        stat = path.stat()
        return _load_cached(str(path.resolve()), stat.st_mtime_ns, stat.st_size)

    def save(self, path: Path) -> None:
        self._raw.save_model(str(path))

    def require_label(self, label: str, option: str = "--label") -> None:
        if label not in self.labels:
            known = ", ".join(self.labels)
            raise UsageError(
                f"{self.path}: model has no label '{label}' (its labels: {known}); pass {option}"
            )

    def probabilities(self, lines: list[str], label: str) -> np.ndarray:
        """P(label) for each line (from `fasttext_lines`), as float32 in [0, 1]."""
        wanted = LABEL_PREFIX + label
        predict = self._predict
        out = np.zeros(len(lines), dtype=np.float32)
        for i, line in enumerate(lines):
            # k=-1: every label, so the wanted one is there even when it is not the most likely.
            for prob, name in predict(line, -1, 0.0, "replace"):
                if name == wanted:
                    out[i] = prob
                    break
        # fastText adds a small epsilon before its log/exp round trip, so a sure prediction can read 1.00001.
        return np.clip(out, 0.0, 1.0, out=out)

    def top_labels(self, lines: list[str]) -> tuple[list[str | None], np.ndarray]:
        """The most likely label of each line (without the __label__ prefix) and its probability."""
        predict = self._predict
        labels: list[str | None] = []
        probs = np.zeros(len(lines), dtype=np.float32)
        for i, line in enumerate(lines):
            best = predict(line, 1, 0.0, "replace")
            if best:
                probs[i] = best[0][0]
                labels.append(best[0][1].removeprefix(LABEL_PREFIX))
            else:
                labels.append(None)
        return labels, np.clip(probs, 0.0, 1.0, out=probs)


@functools.lru_cache(maxsize=4)
def _load_cached(path: str, mtime_ns: int, size: int) -> FastTextModel:
    # mtime and size are in the key so a model retrained at the same path is read again.
    import fasttext.FastText as ft  # heavy import: only when a model is used

    try:
        # _FastText directly: `fasttext.load_model` only adds a deprecation warning on stderr.
        raw = ft._FastText(model_path=path)
    except ValueError as exc:
        raise ThresherError(f"{path}: not a fastText model (.bin or .ftz): {exc}") from None
    if raw.f.getArgs().model.name != "supervised":
        raise ThresherError(f"{path}: a fastText word-vector model, not a supervised classifier")
    return FastTextModel(raw, Path(path))


def train(train_file: Path, settings: TrainSettings) -> FastTextModel:
    """Train a supervised model on a fastText-format file ("__label__x text" per line)."""
    import fasttext

    try:
        raw = fasttext.train_supervised(
            input=str(train_file),
            epoch=settings.epoch,
            lr=settings.lr,
            dim=settings.dim,
            wordNgrams=settings.word_ngrams,
            minCount=settings.min_count,
            bucket=settings.bucket,
            seed=settings.seed,
            thread=1,  # more threads race on the shared weights (Hogwild), so results would vary by run
            verbose=0,
        )
    except RuntimeError as exc:
        raise ThresherError(f"fastText training failed: {exc} (try a lower --lr)") from None
    return FastTextModel(raw)


def resolve_model_path(value: str, option: str) -> Path:
    """A model file, or a `thresher quality train` output folder holding model.bin."""
    path = Path(value)
    if path.is_dir():
        if not (path / MODEL_FILE).is_file():
            raise UsageError(f"{option} {value}: folder has no {MODEL_FILE}; pass the model file itself")
        return path / MODEL_FILE
    if not path.exists():
        raise UsageError(f"{option} {value}: model file does not exist")
    return path
