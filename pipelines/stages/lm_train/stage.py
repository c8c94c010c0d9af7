"""Train small language models on a (reference) shard set: a KenLM n-gram model and a GPT-2 proxy LM.

`kenlm-train`: phase `tokenizer` trains a sentencepiece model on the cc_net-normalised lines; `tokenize`
(per shard) writes them as pieces; `estimate` streams those files, in shard order, through KenLM's real
`lmplz` and converts the ARPA model with `build_binary`. Output: `model.binary`, `tokenizer.model`,
`kenlm.json`, which `thresher perplexity kenlm --model OUTPUT` reads.

`proxy-train`: phase `tokenizer` trains a byte-level BPE; `tokenize` (per shard) packs each shard's
documents into token streams, split into train and validation by a hash of the document id (so the split
does not depend on sharding); `train` trains the model, checkpointing to the work folder so a killed run
resumes, and writes `model/` (a `save_pretrained` folder for `thresher perplexity lm`) and `training.json`.

Heavy libraries (sentencepiece, tokenizers, torch, transformers) load inside the tasks, never at import.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import numpy as np
import xxhash
from pydantic import Field, model_validator

from thresher.pipelines.engine import storage
from thresher.pipelines.engine.atomic import atomic_open
from thresher.pipelines.engine.digest import file_digest, value_digest
from thresher.pipelines.engine.errors import ThresherError
from thresher.pipelines.engine.manifest import FileRecord, RowCounts, TaskRecord
from thresher.pipelines.engine.shards import ID_COLUMN, iter_batches
from thresher.pipelines.engine.stage import PhaseSpec, Stage, StageParams, TaskContext, TaskResult, TaskSpec
from thresher.pipelines.stages.lm_train.proxy_tokenizer import tokenizer_phase, train_tokenizer_task
from thresher.scorers.kenlm_text import document_lines


def _record_file(tc: TaskContext, path: Path) -> None:
    tc.record(FileRecord(path=str(path), size=path.stat().st_size, digest=file_digest(path)))


def _text_batches(path: Path, column: str, tc: TaskContext, with_ids: bool = False) -> Iterator[Any]:
    columns = [ID_COLUMN, column] if with_ids else [column]
    for batch in iter_batches(path, columns):
        yield batch
        tc.progress(batch.num_rows)


def _read_counts(read: int, used: int) -> RowCounts:
    """A trainer keeps no rows, but the manifest says what it read: rows_out are the documents the model
    learnt from, and the rest had no text to learn from."""
    return RowCounts(rows_in=read, rows_out=used, dropped={"empty": read - used} if read > used else {})


# ---------------------------------------------------------------------------------------------------------
# KenLM


class KenLMTrainParams(StageParams):
    text_column: str = Field("text", description="Column holding the reference text.")
    order: int = Field(5, ge=2, le=6, description="N-gram order (the kenlm module is built for at most 6).")
    vocab_size: int = Field(
        16_000, ge=100, description="Sentencepiece vocabulary size, an upper bound (small corpora get fewer)."
    )
    sample_lines: int = Field(
        2_000_000, ge=1, description="Lines the sentencepiece tokenizer trains on (a seeded sample)."
    )
    character_coverage: float = Field(0.9995, gt=0, le=1, description="Sentencepiece character coverage.")
    threads: int = Field(
        4, ge=1, description="Sentencepiece training threads (the result depends on it, hence a param)."
    )
    lmplz_memory: str = Field(
        "20%",
        pattern=r"^\d+(\.\d+)?[%bBkKmMgGtT]?$",
        description="Memory lmplz may use (its -S): a share of RAM like 20% or a size like 4G.",
    )
    lmplz_tmp: str | None = Field(
        None, description="Folder for lmplz's temporary files (its -T); default: OUTPUT/_thresher/work."
    )
    prune: list[int] | None = Field(
        None, description="lmplz --prune thresholds per order, e.g. 0,0,1 (default: no pruning)."
    )
    discount_fallback: bool = Field(
        True, description="Fixed discounts when the corpus is too small to estimate them (lmplz flag)."
    )
    binary_type: Literal["probing", "trie"] = Field(
        "probing", description="build_binary data structure: probing is fastest, trie smallest."
    )
    keep_arpa: bool = Field(False, description="Also keep the ARPA text model (model.arpa).")
    kenlm_bin: str | None = Field(
        None, description="Folder with lmplz and build_binary (default: the venv's bin, then PATH)."
    )


class KenLMTrain(Stage):
    name = "kenlm-train"
    version = "1"
    Params = KenLMTrainParams
    summary = "Train a sentencepiece + KenLM n-gram model (real lmplz) on reference text, cc_net style."
    example = "thresher lm train-kenlm data/wiki data/kenlm-wiki --order 5 --lmplz-memory 8G"
    command = ("lm", "train-kenlm")
    params: KenLMTrainParams

    def _tokens_file(self, shard_name: str) -> Path:
        return self.ctx.work / "tokens" / (storage.location(shard_name).stem + ".txt")

    def phases(self) -> list[PhaseSpec]:
        from thresher.scorers.kenlm_model import TOKENIZER_FILE
        from thresher.scorers.kenlm_tools import find_tool

        # Fail before any work when the programs are missing, not after training the tokenizer.
        for tool in ("lmplz", "build_binary"):
            find_tool(tool, self.params.kenlm_bin)
        assert self.ctx.input is not None
        shards = self.ctx.input.shards
        tokenizer = str(self.ctx.output / TOKENIZER_FILE)
        token_files = tuple(str(self._tokens_file(s.name)) for s in shards)
        return [
            PhaseSpec(
                "tokenizer",
                [TaskSpec("tokenizer", tuple(str(s.path) for s in shards), {}, self.ctx.input.num_rows)],
            ),
            PhaseSpec(
                "tokenize", [TaskSpec(s.name, (str(s.path), tokenizer), {}, s.num_rows) for s in shards]
            ),
            PhaseSpec("estimate", [TaskSpec("kenlm", (*token_files, tokenizer), {})]),
        ]

    def run_task(self, phase: str, task: TaskSpec, tc: TaskContext) -> TaskResult:
        if phase == "tokenizer":
            return self._train_tokenizer(task, tc)
        if phase == "tokenize":
            return self._tokenize(task, tc)
        return self._estimate(task, tc)

    def _train_tokenizer(self, task: TaskSpec, tc: TaskContext) -> TaskResult:
        from thresher.scorers.kenlm_model import TOKENIZER_FILE, train_sentencepiece

        seen = {"docs": 0, "lines": 0}

        def lines() -> Iterator[str]:
            for path in task.inputs:
                for batch in _text_batches(storage.location(path), self.params.text_column, tc):
                    for text in batch.column(0).to_pylist():
                        doc_lines = document_lines(text)
                        seen["docs"] += bool(doc_lines)
                        seen["lines"] += len(doc_lines)
                        yield from doc_lines

        with tc.artifact(TOKENIZER_FILE) as tmp:
            try:
                vocab = train_sentencepiece(
                    lines(),
                    tmp,
                    vocab_size=self.params.vocab_size,
                    sample_lines=self.params.sample_lines,
                    character_coverage=self.params.character_coverage,
                    threads=self.params.threads,
                    seed=self.ctx.seed,
                )
            except ThresherError:
                if seen["lines"] == 0:
                    raise ThresherError(
                        f"{self.ctx.input_path}: no text to train on (every document is empty)"
                    ) from None
                raise
        return TaskResult(extra={"docs": seen["docs"], "lines": seen["lines"], "vocab_size": vocab})

    def _tokenize(self, task: TaskSpec, tc: TaskContext) -> TaskResult:
        from thresher.scorers.kenlm_model import load_sentencepiece

        sp = load_sentencepiece(storage.location(task.inputs[1]))
        out = self._tokens_file(task.key)
        lines = tokens = read = used = 0
        with atomic_open(out, "w", encoding="utf-8") as f:
            for batch in _text_batches(storage.location(task.inputs[0]), self.params.text_column, tc):
                per_doc = [document_lines(text) for text in batch.column(0).to_pylist()]
                read += batch.num_rows
                used += sum(1 for doc in per_doc if doc)
                normalised = [line for doc in per_doc for line in doc]
                if not normalised:
                    continue
                pieces = sp.encode(normalised, out_type=str)
                f.write("".join(" ".join(p) + "\n" for p in pieces))
                lines += len(pieces)
                tokens += sum(map(len, pieces))
        _record_file(tc, out)
        return TaskResult(_read_counts(read, used), extra={"lines": lines, "tokens": tokens})

    def _estimate(self, task: TaskSpec, tc: TaskContext) -> TaskResult:
        import kenlm

        from thresher.scorers.kenlm_model import META_FILE, MODEL_FILE
        from thresher.scorers.kenlm_tools import arpa_ngram_counts, run_build_binary, run_lmplz

        p = self.params
        # lmplz reads its input by name: token files of a remote output are fetched to local disk.
        token_files = [storage.local_file(t) for t in task.inputs[:-1]]
        tokenizer = storage.location(task.inputs[-1])
        if not any(f.stat().st_size for f in token_files):
            raise ThresherError(f"{self.ctx.input_path}: no text to train on (every document is empty)")
        work = storage.scratch(self.ctx.work)
        work.mkdir(parents=True, exist_ok=True)
        arpa = work / "model.arpa"
        run_lmplz(
            token_files,
            arpa,
            order=p.order,
            memory=p.lmplz_memory,
            tmp_dir=storage.location(p.lmplz_tmp) if p.lmplz_tmp else work / "lmplz-tmp",
            log=work / "lmplz.log",
            prune=p.prune or (),
            discount_fallback=p.discount_fallback,
            bin_dir=p.kenlm_bin,
        )
        counts = arpa_ngram_counts(arpa)
        with tc.artifact(MODEL_FILE) as tmp:
            run_build_binary(
                arpa, tmp, kind=p.binary_type, log=work / "build_binary.log", bin_dir=p.kenlm_bin
            )
            kenlm.Model(str(tmp))  # the Python module must read what the programs wrote
        if p.keep_arpa:
            with tc.artifact("model.arpa") as tmp:
                os.replace(arpa, tmp)
        meta = {
            "order": p.order,
            "ngrams": counts,
            "binary_type": p.binary_type,
            "normalisation": "cc_net (strip, lowercase, accents, digits to 0, unicode punctuation, controls)",
            "tokenizer": "tokenizer.model",
            "tokenizer_digest": file_digest(tokenizer),
        }
        with tc.artifact(META_FILE) as tmp:
            tmp.write_text(json.dumps(meta, indent=2) + "\n")
        return TaskResult(extra={"ngrams": {str(k): v for k, v in counts.items()}})

    def summarize(self, records: list[TaskRecord]) -> dict[str, Any]:
        by_phase: dict[str, list[TaskRecord]] = {}
        for r in records:
            by_phase.setdefault(r.phase, []).append(r)
        tok = by_phase.get("tokenizer", [])
        est = by_phase.get("estimate", [])
        return {
            "order": self.params.order,
            "docs": sum(r.extra.get("docs", 0) for r in tok),
            "lines": sum(r.extra.get("lines", 0) for r in by_phase.get("tokenize", [])),
            "tokens": sum(r.extra.get("tokens", 0) for r in by_phase.get("tokenize", [])),
            "vocab_size": tok[0].extra.get("vocab_size") if tok else None,
            "ngrams": est[0].extra.get("ngrams") if est else None,
        }


# ---------------------------------------------------------------------------------------------------------
# Proxy LM


class ProxyTrainParams(StageParams):
    text_column: str = Field("text", description="Column holding the training text.")
    preset: Literal["tiny", "small"] = Field(
        "tiny", description="Model size: tiny trains on a CPU in minutes; small is for real use on a GPU."
    )
    vocab_size: int | None = Field(None, ge=300, description="BPE vocabulary size (default: the preset's).")
    context_length: int | None = Field(None, ge=8, description="Tokens per training window.")
    n_embd: int | None = Field(None, ge=8, description="Hidden size.")
    n_layer: int | None = Field(None, ge=1, description="Transformer layers.")
    n_head: int | None = Field(None, ge=1, description="Attention heads (must divide n_embd).")
    batch_size: int | None = Field(None, ge=1, description="Windows per optimiser step.")
    max_steps: int | None = Field(None, ge=1, description="Optimiser steps.")
    learning_rate: float | None = Field(None, gt=0, description="Peak learning rate (AdamW).")
    warmup_steps: int | None = Field(None, ge=1, description="Linear warmup steps.")
    eval_every: int | None = Field(None, ge=1, description="Steps between validation evaluations.")
    checkpoint_every: int | None = Field(None, ge=1, description="Steps between checkpoints (for resume).")
    val_fraction: float = Field(0.05, gt=0, lt=0.5, description="Share of documents held out for validation.")
    tokenizer_docs: int = Field(
        200_000, ge=1, description="Documents the tokenizer trains on (every k-th, evenly over the set)."
    )
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="Where to train; CUDA uses bf16.")
    threads: int | None = Field(None, ge=1, description="torch CPU threads (default: torch's, all cores).")

    @model_validator(mode="after")
    def _check_shape(self) -> ProxyTrainParams:
        config = self.config()
        if config.n_embd % config.n_head:
            raise ValueError(f"n_embd {config.n_embd} must be a multiple of n_head {config.n_head}")
        return self

    def config(self) -> Any:
        from thresher.scorers.proxy_lm import PRESETS

        fields = {f.name for f in dataclasses.fields(PRESETS[self.preset])}
        overrides = {k: v for k, v in self.model_dump().items() if k in fields and v is not None}
        return dataclasses.replace(PRESETS[self.preset], **overrides)


MODEL_DIR = "model"
REPORT_FILE = "training.json"


class ProxyTrain(Stage):
    name = "proxy-train"
    version = "1"
    Params = ProxyTrainParams
    summary = "Train a small GPT-2-style proxy LM (byte-level BPE) from scratch; seeded and resumable."
    example = "thresher lm train-proxy data/wiki data/proxy --preset tiny --max-steps 600"
    command = ("lm", "train-proxy")
    params: ProxyTrainParams

    def _tokenizer_file(self) -> Path:
        return self.ctx.work / "tokenizer.json"

    def _token_files(self, shard_name: str) -> tuple[Path, Path]:
        folder, stem = self.ctx.work / "tokens", storage.location(shard_name).stem
        return folder / f"{stem}.train.npy", folder / f"{stem}.val.npy"

    def phases(self) -> list[PhaseSpec]:
        assert self.ctx.input is not None
        shards = self.ctx.input.shards
        tokenizer = str(self._tokenizer_file())
        token_files = tuple(str(p) for s in shards for p in self._token_files(s.name))
        return [
            tokenizer_phase(self.ctx.input, self.params.tokenizer_docs),
            PhaseSpec(
                "tokenize", [TaskSpec(s.name, (str(s.path), tokenizer), {}, s.num_rows) for s in shards]
            ),
            PhaseSpec("train", [TaskSpec("train", (*token_files, tokenizer), {})]),
        ]

    def run_task(self, phase: str, task: TaskSpec, tc: TaskContext) -> TaskResult:
        if phase == "tokenizer":
            return self._train_tokenizer(task, tc)
        if phase == "tokenize":
            return self._tokenize(task, tc)
        return self._train(task, tc)

    def _train_tokenizer(self, task: TaskSpec, tc: TaskContext) -> TaskResult:
        return train_tokenizer_task(
            task, tc, self.params.text_column, self.params.config().vocab_size, self._tokenizer_file()
        )

    def _tokenize(self, task: TaskSpec, tc: TaskContext) -> TaskResult:
        from thresher.scorers.proxy_lm import encode_documents, load_tokenizer, token_dtype

        tokenizer = load_tokenizer(storage.location(task.inputs[1]))
        threshold = int(self.params.val_fraction * 2**32)
        parts: dict[str, list[np.ndarray]] = {"train": [], "val": []}
        docs = {"train": 0, "val": 0}
        read = 0
        for batch in _text_batches(
            storage.location(task.inputs[0]), self.params.text_column, tc, with_ids=True
        ):
            read += batch.num_rows
            split: dict[str, list[str]] = {"train": [], "val": []}
            ids = batch.column(ID_COLUMN).to_pylist()
            for doc_id, text in zip(ids, batch.column(self.params.text_column).to_pylist(), strict=True):
                if text and text.strip():
                    # By a hash of the id, so resharding the set does not move documents across the split.
                    held_out = xxhash.xxh32_intdigest(doc_id.encode(), seed=self.ctx.seed) < threshold
                    split["val" if held_out else "train"].append(text)
            for name, texts in split.items():
                docs[name] += len(texts)
                if texts:
                    parts[name].append(encode_documents(tokenizer, texts))
        dtype = token_dtype(tokenizer.get_vocab_size())
        extra: dict[str, int] = {}
        for name, path in zip(("train", "val"), self._token_files(task.key), strict=True):
            stream = np.concatenate(parts[name]) if parts[name] else np.zeros(0, dtype)
            with atomic_open(path, "wb") as f:
                np.save(f, stream, allow_pickle=False)
            _record_file(tc, path)
            extra |= {f"{name}_docs": docs[name], f"{name}_tokens": len(stream)}
        return TaskResult(_read_counts(read, docs["train"] + docs["val"]), extra=extra)

    def _train(self, task: TaskSpec, tc: TaskContext) -> TaskResult:
        from thresher.scorers.proxy_lm import train_proxy_lm

        files = [storage.location(p) for p in task.inputs[:-1]]
        streams = [np.load(storage.local_file(p), mmap_mode="r", allow_pickle=False) for p in files]
        train = [s for p, s in zip(files, streams, strict=True) if p.name.endswith(".train.npy")]
        val = [s for p, s in zip(files, streams, strict=True) if p.name.endswith(".val.npy")]
        config = self.params.config()
        # What a checkpoint must match to be resumed: these params, this seed, these token streams.
        fingerprint = value_digest(
            {
                "params": self.params.model_dump(mode="json"),
                "seed": self.ctx.seed,
                "data": [file_digest(p) for p in files],
            }
        )
        export = self.ctx.work / "export"
        shutil.rmtree(export, ignore_errors=True)
        report = train_proxy_lm(
            config,
            tokenizer_path=storage.location(task.inputs[-1]),
            train_streams=train,
            val_streams=val,
            out_dir=export,
            checkpoint_dir=self.ctx.work / "checkpoints",
            fingerprint=fingerprint,
            seed=self.ctx.seed,
            device=self.params.device,
            threads=self.params.threads,
        )
        # A model folder is several files; each lands atomically and is recorded, and the task (hence the
        # folder) only counts as done once its record is written after the last one.
        shutil.rmtree(self.ctx.output / MODEL_DIR, ignore_errors=True)
        for file in sorted(export.iterdir()):
            file.chmod(0o644)  # safetensors writes its file owner-only; a model folder is meant to be shared
            with tc.artifact(f"{MODEL_DIR}/{file.name}") as tmp:
                os.replace(file, tmp)
        summary = {"config": dataclasses.asdict(config), **dataclasses.asdict(report)}
        with tc.artifact(REPORT_FILE) as tmp:
            tmp.write_text(json.dumps(summary, indent=2) + "\n")
        return TaskResult(extra={k: v for k, v in summary.items() if k != "history"})

    def summarize(self, records: list[TaskRecord]) -> dict[str, Any]:
        train = [r for r in records if r.phase == "train"]
        return dict(train[0].extra) if train else {}
