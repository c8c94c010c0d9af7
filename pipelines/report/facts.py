"""What the report shows, read from a run's manifests and shards: every step, the score cutoffs of the
filtering steps with samples of the scores before and after them, example documents per drop reason, the
quality classifier's held-out results, and ablation results.

Reads are bounded: a score sample stops at HIST_SAMPLE values, and examples are looked up by id a row group
at a time, reading the text only of row groups that hold one.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from thresher.pipelines.engine import storage
from thresher.pipelines.engine.manifest import MANIFEST_NAME, Manifest
from thresher.pipelines.engine.shards import DROPPED_DIR, ID_COLUMN, TOKENS_COLUMN, iter_batches

HIST_SAMPLE = 200_000  # values per column kept for a histogram: enough for its shape, bounded memory
EXAMPLES_PER_REASON = 3
EXAMPLE_CHARS = 300
CALIBRATION_BINS = 10
QUALITY_TRAIN = "quality-train"
METRICS_FILE = "metrics.json"  # what quality-train writes (its stage's METRICS_FILE)
ABLATION_FILE = "ablation.json"  # what ablate writes (its stage's RESULTS)
# A perplexity stage writes its bucket cutoffs as `_<score column>_cutoffs.json`.
_CUTOFFS_ARTIFACT = re.compile(r"^_(?P<column>.+)_cutoffs\.json$")
# A `--where` comparison of a column with a number: the cutoff of a threshold filter.
_WHERE_CUT = re.compile(
    r"(?:`(?P<quoted>[^`]+)`|(?P<column>[A-Za-z_][A-Za-z0-9_.]*))\s*(?P<op>>=|<=|>|<)\s*"
    r"(?P<value>-?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)"
)


@dataclass
class Step:
    folder: Path
    manifest: Manifest

    @property
    def name(self) -> str:
        return self.folder.name

    @property
    def shards(self) -> list[Path]:
        return sorted(self.folder.glob("*.parquet"))

    @property
    def input_folder(self) -> Path | None:
        """The shard set this step read, when it is a thresher output (not raw files)."""
        path = storage.location(self.manifest.input.path)
        return path if (path / MANIFEST_NAME).exists() else None


def run_steps(output: Path, chain: list[Path]) -> list[Step]:
    """Every finished step of a recipe output in its order; for one shard set, its lineage oldest first."""
    folders = chain
    if not (output / MANIFEST_NAME).exists() and output.is_dir():
        folders = sorted(p for p in output.iterdir() if p.is_dir() and (p / MANIFEST_NAME).exists())
    return [Step(f, Manifest.read(f)) for f in folders]


def fingerprint_short(fingerprint: str) -> str:
    return fingerprint.partition(":")[2][:12] or fingerprint[:12]


def token_total(step: Step) -> int | None:
    """Tokens of the step's output: the exact sum of `n_tokens` (what `tokenize` adds) when its shards
    carry the column, else a tokenize manifest's total; None when unknown."""
    shards = step.shards
    if shards and TOKENS_COLUMN in pq.read_schema(storage.readable(shards[0])).names:
        total = 0
        for path in shards:
            column = pq.read_table(storage.readable(path), columns=[TOKENS_COLUMN])[TOKENS_COLUMN]
            total += int(pc.sum(column).as_py() or 0)
        return total
    if step.manifest.stage == "tokenize" and isinstance(step.manifest.summary.get("tokens"), int):
        return int(step.manifest.summary["tokens"])
    return None


def sample_column(folder: Path, column: str, limit: int = HIST_SAMPLE) -> np.ndarray | None:
    """Up to `limit` non-null values of a numeric column, in shard order; None when it is not there."""
    files = sorted(folder.glob("*.parquet"))
    if not files:
        return None
    kind = (
        pq.read_schema(storage.readable(files[0])).field(column).type
        if column in pq.read_schema(storage.readable(files[0])).names
        else None
    )
    if kind is None or not (pa.types.is_integer(kind) or pa.types.is_floating(kind)):
        return None
    parts: list[np.ndarray] = []
    seen = 0
    for path in files:
        for batch in iter_batches(path, [column]):
            values = batch.column(0).drop_null().to_numpy(zero_copy_only=False).astype(np.float64)
            parts.append(values[: limit - seen])
            seen += len(parts[-1])
            if seen >= limit:
                return np.concatenate(parts)
    return np.concatenate(parts) if parts else np.zeros(0)


# ---------------------------------------------------------------------------------------------------------
# score cutoffs


@dataclass
class ScoreCut:
    step: Step
    column: str
    cutoffs: list[tuple[float, str]]  # (value, what it is)
    before: np.ndarray | None  # the step's input, when the column was there already
    after: np.ndarray  # the step's output
    note: str = ""


