"""Reward / quality scores from a sequence-classification model (DeBERTa-v2/v3 and kin), and fine-tuning
one on labelled (question, answer) pairs.

Scoring follows MoDS: the question is `instruction + "\\n" + input`, the answer is the output, the pair is
encoded as `[CLS] question [SEP] answer [SEP]` and the score is the model's first logit (a reward model
such as OpenAssistant's `reward-model-deberta-v3-large-v2` has exactly one). Pairs longer than the model's
limit are truncated longest-first and counted. Batches are length-bucketed; on a GPU the model runs in
bf16.

Fine-tuning (`finetune_classifier`) turns any such backbone (e.g. a `deberta-v3-base` folder) into a
one-logit quality classifier with a class-balanced logistic loss, so its logit is a reward whose natural
threshold is 0. What `thresher quality train --backbone deberta-v3` runs.

DeBERTa's tokenizer pitfalls, handled in `torch_runtime.load_tokenizer`: transformers 5 converts the
sentencepiece `spm.model` to a fast tokenizer only with `protobuf` and `sentencepiece` installed, and
without them (or with `DebertaV2Tokenizer(vocab_file=...)`) silently ends up with a 7-token vocabulary.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from thresher.pipelines.engine.errors import ThresherError
from thresher.scorers.device import DeviceName, resolve_device
from thresher.scorers.torch_runtime import (
    length_batches,
    load_pretrained,
    load_tokenizer,
    quiet_transformers,
    seed_torch,
)
from thresher.scorers.training import EpochTrainer

log = logging.getLogger("thresher")
TRAINING_FILE = "thresher_training.json"


def question_text(instruction: str | None, inp: str | None) -> str:
    """The question half of a pair, as MoDS builds it: the instruction, a newline, then the input."""
    instruction = instruction or ""
    return f"{instruction}\n{inp}" if inp else instruction


@dataclass
class PairScores:
    scores: np.ndarray  # float32, NaN where the model produced no finite score
    truncated: np.ndarray  # bool: the pair was longer than max_length and was cut


class RewardScorer:
    """Scores (question, answer) pairs with the first logit of a local sequence-classification model."""

    def __init__(
        self, model: str, *, device: DeviceName = "auto", batch_size: int = 16, max_length: int = 512
    ) -> None:
        import torch
        from transformers import AutoModelForSequenceClassification

        quiet_transformers()
        self.placement = resolve_device(device)
        self.tokenizer = load_tokenizer(model, "reward model")
        self.model = load_pretrained(
            AutoModelForSequenceClassification,
            model,
            "reward model",
            hint=" (a backbone, not a trained classifier? fine-tune it: quality train --backbone deberta-v3)",
            dtype=self.placement.dtype,
        )
        self.model.to(self.placement.device).eval()
        limit = getattr(self.model.config, "max_position_embeddings", None) or max_length
        # Relative-position DeBERTa has no hard limit, but the tokenizer's own limit still applies.
        tokenizer_limit = getattr(self.tokenizer, "model_max_length", None) or max_length
        self.max_length = int(
            min(max_length, tokenizer_limit if tokenizer_limit < 1e9 else max_length, limit)
        )
        self.batch_size = batch_size
        self._torch = torch

    def encode(
        self, questions: Sequence[str], answers: Sequence[str]
    ) -> tuple[list[dict[str, Any]], np.ndarray]:
        """Token ids of each pair; pairs over max_length are truncated longest-first (and flagged)."""
        full = self.tokenizer(list(questions), list(answers), verbose=False)
        rows = [{k: full[k][i] for k in full} for i in range(len(questions))]
        truncated = np.array([len(r["input_ids"]) > self.max_length for r in rows], dtype=bool)
        long = np.nonzero(truncated)[0]
        if len(long):
            cut = self.tokenizer(
                [questions[i] for i in long],
                [answers[i] for i in long],
                truncation="longest_first",
                max_length=self.max_length,
                verbose=False,
            )
            for j, i in enumerate(long):
                rows[i] = {k: cut[k][j] for k in cut}
        return rows, truncated

    def score(self, questions: Sequence[str], answers: Sequence[str]) -> PairScores:
        torch = self._torch
        rows, truncated = self.encode(questions, answers)
        scores = np.full(len(rows), np.nan, dtype=np.float32)
        with torch.inference_mode():
            for batch in length_batches([len(r["input_ids"]) for r in rows], self.batch_size):
                inputs = self.tokenizer.pad([rows[i] for i in batch], return_tensors="pt")
                inputs = {k: v.to(self.placement.device) for k, v in inputs.items()}
                logits = self.model(**inputs).logits
                scores[batch] = logits[:, 0].float().cpu().numpy()
        scores[~np.isfinite(scores)] = np.nan
        return PairScores(scores, truncated)


# ---------------------------------------------------------------------------------------------------------
# Fine-tuning a quality / reward classifier


@dataclass(frozen=True)
class FinetuneSettings:
    epochs: int = 3
    learning_rate: float = 3e-5
    batch_size: int = 16
    max_length: int = 512
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1
    # Weight each class by half over its count, so the rarer label (usually the bad answers) counts as
    # much as the common one and logit 0 sits between the classes.
    balance: bool = True
    seed: int = 0
    device: DeviceName = "auto"


@dataclass
class LabelledPairs:
    """Texts (the question, or the whole document), optional second texts (the answer) and 0/1 labels."""

    texts: list[str]
    pairs: list[str] | None
    labels: np.ndarray  # bool, True = good

    def __post_init__(self) -> None:
        self.labels = np.asarray(self.labels, dtype=bool)
        if len(self.texts) != len(self.labels) or (
            self.pairs is not None and len(self.pairs) != len(self.texts)
        ):
            raise ValueError("texts, pairs and labels must have the same length")


def finetune_classifier(
    train: LabelledPairs,
    base: str,
    out_dir: Path,
    settings: FinetuneSettings = FinetuneSettings(),
    heldout: LabelledPairs | None = None,
) -> dict[str, Any]:
    """Fine-tune the backbone in `base` (a DeBERTa-v3 folder, or any model with a sequence-classification
    head in transformers) into a one-logit quality classifier; write it with its tokenizer to `out_dir`
    (safetensors, replaced atomically) and return training figures, held-out ROC AUC included."""
    import torch
    from transformers import AutoModelForSequenceClassification

    from thresher.scorers.metrics import binary_metrics

    if len(train.labels) == 0:
        raise ThresherError("quality train: no labelled training examples")
    if train.labels.all() or not train.labels.any():
        raise ThresherError("quality train: the training examples have only one label; need both classes")
    start = time.perf_counter()
    quiet_transformers()
    placement = resolve_device(settings.device)
    seed_torch(settings.seed)
    tokenizer = load_tokenizer(base, "backbone")
    # A fresh one-logit head (seeded above) replaces whatever head the backbone had.
    model = load_pretrained(
        AutoModelForSequenceClassification,
        base,
        "backbone",
        new_weights=("classifier", "pooler", "score"),  # a fresh head; the backbone must be complete
        num_labels=1,
        ignore_mismatched_sizes=True,
        dtype=torch.float32,
    )
    model.config.problem_type = "regression"  # one logit; the loss is ours (logistic), see below
    model.to(placement.device).train()
    rows = _encode(tokenizer, train, settings.max_length)
    labels = torch.tensor(train.labels, dtype=torch.float32)
    n_pos = float(train.labels.sum())
    n_neg = float(len(train.labels) - n_pos)
    weights = (
        torch.where(labels > 0, len(labels) / (2 * n_pos), len(labels) / (2 * n_neg))
        if settings.balance
        else torch.ones_like(labels)
    )
    trainer = EpochTrainer(
        model.parameters(),
        [len(r["input_ids"]) for r in rows],
        epochs=settings.epochs,
        batch_size=settings.batch_size,
        learning_rate=settings.learning_rate,
        seed=settings.seed,
        weight_decay=settings.weight_decay,
        warmup_ratio=settings.warmup_ratio,
    )
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=placement.is_cuda)

    def backward(batch: np.ndarray) -> float:
        inputs = tokenizer.pad([rows[i] for i in batch], return_tensors="pt")
        inputs = {k: v.to(placement.device) for k, v in inputs.items()}
        with autocast:
            logits = model(**inputs).logits[:, 0].float()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(
            logits, labels[batch].to(placement.device), weight=weights[batch].to(placement.device)
        )
        loss.backward()
        return float(loss.detach()) * len(batch)

    losses: list[float] = []
    for epoch in trainer.run(backward):
        losses.append(round(epoch.loss_sum / len(rows), 6))
        log.info("quality train: epoch %d/%d loss %.4f", epoch.index + 1, settings.epochs, losses[-1])
    model.eval()
    report: dict[str, Any] = {
        "backbone": str(base),
        "train_rows": len(rows),
        "train_positives": int(n_pos),
        "train_negatives": int(n_neg),
        "epoch_loss": losses,
        "settings": asdict(settings),
    }
    if heldout is not None and len(heldout.labels):
        scorer_rows = _encode(tokenizer, heldout, settings.max_length)
        scores = _predict(model, tokenizer, scorer_rows, settings.batch_size, placement)
        report["heldout"] = binary_metrics(heldout.labels, scores, threshold=0.0)
    report["seconds"] = round(time.perf_counter() - start, 3)
    save_model_dir(model, tokenizer, Path(out_dir), report)
    return report


_HOLDOUT_SCALE = 1_000_000  # the same id-hash split as pipelines/stages/quality/training_files.py


def holdout_mask(ids: Sequence[str | None], holdout: float, seed: int) -> np.ndarray:
    """True for the rows held out for metrics: a seeded hash of the id, so the split does not depend on
    shard order or worker count (the fastText trainer splits the same way)."""
    import xxhash

    hashes = [xxhash.xxh3_64_intdigest((i or "").encode(), seed=seed) for i in ids]
    return np.array([h % _HOLDOUT_SCALE < holdout * _HOLDOUT_SCALE for h in hashes], dtype=bool)


def finetune_from_batches(
    batches: Iterable[
        tuple[Sequence[str | None], Sequence[str | None], Sequence[str | None] | None, Sequence[str | None]]
    ],
    *,
    positive: str,
    base: str,
    out_dir: Path,
    holdout: float,
    settings: FinetuneSettings,
) -> dict[str, Any]:
    """`quality train --backbone deberta-v3`: (ids, texts, second texts or None, labels) batches ->
    a fine-tuned one-logit classifier in `out_dir` and its report. Rows labelled None, or without text,
    are left out (and counted); `positive` names the good label, every other label is bad."""
    parts: dict[bool, tuple[list[str], list[str], list[bool]]] = {False: ([], [], []), True: ([], [], [])}
    with_pairs = None
    skipped = 0
    for ids, texts, pairs, labels in batches:
        with_pairs = pairs is not None if with_pairs is None else with_pairs
        held = holdout_mask(ids, holdout, settings.seed)
        for i, (text, label) in enumerate(zip(texts, labels, strict=True)):
            second = pairs[i] if pairs is not None else ""
            if label is None or text is None or second is None:
                skipped += 1
                continue
            bucket = parts[bool(held[i])]
            bucket[0].append(text)
            bucket[1].append(second)
            bucket[2].append(label == positive)

    def labelled(held: bool) -> LabelledPairs:
        texts, seconds, labels = parts[held]
        return LabelledPairs(texts, seconds if with_pairs else None, np.array(labels, dtype=bool))

    heldout = labelled(True)
    report = finetune_classifier(
        labelled(False), base, out_dir, settings, heldout=heldout if len(heldout.labels) else None
    )
    report["rows_without_label_or_text"] = skipped
    report["heldout_rows"] = len(heldout.labels)
    return report


def _encode(tokenizer: Any, data: LabelledPairs, max_length: int) -> list[dict[str, Any]]:
    enc = tokenizer(data.texts, data.pairs, truncation="longest_first", max_length=max_length, verbose=False)
    return [{k: enc[k][i] for k in enc} for i in range(len(data.texts))]


def _predict(
    model: Any, tokenizer: Any, rows: list[dict[str, Any]], batch_size: int, placement: Any
) -> np.ndarray:
    import torch

    scores = np.zeros(len(rows), dtype=np.float32)
    with torch.inference_mode():
        for batch in length_batches([len(r["input_ids"]) for r in rows], batch_size):
            inputs = tokenizer.pad([rows[i] for i in batch], return_tensors="pt")
            inputs = {k: v.to(placement.device) for k, v in inputs.items()}
            scores[batch] = model(**inputs).logits[:, 0].float().cpu().numpy()
    return scores


def save_model_dir(model: Any, tokenizer: Any, out_dir: Path, report: dict[str, Any] | None = None) -> Path:
    """Write a `save_pretrained` folder (safetensors) to a temp folder and rename it into place, so a
    reader sees the old folder or the whole new one."""
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.with_name(f".{out_dir.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        if report is not None:
            (tmp / TRAINING_FILE).write_text(
                json.dumps(report, indent=2, default=str) + "\n", encoding="utf-8"
            )
        if out_dir.exists():
            old = out_dir.with_name(f".{out_dir.name}.{os.getpid()}.old")
            os.replace(out_dir, old)
            os.replace(tmp, out_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir
