"""`thresher reweight doremi`: domain weights found by DoReMi with two small proxy LMs (a fit stage).

Phases:

- `tokenizer`: a byte-level BPE (proxy_lm's) trained on every k-th document; written as `tokenizer.json`,
  which `thresher mix --tokenizer` can count tokens with, so a budget is in the units the weights were
  found in.
- `tokenize` (per shard): each domain's documents packed into one token stream per shard, in the work
  folder (one `.npy` per shard, domains in sorted order, with their offsets beside it in JSON).
- `reference`: the reference model, trained on the baseline mixture (`--reference-mixture tokens`: each
  domain's share of the tokens; `uniform`: equal shares); written to `reference/` (a `save_pretrained`
  folder that `thresher perplexity lm` loads).
- `proxy`: a model of the same size trained from scratch with Group DRO against the reference (see
  `scorers/doremi.py`); writes `domain_weights.json` (`weights`: the mean over every step, initial weights
  included) and `trajectory.json` (the weights after every step, row 0 the initial ones), which is also the
  manifest summary's `trajectory`.

Both models checkpoint to the work folder every `--checkpoint-every` steps (safetensors and JSON, see
`scorers/checkpoints.py`); a killed run, run again, resumes each from its last checkpoint and ends with the
weights an uninterrupted run gives. The work folder goes once the stage is done.

Every domain of the column takes part; a row whose domain is null is a one-line error. torch, tokenizers
and transformers load inside the tasks.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow.compute as pc
from pydantic import Field

from thresher.pipelines.engine import storage
from thresher.pipelines.engine.atomic import atomic_open
from thresher.pipelines.engine.digest import file_digest, value_digest
from thresher.pipelines.engine.errors import ThresherError
from thresher.pipelines.engine.manifest import FileRecord, TaskRecord
from thresher.pipelines.engine.shards import iter_batches
from thresher.pipelines.engine.stage import PhaseSpec, Stage, StageParams, TaskContext, TaskResult, TaskSpec
from thresher.pipelines.stages.lm_train.proxy_tokenizer import tokenizer_phase, train_tokenizer_task

TOKENIZER_FILE = "tokenizer.json"
WEIGHTS_FILE = "domain_weights.json"
REFERENCE_DIR = "reference"
TRAJECTORY_FILE = "trajectory.json"


class DoReMiParams(StageParams):
    text_column: str = Field("text", description="Column holding the text.")
    domain_column: str = Field("domain", description="Column naming each row's domain (a string).")
    preset: Literal["tiny", "small"] = Field(
        "tiny", description="Proxy size (both models): tiny trains on a CPU; small is for a GPU."
    )
    vocab_size: int | None = Field(None, ge=300, description="BPE vocabulary size (default: the preset's).")
    context_length: int | None = Field(None, ge=8, description="Tokens per training window.")
    n_embd: int | None = Field(None, ge=8, description="Hidden size.")
    n_layer: int | None = Field(None, ge=1, description="Transformer layers.")
    n_head: int | None = Field(None, ge=1, description="Attention heads (must divide n_embd).")
    batch_size: int | None = Field(
        None,
        ge=1,
        description="Windows per step; proxy batches hold every domain, so at least one per domain.",
    )
    max_steps: int | None = Field(None, ge=1, description="Proxy (Group DRO) steps.")
    reference_steps: int | None = Field(
        None, ge=1, description="Reference model steps (default: --max-steps)."
    )
    learning_rate: float | None = Field(None, gt=0, description="Peak learning rate (AdamW) of both models.")
    warmup_steps: int | None = Field(None, ge=1, description="Linear warmup steps.")
    eta: float = Field(
        1.0, ge=0, description="Step size of the domain-weight update (exponentiated gradient)."
    )
    smoothing: float = Field(
        1e-3, ge=0, le=1, description="c in (1-c)*w + c/k: how far each update is pulled towards uniform."
    )
    reference_mixture: Literal["tokens", "uniform"] = Field(
        "tokens", description="Baseline mixture of the reference model: by domain token counts, or uniform."
    )
    tokenizer_docs: int = Field(
        200_000, ge=1, description="Documents the tokenizer trains on (every k-th, evenly over the set)."
    )
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="Where to train; CUDA uses bf16.")
    checkpoint_every: int | None = Field(
        None,
        ge=1,
        description="Steps between checkpoints of each model (default: the preset's); a killed run resumes "
        "from the last one.",
    )
    threads: int | None = Field(
        None,
        ge=1,
        description="CPU threads torch trains with (default: torch's choice); 1 is fastest for tiny models "
        "on a busy machine. Results can differ in the last bits between thread counts, hence a param.",
    )

    def config(self) -> Any:
        from thresher.scorers.proxy_lm import PRESETS

        fields = {f.name for f in dataclasses.fields(PRESETS[self.preset])}
        overrides = {k: v for k, v in self.model_dump().items() if k in fields and v is not None}
        config = dataclasses.replace(PRESETS[self.preset], **overrides)
        if config.n_embd % config.n_head:
            raise ThresherError(f"--n-embd {config.n_embd} must be a multiple of --n-head {config.n_head}")
        return config


def _checkpoints(stage: DoReMi, task: TaskSpec, every: int) -> Any:
    """Where this phase's model checkpoints go, and what they must match to be resumed from: the phase,
    the params (how often to checkpoint aside), the seed and the task's input files."""
    from thresher.scorers.checkpoints import CheckpointPlan

    fingerprint = value_digest(
        {
            "phase": task.key,
            "params": stage.params.model_dump(mode="json", exclude={"checkpoint_every"}),
            "seed": stage.ctx.seed,
            "inputs": [file_digest(storage.location(p)) for p in task.inputs],
        }
    )
    return CheckpointPlan(stage.ctx.work / "checkpoints" / task.key, fingerprint, every)