def score_cuts(steps: list[Step]) -> list[ScoreCut]:
    """One per score a step cut at: `filter --top-fraction --by` and numeric `--where` comparisons, and
    a perplexity stage's bucket cutoffs."""
    cuts: list[ScoreCut] = []
    for step in steps:
        for column, cutoffs, note in _cutoffs_of(step.manifest):
            after = sample_column(step.folder, column)
            if after is None:
                continue
            before = sample_column(step.input_folder, column) if step.input_folder else None
            cuts.append(ScoreCut(step, column, cutoffs, before, after, note))
    return cuts


def _cutoffs_of(m: Manifest) -> list[tuple[str, list[tuple[float, str]], str]]:
    found: dict[str, list[tuple[float, str]]] = {}
    notes: dict[str, str] = {}
    summary, params = m.summary, m.params
    if isinstance(summary.get("by"), str) and isinstance(summary.get("cutoff_score"), (int, float)):
        side = "bottom" if summary.get("ascending") else "top"
        label = f"{side} {summary.get('top_fraction')} cutoff {summary['cutoff_score']:.4g}"
        found.setdefault(summary["by"], []).append((float(summary["cutoff_score"]), label))
    where = params.get("where") if m.stage == "filter" else None
    if isinstance(where, str):
        for hit in _WHERE_CUT.finditer(where):
            value, column = float(hit["value"]), hit["quoted"] or hit["column"]
            found.setdefault(column, []).append((value, f"{column} {hit['op']} {value:g}"))
    for artifact in m.artifacts:
        hit = _CUTOFFS_ARTIFACT.match(artifact.path)
        if hit is None:
            continue
        column, values = hit["column"], summary.get("cutoffs")
        buckets = params.get("buckets") or []
        if isinstance(values, list):
            for i, value in enumerate(values):
                between = f"{buckets[i]} | {buckets[i + 1]}" if i + 1 < len(buckets) else f"cutoff {i + 1}"
                found.setdefault(column, []).append((float(value), f"{between} at {value:.4g}"))
        elif isinstance(values, dict):
            # Cutoffs per group (--group-column): one histogram cannot show them all without a key.
            found.setdefault(column, [])
            notes[column] = f"cutoffs per {summary.get('group_column', 'group')}; not drawn"
        else:
            found.setdefault(column, [])
            notes[column] = f"cutoffs from {summary.get('cutoffs_file', 'a file')}; not drawn"
    return [(column, sorted(cuts), notes.get(column, "")) for column, cuts in found.items()]


# ---------------------------------------------------------------------------------------------------------
# examples of dropped documents


@dataclass
class Example:
    id: str
    detail: str | None
    text: str | None  # None: not found in the step's input (or it has no text column)
    characters: int = 0


@dataclass
class DroppedExamples:
    step: Step
    reason: str
    rows: int
    examples: list[Example] = field(default_factory=list)


def dropped_examples(steps: list[Step], per_reason: int = EXAMPLES_PER_REASON) -> list[DroppedExamples]:
    """The first few rows a step dropped for each reason (in its `_dropped/` order), with their text
    from the step's input."""
    found: list[DroppedExamples] = []
    for step in steps:
        reasons = {r: n for r, n in sorted(step.manifest.totals.dropped.items()) if n}
        dropped_dir = step.folder / DROPPED_DIR
        if not reasons or not dropped_dir.is_dir():
            continue
        picked: dict[str, list[tuple[str, str | None]]] = {r: [] for r in reasons}
        for path in sorted(dropped_dir.glob("*.parquet")):
            names = pq.read_schema(storage.readable(path)).names
            columns = [ID_COLUMN, "reason", *(["detail"] if "detail" in names else [])]
            for batch in iter_batches(path, columns):
                rows = batch.to_pydict()
                details = rows.get("detail", [None] * batch.num_rows)
                for id_, reason, detail in zip(rows[ID_COLUMN], rows["reason"], details, strict=True):
                    chosen = picked.setdefault(reason, [])
                    if len(chosen) < per_reason:
                        chosen.append((str(id_), detail))
                if all(len(v) >= per_reason for v in picked.values()):
                    break
            if all(len(v) >= per_reason for v in picked.values()):
                break
        column = str(step.manifest.params.get("text_column") or "text")
        wanted = {id_ for chosen in picked.values() for id_, _ in chosen}
        texts = _texts_by_id(step.input_folder, column, wanted) if step.input_folder else {}
        for reason, chosen in picked.items():
            examples = []
            for id_, detail in chosen:
                text = texts.get(id_)
                short = None if text is None else _shorten(text)
                examples.append(Example(id_, detail, short, len(text) if text is not None else 0))
            found.append(DroppedExamples(step, reason, reasons.get(reason, len(chosen)), examples))
    return found


