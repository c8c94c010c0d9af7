"""Held-out metrics of a binary classifier (fastText or DeBERTa): precision, recall, F1, ROC AUC."""

from __future__ import annotations

from typing import Any

import numpy as np


def binary_metrics(y: np.ndarray, score: np.ndarray, threshold: float = 0.5) -> dict[str, Any]:
    predicted = score >= threshold
    tp = int(np.sum(predicted & y))
    fp = int(np.sum(predicted & ~y))
    fn = int(np.sum(~predicted & y))
    tn = int(np.sum(~predicted & ~y))
    precision = tp / (tp + fp) if tp + fp else None
    recall = tp / (tp + fn) if tp + fn else None
    f1 = 2 * precision * recall / (precision + recall) if precision and recall else (0.0 if tp + fn else None)
    return {
        "threshold": threshold,
        "heldout_rows": len(y),
        "positives": int(y.sum()),
        "negatives": int((~y).sum()),
        "precision": _round(precision),
        "recall": _round(recall),
        "f1": _round(f1),
        "accuracy": _round((tp + tn) / len(y)) if len(y) else None,
        "roc_auc": _round(roc_auc(y, score)),
        "confusion": {"tp": tp, "fp": fp, "fn": fn, "tn": tn},
    }


def roc_auc(y: np.ndarray, score: np.ndarray) -> float | None:
    """Area under the ROC curve as the Mann-Whitney statistic (ties count half); None with one class."""
    from scipy.stats import rankdata

    positives = int(y.sum())
    negatives = len(y) - positives
    if positives == 0 or negatives == 0:
        return None
    ranks = rankdata(score)
    return float((ranks[y].sum() - positives * (positives + 1) / 2) / (positives * negatives))


def _round(value: float | None) -> float | None:
    return None if value is None else round(float(value), 6)