def _record_file(tc: TaskContext, path: Path) -> None:
    tc.record(FileRecord(path=str(path), size=path.stat().st_size, digest=file_digest(path)))


class DoReMi(Stage):
    name = "reweight-doremi"
    version = "1"
    Params = DoReMiParams
    summary = (
        "Find domain weights with DoReMi: a reference proxy LM on the baseline mixture, then a proxy of the "
        "same size trained with Group DRO; writes domain_weights.json (for `thresher mix`)."
    )
    example = "thresher reweight doremi data/web data/doremi --domain-column domain --max-steps 600"
    command = ("reweight", "doremi")
    params: DoReMiParams

    def required_columns(self) -> list[str]:
        return [*super().required_columns(), self.params.domain_column]

    def string_columns(self) -> list[str]:
        return [*super().string_columns(), self.params.domain_column]

    def _token_files(self, shard_name: str) -> tuple[Path, Path]:
        # Names built whole, not with with_suffix: a shard stem may hold dots of its own.
        folder, stem = self.ctx.work / "tokens", storage.location(shard_name).stem
        return folder / f"{stem}.npy", folder / f"{stem}.domains.json"

    def phases(self) -> list[PhaseSpec]:
        assert self.ctx.input is not None
        config = self.params.config()  # bad sizes fail before any work
        shards = self.ctx.input.shards
        tokenizer = str(self.ctx.output / TOKENIZER_FILE)
        token_files = tuple(str(p) for s in shards for p in self._token_files(s.name))
        reference = tuple(
            str(self.ctx.output / REFERENCE_DIR / f) for f in ("config.json", "model.safetensors")
        )
        return [
            tokenizer_phase(self.ctx.input, self.params.tokenizer_docs),
            PhaseSpec(
                "tokenize", [TaskSpec(s.name, (str(s.path), tokenizer), {}, s.num_rows) for s in shards]
            ),
            PhaseSpec(
                "reference",
                [
                    TaskSpec(
                        "reference",
                        (*token_files, tokenizer),
                        {},
                        self.params.reference_steps or config.max_steps,
                    )
                ],
            ),
            PhaseSpec(
                "proxy", [TaskSpec("proxy", (*token_files, tokenizer, *reference), {}, config.max_steps)]
            ),
        ]

    def run_task(self, phase: str, task: TaskSpec, tc: TaskContext) -> TaskResult:
        if phase == "tokenizer":
            return self._train_tokenizer(task, tc)
        if phase == "tokenize":
            return self._tokenize(task, tc)
        if phase == "reference":
            return self._reference(task, tc)
        return self._proxy(task, tc)

    # -- tokenizer and token streams ---------------------------------------------------------------------

    def _train_tokenizer(self, task: TaskSpec, tc: TaskContext) -> TaskResult:
        return train_tokenizer_task(
            task,
            tc,
            self.params.text_column,
            self.params.config().vocab_size,
            self.ctx.output / TOKENIZER_FILE,
        )

    def _tokenize(self, task: TaskSpec, tc: TaskContext) -> TaskResult:
        from thresher.scorers.proxy_lm import encode_documents, load_tokenizer, token_dtype

        shard = storage.location(task.inputs[0])
        tokenizer = load_tokenizer(storage.location(task.inputs[1]))
        p = self.params
        parts: dict[str, list[np.ndarray]] = {}
        docs: dict[str, int] = {}
        offset = 0
        for batch in iter_batches(shard, [p.text_column, p.domain_column]):
            domains = batch.column(p.domain_column)
            if domains.null_count:
                row = offset + int(np.flatnonzero(pc.is_null(domains).to_numpy(zero_copy_only=False))[0])
                raise ThresherError(
                    f"{shard}: row {row} has no domain (null in column '{p.domain_column}'); "
                    "fill it or drop those rows first"
                )
            texts = batch.column(p.text_column).to_pylist()
            names = domains.to_pylist()
            by_domain: dict[str, list[str]] = {}
            for text, name in zip(texts, names, strict=True):
                by_domain.setdefault(name, [])
                if text and text.strip():
                    by_domain[name].append(text)
            for name, chosen in by_domain.items():
                docs[name] = docs.get(name, 0) + len(chosen)
                if chosen:
                    parts.setdefault(name, []).append(encode_documents(tokenizer, chosen))
            offset += batch.num_rows
            tc.progress(batch.num_rows)
        dtype = token_dtype(tokenizer.get_vocab_size())
        streams, index, start = [], {}, 0
        for name in sorted(docs):
            stream = np.concatenate(parts[name]) if name in parts else np.zeros(0, dtype)
            streams.append(stream)
            index[name] = {"start": start, "end": start + len(stream), "docs": docs[name]}
            start += len(stream)
        tokens_path, index_path = self._token_files(task.key)
        with atomic_open(tokens_path, "wb") as f:
            np.save(f, np.concatenate(streams) if streams else np.zeros(0, dtype), allow_pickle=False)
        _record_file(tc, tokens_path)
        with atomic_open(index_path, "w", encoding="utf-8") as f:
            json.dump(index, f, indent=1)
        _record_file(tc, index_path)
        return TaskResult(
            extra={
                "domains": {k: {"docs": v["docs"], "tokens": v["end"] - v["start"]} for k, v in index.items()}
            }
        )

    def _domains(self, inputs: tuple[str, ...]) -> list[Any]:
        """Each domain's token streams across shards (memory-mapped), domains in sorted order."""
        from thresher.scorers.doremi import DomainStreams

        domains: dict[str, DomainStreams] = {}
        files = [storage.location(p) for p in inputs if p.endswith(".npy")]
        for tokens_path in files:
            stream = np.load(storage.local_file(tokens_path), mmap_mode="r", allow_pickle=False)
            index_path = tokens_path.with_name(tokens_path.name.removesuffix(".npy") + ".domains.json")
            index = json.loads(index_path.read_text(encoding="utf-8"))
            for name, span in index.items():
                d = domains.setdefault(name, DomainStreams(name, []))
                d.docs += span["docs"]
                if span["end"] > span["start"]:
                    d.streams.append(stream[span["start"] : span["end"]])
        return [domains[name] for name in sorted(domains) if domains[name].tokens > 0]

    # -- the two models ----------------------------------------------------------------------------------

    def _reference(self, task: TaskSpec, tc: TaskContext) -> TaskResult:
        from thresher.scorers.doremi import train_reference
        from thresher.scorers.proxy_lm import load_tokenizer

        domains = self._domains(task.inputs)
        tokens = np.array([d.tokens for d in domains], np.float64)
        mixture = (
            tokens / tokens.sum() if self.params.reference_mixture == "tokens" else np.ones(len(domains))
        )
        config = self.params.config()
        export = self.ctx.work / "reference-export"
        shutil.rmtree(export, ignore_errors=True)
        report = train_reference(
            config,
            domains,
            mixture,
            tokenizer=load_tokenizer(storage.location(task.inputs[-1])),
            out_dir=export,
            seed=self.ctx.seed,
            steps=self.params.reference_steps,
            device=self.params.device,
            threads=self.params.threads,
            on_step=tc.progress,
            checkpoints=_checkpoints(self, task, config.checkpoint_every),
        )
        shutil.rmtree(self.ctx.output / REFERENCE_DIR, ignore_errors=True)
        for file in sorted(export.iterdir()):
            file.chmod(0o644)  # safetensors writes owner-only files; a model folder is meant to be shared
            with tc.artifact(f"{REFERENCE_DIR}/{file.name}") as tmp:
                os.replace(file, tmp)
        names = [d.name for d in domains]
        extra = {
            "domains": names,
            "mixture": dict(zip(names, _rounded(report.mixture), strict=True)),
            "domain_loss": dict(zip(names, _rounded(report.domain_loss), strict=True)),
            "steps": report.steps,
            "resumed_from": report.resumed_from,
            "seconds_per_step": round(report.seconds_per_step, 4),
            "parameters": report.parameters,
        }
        return TaskResult(extra=extra)

    def _proxy(self, task: TaskSpec, tc: TaskContext) -> TaskResult:
        from thresher.scorers.doremi import train_doremi_proxy
        from thresher.scorers.proxy_lm import load_tokenizer

        token_files = tuple(p for p in task.inputs if p.endswith((".npy", ".domains.json")))
        domains = self._domains(token_files)
        tokenizer_path = next(storage.location(p) for p in task.inputs if p.endswith(TOKENIZER_FILE))
        p = self.params
        config = p.config()
        tokenizer = load_tokenizer(tokenizer_path)
        result = train_doremi_proxy(
            config,
            domains,
            self.ctx.output / REFERENCE_DIR,
            tokenizer=tokenizer,
            seed=self.ctx.seed,
            eta=p.eta,
            smoothing=p.smoothing,
            device=p.device,
            threads=p.threads,
            on_step=tc.progress,
            checkpoints=_checkpoints(self, task, config.checkpoint_every),
        )
        names = result.domains
        weights = dict(zip(names, _rounded(result.weights), strict=True))
        document = {
            "method": "doremi",
            "domain_column": p.domain_column,
            "weights": weights,
            "final_weights": dict(zip(names, _rounded(result.final_weights), strict=True)),
            "initial_weights": dict(zip(names, _rounded(result.initial_weights), strict=True)),
            "token_unit": f"BPE tokens of {TOKENIZER_FILE} (vocabulary {tokenizer.get_vocab_size()})",
            "eta": p.eta,
            "smoothing": p.smoothing,
            "steps": result.steps,
        }
        with tc.artifact(WEIGHTS_FILE) as tmp:
            tmp.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
        extra = {
            **{k: document[k] for k in ("weights", "final_weights", "initial_weights", "steps")},
            "mean_excess": dict(zip(names, _rounded(result.mean_excess), strict=True)),
            "reference_loss": dict(zip(names, _rounded(result.reference_loss), strict=True)),
            "proxy_loss": dict(zip(names, _rounded(result.proxy_loss), strict=True)),
            "resumed_from": result.resumed_from,
            "seconds_per_step": round(result.seconds_per_step, 4),
        }
        # The trajectory goes to the manifest summary once, from this file, not through the task record too.
        trajectory = {"domains": names, "weights": [_rounded(w) for w in result.trajectory]}
        with tc.artifact(TRAJECTORY_FILE) as tmp:
            tmp.write_text(json.dumps(trajectory, separators=(",", ":")) + "\n", encoding="utf-8")
        return TaskResult(extra=extra)

    def summarize(self, records: list[TaskRecord]) -> dict[str, Any]:
        by_phase = {r.phase: r for r in records}
        tokens: dict[str, int] = {}
        docs: dict[str, int] = {}
        for r in records:
            if r.phase == "tokenize":
                for name, counts in r.extra.get("domains", {}).items():
                    tokens[name] = tokens.get(name, 0) + counts["tokens"]
                    docs[name] = docs.get(name, 0) + counts["docs"]
        proxy = by_phase["proxy"].extra if "proxy" in by_phase else {}
        trajectory = self.ctx.output / TRAJECTORY_FILE
        reference = by_phase["reference"].extra if "reference" in by_phase else {}
        return {
            "weights": proxy.get("weights"),
            "domain_tokens": dict(sorted(tokens.items())),
            "domain_docs": dict(sorted(docs.items())),
            "reference": {k: v for k, v in reference.items() if k != "domains"},
            "proxy": {k: v for k, v in proxy.items() if k != "weights"},
            "trajectory": json.loads(trajectory.read_text(encoding="utf-8"))
            if trajectory.is_file()
            else None,
        }


def _rounded(values: Any) -> list[float]:
    return [round(float(v), 6) for v in values]