def _shorten(text: str) -> str:
    return text if len(text) <= EXAMPLE_CHARS else text[:EXAMPLE_CHARS].rstrip() + " …"


def _texts_by_id(folder: Path, column: str, wanted: set[str]) -> dict[str, str]:
    """The text of each wanted id, reading the ids a row group at a time and the text only where needed."""
    texts: dict[str, str] = {}
    if not wanted:
        return texts
    value_set = pa.array(sorted(wanted), pa.string())
    for path in sorted(folder.glob("*.parquet")):
        pf = pq.ParquetFile(storage.readable(path))
        if column not in pf.schema_arrow.names or ID_COLUMN not in pf.schema_arrow.names:
            return texts
        for group in range(pf.metadata.num_row_groups):
            ids = pc.cast(pf.read_row_group(group, columns=[ID_COLUMN])[ID_COLUMN], pa.string())
            hits = pc.is_in(ids, value_set=value_set)
            if not pc.any(hits).as_py():
                continue
            table = pf.read_row_group(group, columns=[ID_COLUMN, column]).filter(hits)
            for id_, text in zip(table[ID_COLUMN].to_pylist(), table[column].to_pylist(), strict=True):
                if text is not None:
                    texts[str(id_)] = str(text)
            if len(texts) == len(wanted):
                return texts
    return texts


# ---------------------------------------------------------------------------------------------------------
# the quality classifier


@dataclass
class Calibration:
    predicted: np.ndarray  # mean predicted probability per non-empty bin
    observed: np.ndarray  # share of positives per non-empty bin
    counts: np.ndarray
    expected_error: float  # the count-weighted mean |observed - predicted| (ECE)
    rows: int  # held-out rows
    saved: int  # of which saved (and binned here)


@dataclass
class Classifier:
    step: Step
    metrics: dict[str, Any]  # quality-train's summary: labels, rows, `heldout` metrics
    calibration: Calibration | None


def classifiers(steps: list[Step]) -> list[Classifier]:
    """Every quality-train step of the run, and the ones a quality-score step points at."""
    folders: dict[str, Step] = {}
    for step in steps:
        if step.manifest.stage == QUALITY_TRAIN:
            folders[str(step.folder.resolve())] = step
        model = step.manifest.params.get("model") if step.manifest.stage == "quality-score" else None
        if isinstance(model, str) and (storage.location(model) / MANIFEST_NAME).exists():
            other = Step(storage.location(model), Manifest.read(storage.location(model)))
            if other.manifest.stage == QUALITY_TRAIN:
                folders.setdefault(str(other.folder.resolve()), other)
    found = []
    for _, step in sorted(folders.items()):
        calibration = None
        path = step.folder / METRICS_FILE
        if path.is_file():
            saved = json.loads(path.read_text(encoding="utf-8")).get("heldout_predictions")
            if saved and saved.get("label"):
                calibration = calibrate(
                    np.array(saved["label"], dtype=bool),
                    np.array(saved["probability"], dtype=np.float64),
                    int(saved.get("rows", len(saved["label"]))),
                )
        found.append(Classifier(step, step.manifest.summary, calibration))
    return found


def calibrate(y: np.ndarray, p: np.ndarray, rows: int, bins: int = CALIBRATION_BINS) -> Calibration:
    """Equal-width probability bins: per bin the mean prediction and the observed positive share."""
    which = np.clip((p * bins).astype(np.int64), 0, bins - 1)
    counts = np.bincount(which, minlength=bins)
    sums = np.bincount(which, weights=p, minlength=bins)
    positives = np.bincount(which, weights=y.astype(np.float64), minlength=bins)
    used = counts > 0
    predicted = sums[used] / counts[used]
    observed = positives[used] / counts[used]
    error = float(np.sum(counts[used] * np.abs(observed - predicted)) / max(int(counts.sum()), 1))
    return Calibration(predicted, observed, counts[used], error, rows, len(y))


# ---------------------------------------------------------------------------------------------------------
# ablations


@dataclass
class Ablation:
    step: Step
    results: dict[str, Any]  # ablation.json
    training: list[dict[str, Any]]  # per model: train, seed, tokens_per_second, history, tokens_per_step


def ablations(steps: list[Step]) -> list[Ablation]:
    found = []
    for step in steps:
        path = step.folder / ABLATION_FILE
        if step.manifest.stage == "ablate" and path.is_file():
            results = json.loads(path.read_text(encoding="utf-8"))
            found.append(Ablation(step, results, list(step.manifest.summary.get("training", []))))
    return found
