"""Turning labelled shards into fastText training and held-out files, and scoring a held-out split.

Examples are split by a seeded hash of their id (so the split does not depend on shard order or worker
count) and shuffled by the same hash before training: fastText learns online, and examples sorted by
label (all positives, then all negatives) would leave the model biased to whichever came last. The
shuffle goes through hash buckets on disk, so memory holds one bucket, not the training set.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import xxhash

from thresher.scorers.fasttext_model import LABEL_PREFIX, FastTextModel, fasttext_lines, training_line
from thresher.scorers.metrics import binary_metrics

ROWS_PER_SHUFFLE_BUCKET = 50_000
_HOLDOUT_SCALE = 1_000_000
# Held-out predictions kept in metrics.json: a reliability plot's bins need thousands, not millions.
MAX_SAVED_PREDICTIONS = 20_000


@dataclass
class LabelledBatch:
    ids: pa.Array
    texts: pa.Array
    labels: list[str | None]  # None: not used for training
    pairs: pa.Array | None = None  # second text of a (question, answer) pair, for pair classifiers


@dataclass
class TrainingFiles:
    train: Path
    heldout: Path
    train_counts: Counter[str] = field(default_factory=Counter)
    heldout_counts: Counter[str] = field(default_factory=Counter)


def write_training_files(
    batches: Iterable[LabelledBatch], work: Path, *, holdout: float, seed: int, expected_rows: int
) -> TrainingFiles:
    work.mkdir(parents=True, exist_ok=True)
    n_buckets = max(1, math.ceil(expected_rows / ROWS_PER_SHUFFLE_BUCKET))
    files = TrainingFiles(work / "train.txt", work / "heldout.txt")
    bucket_paths = [work / f"shuffle-{b:05d}.txt" for b in range(n_buckets)]
    buckets = [open(p, "w", encoding="utf-8") for p in bucket_paths]  # noqa: SIM115 - closed below
    try:
        with open(files.heldout, "w", encoding="utf-8") as heldout:
            for batch in batches:
                lines = fasttext_lines(batch.texts)
                for id_, line, label in zip(batch.ids.to_pylist(), lines, batch.labels, strict=True):
                    if label is None:
                        continue
                    h = xxhash.xxh3_64_intdigest((id_ or "").encode(), seed=seed)
                    if h % _HOLDOUT_SCALE < holdout * _HOLDOUT_SCALE:
                        heldout.write(training_line(label, line))
                        files.heldout_counts[label] += 1
                    else:
                        buckets[(h >> 32) % n_buckets].write(f"{h:020d}\t{training_line(label, line)}")
                        files.train_counts[label] += 1
    finally:
        for b in buckets:
            b.close()
    with open(files.train, "w", encoding="utf-8") as train:
        for path in bucket_paths:
            with open(path, encoding="utf-8") as f:
                # Sorting the whole line, hash first, makes ties (equal ids) deterministic too.
                train.writelines(line.partition("\t")[2] for line in sorted(f))
            path.unlink()
    return files


def read_heldout(path: Path, batch_lines: int = 8192) -> Iterator[tuple[list[str], list[str]]]:
    """(labels, fastText input lines) of the held-out file, in batches."""
    labels: list[str] = []
    lines: list[str] = []
    with open(path, encoding="utf-8") as f:
        for raw in f:
            label, _, text = raw.partition(" ")
            labels.append(label.removeprefix(LABEL_PREFIX))
            lines.append(text)
            if len(lines) >= batch_lines:
                yield labels, lines
                labels, lines = [], []
    if lines:
        yield labels, lines


def heldout_scores(model: FastTextModel, heldout: Path, positive: str) -> tuple[np.ndarray, np.ndarray]:
    """(is positive, P(positive)) of every held-out example, in file order."""
    truth: list[np.ndarray] = []
    scores: list[np.ndarray] = []
    for labels, lines in read_heldout(heldout):
        truth.append(np.array([label == positive for label in labels], dtype=bool))
        scores.append(model.probabilities(lines, positive))
    y = np.concatenate(truth) if truth else np.zeros(0, dtype=bool)
    s = np.concatenate(scores) if scores else np.zeros(0, dtype=np.float32)
    return y, s


def heldout_metrics(
    model: FastTextModel, heldout: Path, positive: str, threshold: float = 0.5
) -> dict[str, Any]:
    """Precision, recall, F1 (at `threshold`) and ROC AUC of P(positive) on the held-out examples."""
    y, s = heldout_scores(model, heldout, positive)
    return binary_metrics(y, s, threshold)


def heldout_predictions(
    y: np.ndarray, score: np.ndarray, limit: int = MAX_SAVED_PREDICTIONS
) -> dict[str, Any]:
    """The held-out labels and predicted probabilities as JSON lists, for a reliability plot. Over `limit`
    examples, an evenly spaced subset: the held-out file follows input order, so its head alone could be
    one source of the data."""
    keep = np.arange(len(y))
    if len(y) > limit:
        keep = np.linspace(0, len(y) - 1, limit).round().astype(np.int64)
    return {
        "rows": len(y),
        "saved": len(keep),
        "label": [int(v) for v in y[keep]],
        "probability": [round(float(v), 6) for v in score[keep]],
    }
