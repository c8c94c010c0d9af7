"""Language ID: the language of each document from a fastText language-ID model, optionally kept to a few.

The model is the user's: lid.176.bin/.ftz (labels `__label__en`), GlotLID (`__label__eng_Latn`) or one
trained with `thresher quality train --label-column lang`. Adds `lang` (the label without its prefix)
and `lang_score` (the model's probability for it). With `--keep en,de` the other documents go to
`_dropped/` (reason `language`, detail the detected language); a --keep value also matches the labels it
is the language part of (`eng` keeps `eng_Latn`). Without --keep nothing is dropped. The manifest counts
documents per language.

With `--route`, the kept rows also go to one shard set per language, OUTPUT/_by_lang/<lang>/, each with
its own `_manifest.json` (the same stage, params plus `language`, lineage back to this stage's input), so
any later stage can take one language as its input. OUTPUT itself stays the full shard set: the engine
lists and checks only top-level shards, and the leading underscore keeps Parquet readers that walk OUTPUT
(pyarrow datasets, like `_dropped/`) from reading the routed copies twice.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field

from thresher.pipelines.engine import storage
from thresher.pipelines.engine.digest import file_digest, value_digest
from thresher.pipelines.engine.errors import UsageError
from thresher.pipelines.engine.manifest import (
    MANIFEST_NAME,
    FileRecord,
    InputLineage,
    Manifest,
    RowCounts,
    TaskRecord,
    library_versions,
)
from thresher.pipelines.engine.mapping import BatchOutcome, MapStage
from thresher.pipelines.engine.shards import ShardWriter
from thresher.pipelines.engine.stage import PhaseSpec, StageParams, TaskContext, TaskResult, TaskSpec
from thresher.scorers.fasttext_model import FastTextModel, fasttext_lines, resolve_model_path

REASON = "language"
COLUMNS = ("lang", "lang_score")
UNKNOWN = "unknown"  # what the detail says for a document the model gave no label
ROUTE_DIR = "_by_lang"
# A label becomes a folder name; anything outside this set (a slash, a dot-dot) could leave the folder.
_SAFE_LABEL = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")


class LangIDParams(StageParams):
    model: str = Field(
        description="fastText language-ID model (.bin/.ftz, e.g. lid.176.bin or GlotLID), or a "
        "`quality train` output folder."
    )
    keep: list[str] = Field(
        [], description="Languages to keep, e.g. en,de (model labels without __label__); default: all."
    )
    text_column: str = Field("text", description="Column holding the text.")
    route: bool = Field(
        False,
        description=f"Also write each language's kept rows to OUTPUT/{ROUTE_DIR}/<lang>/, a shard set "
        "with its own manifest.",
    )


def language_part(label: str) -> str:
    """`eng` of GlotLID's `eng_Latn`; lid.176's `en` is all language."""
    return label.split("_", 1)[0]


class LangID(MapStage[LangIDParams]):
    name = "langid"
    summary = "Add lang and lang_score from a fastText language-ID model; --keep drops other languages."
    example = "thresher langid data/01-exact data/02-langid --model lid.176.bin --keep en,de"
    command = ("langid",)
    phase_name = "identify"

    model: FastTextModel | None = None  # loaded once per worker process
    _router: _Router | None = None  # per task, with --route

    def _model_path(self) -> Path:
        return resolve_model_path(self.params.model, "--model")

    def side_inputs(self) -> list[Path]:
        return [self._model_path()]

    def writes_dropped(self) -> bool:
        return bool(self.params.keep)

    def phases(self) -> list[PhaseSpec]:
        assert self.ctx.input is not None
        # Loaded now, so a broken or foreign model file fails before any task runs.
        labels = FastTextModel.load(self._model_path()).labels
        known = set(labels) | {language_part(x) for x in labels}
        unknown = [k for k in self.params.keep if k not in known]
        if unknown:
            shown = ", ".join(labels[:20]) + (", ..." if len(labels) > 20 else "")
            raise UsageError(f"--keep {unknown[0]}: the model has no such language (its labels: {shown})")
        for shard in self.ctx.input.shards:
            clash = [c for c in COLUMNS if shard.schema is not None and c in shard.schema.names]
            if clash:
                raise UsageError(f"{shard.path}: already has column '{clash[0]}'; drop it before langid")
        if self.params.route:
            bad = [x for x in labels if not _SAFE_LABEL.fullmatch(x)]
            if bad:
                raise UsageError(
                    f"--route: the model's label '{bad[0]}' cannot name a folder "
                    "(letters, digits, '_' and '-' only)"
                )
        return super().phases()

    def task_args(self) -> dict[str, Any]:
        # Absolute: a task may run in another directory (a Slurm array task, a Ray worker).
        return {"model": str(self._model_path().resolve())}

    def setup(self) -> None:
        if storage.location(self.params.model).exists():
            self.model = FastTextModel.load(self._model_path())

    def start_task(self, task: TaskSpec) -> None:
        # Normally the model `setup` loaded; a worker started elsewhere, where a relative --model does
        # not resolve, loads the planned path once instead (FastTextModel.load caches per process).
        wanted = storage.location(task.args["model"])
        if self.model is None or self.model.path != wanted:
            self.model = FastTextModel.load(wanted)

    def run_task(self, phase: str, task: TaskSpec, tc: TaskContext) -> TaskResult:
        if not self.params.route:
            return super().run_task(phase, task, tc)
        self._router = _Router(tc, task.input("shard").name)
        try:
            result = super().run_task(phase, task, tc)
            self._router.close()
        except BaseException:
            self._router.abort()
            raise
        finally:
            self._router = None
        return result

    def map_batch(self, batch: pa.RecordBatch, offset: int) -> BatchOutcome:
        assert self.model is not None
        langs, probs = self.model.top_labels(fasttext_lines(batch.column(self.params.text_column)))
        counts = Counter(f"languages.{lang or UNKNOWN}" for lang in langs)
        table = pa.Table.from_batches([batch])
        table = table.append_column(pa.field("lang", pa.string()), [pa.array(langs, pa.string())])
        table = table.append_column(pa.field("lang_score", pa.float32()), [pa.array(probs, pa.float32())])
        keep = set(self.params.keep)
        if not keep:
            outcome = BatchOutcome(table, None, dict(counts))
        else:
            drop = [lang is None or (lang not in keep and language_part(lang) not in keep) for lang in langs]
            details = [lang or UNKNOWN for lang in langs]
            outcome = BatchOutcome.drop_rows(table, drop, REASON, details, dict(counts))
        if self._router is not None:
            self._router.write(pa.table(outcome.kept))
        return outcome

    def summarize(self, records: list[TaskRecord]) -> dict[str, Any]:
        languages = Counter(self.counted("languages"))
        summary: dict[str, Any] = {
            "keep": list(self.params.keep),
            "languages": dict(languages.most_common(50)),
            "dropped": self.totals.dropped.get(REASON, 0),
        }
        if self.params.route:
            # Here because the engine's finish calls it once, after every task, with all their records:
            # the one point where each language's shard list is complete.
            summary["routes"] = self._write_route_manifests(records)
        else:
            # Routed copies from an earlier run with --route would pass for this run's.
            _remove_stale_routes(self.ctx.output / ROUTE_DIR, {})
        return summary

    def _write_route_manifests(self, records: list[TaskRecord]) -> dict[str, dict[str, Any]]:
        by_lang: dict[str, list[FileRecord]] = defaultdict(list)
        prefix = ROUTE_DIR + "/"
        for record in records:
            for f in record.outputs:
                if f.path.startswith(prefix):
                    lang, name = f.path[len(prefix) :].split("/", 1)
                    by_lang[lang].append(f.model_copy(update={"path": name}))
        root = self.ctx.output / ROUTE_DIR
        _remove_stale_routes(root, {lang: {f.path for f in files} for lang, files in by_lang.items()})
        assert self.ctx.input is not None
        source = self.ctx.input.manifest
        lineage = InputLineage(
            path=str(storage.resolved(self.ctx.input_path)),
            stage=None if source is None else source.stage,
            manifest_digest=None if source is None else file_digest(self.ctx.input_path / MANIFEST_NAME),
            limit=self.ctx.limit,
        )
        params = self.params.model_dump(mode="json")
        versions = library_versions()
        routes: dict[str, dict[str, Any]] = {}
        for lang, files in sorted(by_lang.items()):
            files.sort(key=lambda f: f.path)
            rows = sum(f.rows or 0 for f in files)
            manifest = Manifest(
                stage=self.name,
                stage_version=self.version,
                params={**params, "language": lang},
                seed=self.ctx.seed,
                # The tasks that wrote the files and the language: what the folder's contents depend on.
                fingerprint=value_digest([lang, sorted(r.fingerprint for r in records)]),
                input=lineage,
                tasks=[],
                totals=RowCounts(rows_in=rows, rows_out=rows),
                outputs=files,
                seconds=0.0,
                summary={"language": lang, "routed_from": str(storage.resolved(self.ctx.output))},
                versions=versions,
            )
            manifest.write(root / lang)
            routes[lang] = {"path": f"{ROUTE_DIR}/{lang}", "rows": rows, "shards": len(files)}
        return routes


def _remove_stale_routes(root: Path, current: dict[str, set[str]]) -> None:
    """Drop what an earlier run with other params or inputs left under `root`: files of languages that no
    longer occur and shards this run did not write, so no routed folder holds rows from another run."""
    if not root.exists():
        return
    if not current:
        storage.remove_tree(root)
        return
    for folder in root.iterdir():
        wanted = current.get(folder.name)
        if wanted is None:
            storage.remove_tree(folder)
            continue
        for path in folder.iterdir():
            if path.name != MANIFEST_NAME and path.name not in wanted:
                storage.remove(path)


class _Router:
    """One task's per-language writers: each language's kept rows of the shard, in input order, to
    OUTPUT/_by_lang/<lang>/<shard name>; a shard without a language writes no file for it."""

    def __init__(self, tc: TaskContext, shard_name: str) -> None:
        self.tc = tc
        self.shard_name = shard_name
        self.writers: dict[str, ShardWriter] = {}

    def write(self, kept: pa.Table) -> None:
        if not kept.num_rows:
            return
        langs = pc.fill_null(kept.column("lang"), UNKNOWN)
        for lang in pc.unique(langs).to_pylist():
            writer = self.writers.get(lang)
            if writer is None:
                path = self.tc.stage.ctx.output / ROUTE_DIR / lang / self.shard_name
                writer = self.writers[lang] = self.tc.writer(path, kept.schema)
            writer.write(kept.filter(pc.equal(langs, lang)))

    def close(self) -> None:
        for writer in self.writers.values():
            writer.close()

    def abort(self) -> None:
        for writer in self.writers.values():
            writer.abort()
