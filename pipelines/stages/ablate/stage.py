"""`thresher ablate`: did the curation help? Identical small proxy LMs trained on each candidate set under
the same token budget, compared by their loss on held-out evaluation sets (the method of DCLM, and the
figure DoReMi and LESS report).

Phases, each of independent tasks (so local workers, Slurm arrays or Ray run them side by side):
`tokenizer` (one byte-level BPE for every model, from an evenly spaced sample of all train sets),
`tokenize` (per set: the train sets' first `tokens` tokens, the eval sets' first `eval_docs` documents),
`train` (per train set x seed, resumable from checkpoints), `evaluate` (per model x eval set: each eval
document's summed NLL), `compare` (mean +- std over seeds, and the difference to the first, baseline, set
with a paired bootstrap interval over eval documents; written to `ablation.json`)."""

from __future__ import annotations

import dataclasses
import heapq
import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import xxhash
from pydantic import Field, field_validator

from thresher.pipelines.engine import storage
from thresher.pipelines.engine.atomic import atomic_open
from thresher.pipelines.engine.digest import file_digest, value_digest
from thresher.pipelines.engine.errors import ThresherError
from thresher.pipelines.engine.manifest import TaskRecord
from thresher.pipelines.engine.shards import ShardSet, iter_batches
from thresher.pipelines.engine.stage import PhaseSpec, Stage, TaskContext, TaskResult, TaskSpec, phase
from thresher.pipelines.stages.ablate.compare import compare
from thresher.pipelines.stages.lm_train.proxy_tokenizer import train_tokenizer_task
from thresher.pipelines.stages.lm_train.stage import ProxyTrainParams

RESULTS = "ablation.json"
TOKENIZER = "tokenizer.json"


class AblateParams(ProxyTrainParams):
    train: dict[str, str] = Field(
        description="Train sets, name -> shard set folder; the first is the baseline the others are "
        "compared to."
    )
    eval: dict[str, str] = Field(description="Held-out evaluation sets, name -> shard set folder.")
    tokens: int = Field(
        200_000, ge=1_000, description="Training tokens per model: the same budget for every set."
    )
    seeds: int = Field(3, ge=1, le=100, description="Models per train set, with seeds seed, seed+1, ...")
    eval_docs: int = Field(2_000, ge=1, description="Documents of each eval set that every model scores.")
    bootstrap: int = Field(1_000, ge=100, description="Bootstrap resamples of the eval documents.")

    @field_validator("train")
    @classmethod
    def _two_sets(cls, value: dict[str, str]) -> dict[str, str]:
        if not value:
            raise ValueError("name at least one train set (the first is the baseline)")
        return value

    @field_validator("eval")
    @classmethod
    def _one_eval(cls, value: dict[str, str]) -> dict[str, str]:
        if not value:
            raise ValueError("name at least one eval set")
        return value

    def proxy_config(self) -> Any:
        """The proxy preset with --max-steps set by the token budget: every model sees `tokens` tokens."""
        config = self.config()
        steps = max(1, math.ceil(self.tokens / (config.batch_size * config.context_length)))
        warmup = min(config.warmup_steps, max(1, steps // 10))
        return dataclasses.replace(
            config,
            max_steps=steps,
            warmup_steps=warmup,
            eval_every=max(1, steps // 10),
            checkpoint_every=max(1, steps // 4),
        )


# Characters of text kept per budget token when sampling a train set: tokenizers of a few hundred to a
# few tens of thousands of ids make 1.5 to 5 characters a token, so the sample rarely runs short (when
# it does, the stream is repeated, and the task says so).
SAMPLE_CHARS_PER_TOKEN = 8


def seeded_sample(documents: Iterator[str], chars: int, seed: int) -> list[str]:
    """A uniform sample of the documents, in a seeded random order, of about `chars` characters: those
    with the smallest keys (a seeded hash of the text), kept in a heap as the set streams by. A prefix of
    the set would be biased by its order (a dump sorted by source or date)."""
    heap: list[tuple[int, int, str]] = []  # (-key, position, text): the largest key on top
    held = 0
    for position, text in enumerate(documents):
        key = xxhash.xxh3_64_intdigest(text.encode(), seed=seed)
        if held >= chars and -heap[0][0] <= key:
            continue
        heapq.heappush(heap, (-key, position, text))
        held += len(text)
        while held - len(heap[0][2]) >= chars:  # the rest still fill the budget without the largest key
            held -= len(heapq.heappop(heap)[2])
    return [text for _key, _pos, text in sorted(heap, key=lambda item: (-item[0], item[1]))]


class Ablate(Stage[AblateParams]):
    name = "ablate"
    version = "2"
    summary = "Train identical proxy LMs on each train set (same tokens, several seeds); compare eval losses."
    example = (
        "thresher ablate out/abl --train raw=data/00-ingest --train curated=data/09-top --eval clean=held/"
    )
    command = None  # its own command (cli/ablate_cmd.py): named sets, not one INPUT
    params: AblateParams

    # -- the sets -----------------------------------------------------------------------------------------
    def _sets(self) -> dict[str, dict[str, ShardSet]]:
        column = self.params.text_column
        opened: dict[str, dict[str, ShardSet]] = {"train": {}, "eval": {}}
        for kind in ("train", "eval"):
            for name, folder in getattr(self.params, kind).items():
                opened[kind][name] = ShardSet.open(storage.location(folder), ["id", column], [column])
        return opened

    def side_inputs(self) -> list[Path]:
        return [s.path for kind in self._sets().values() for shards in kind.values() for s in shards.shards]

    def _tokens(self, kind: str, name: str) -> Path:
        return self.ctx.work / "tokens" / f"{kind}-{name}.npz"

    def _texts(self, eval_name: str) -> Path:
        return self.ctx.work / "tokens" / f"eval-{eval_name}.texts.json"

    def _model(self, train: str, seed: int) -> Path:
        return self.ctx.work / "models" / f"{train}-seed{seed}"

    def _losses(self, train: str, seed: int, eval_name: str) -> Path:
        return self.ctx.work / "losses" / f"{train}-seed{seed}--{eval_name}.npy"

    def _seeds(self) -> list[int]:
        return [self.ctx.seed + k for k in range(self.params.seeds)]

    # -- plan -----------------------------------------------------------------------------------------
    def phases(self) -> list[PhaseSpec]:
        sets = self._sets()
        tokenizer = str(self.ctx.output / TOKENIZER)
        train_shards = [str(s.path) for ss in sets["train"].values() for s in ss.shards]
        total = sum(ss.num_rows for ss in sets["train"].values())
        every = max(1, -(-total // self.params.tokenizer_docs))
        tokenize = [
            TaskSpec.named(
                f"{kind}-{name}",
                {"shards": [str(s.path) for s in ss.shards], "tokenizer": tokenizer},
                {"kind": kind, "name": name},
                ss.num_rows,
            )
            for kind in ("train", "eval")
            for name, ss in sets[kind].items()
        ]
        first_eval = next(iter(sets["eval"]))
        train = [
            TaskSpec.named(
                f"{name}-seed{seed}",
                {
                    "tokens": str(self._tokens("train", name)),
                    "val": str(self._tokens("eval", first_eval)),
                    "tokenizer": tokenizer,
                },
                {"train": name, "seed": seed},
            )
            for name in sets["train"]
            for seed in self._seeds()
        ]
        evaluate = [
            TaskSpec.named(
                f"{name}-seed{seed}--{eval_name}",
                {
                    "model": str(self._model(name, seed) / "model.safetensors"),
                    "eval": str(self._texts(eval_name)),
                },
                {"train": name, "seed": seed, "eval": eval_name},
            )
            for name in sets["train"]
            for seed in self._seeds()
            for eval_name in sets["eval"]
        ]
        losses = [str(self._losses(t.args["train"], t.args["seed"], t.args["eval"])) for t in evaluate]
        return [
            PhaseSpec("tokenizer", [TaskSpec("tokenizer", tuple(train_shards), {"every": every}, total)]),
            PhaseSpec("tokenize", tokenize),
            PhaseSpec("train", train),
            PhaseSpec("evaluate", evaluate),
            PhaseSpec("compare", [TaskSpec.named("compare", {"losses": losses})]),
        ]

    # -- tasks ----------------------------------------------------------------------------------------
    @phase()
    def tokenizer(self, task: TaskSpec, tc: TaskContext) -> TaskResult:
        vocab = self.params.config().vocab_size
        return train_tokenizer_task(task, tc, self.params.text_column, vocab, self.ctx.output / TOKENIZER)

    def _documents(self, shards: list[Path], tc: TaskContext) -> Iterator[str]:
        for path in shards:
            for batch in iter_batches(path, [self.params.text_column]):
                tc.progress(batch.num_rows)
                yield from (t for t in batch.column(0).to_pylist() if t and t.strip())

    @phase()
    def tokenize(self, task: TaskSpec, tc: TaskContext) -> TaskResult:
        from thresher.scorers.proxy_lm import encode_documents, load_tokenizer, token_dtype

        tokenizer = load_tokenizer(task.input("tokenizer"))
        dtype = token_dtype(tokenizer.get_vocab_size())
        kind, name = task.args["kind"], task.args["name"]
        # Train sets: a seeded sample of documents, as a token stream cut at the budget. Eval sets: whole
        # documents, each kept apart.
        limit = self.params.tokens if kind == "train" else None
        docs_limit = self.params.eval_docs if kind == "eval" else None
        parts: list[np.ndarray] = []
        texts: list[str] = []
        have = 0
        documents = self._documents(task.input_list("shards"), tc)
        if limit is not None:
            documents = iter(seeded_sample(documents, limit * SAMPLE_CHARS_PER_TOKEN, self.ctx.seed))
        for text in documents:
            encoded = encode_documents(tokenizer, [text])
            parts.append(encoded)
            texts.append(text)
            have += len(encoded)
            if (limit is not None and have >= limit) or (docs_limit is not None and len(texts) >= docs_limit):
                break
        if not parts:
            raise ThresherError(f"{kind} set {name}: no text to tokenize")
        stream = np.concatenate(parts) if parts else np.zeros(0, dtype)
        repeats = 1
        if limit is not None:
            # A set smaller than the budget is repeated (and says so): every model sees the same tokens.
            repeats = math.ceil(limit / len(stream))
            stream = np.tile(stream, repeats)[:limit]
        lengths = np.array([len(p) for p in parts], np.int64)
        out = self._tokens(kind, name)
        with atomic_open(out, "wb") as f:
            np.savez(f, tokens=stream, lengths=lengths)
        tc.record(out)
        if kind == "eval":
            # The documents every model scores, as text (each is encoded by the shared tokenizer when
            # scored). JSON, not a pickled array.
            with atomic_open(self._texts(name), "w", encoding="utf-8") as f:
                json.dump(texts, f, ensure_ascii=False)
            tc.record(self._texts(name))
        return TaskResult(extra={"docs": len(texts), "tokens": len(stream), "repeats": repeats})

    @phase()
    def train(self, task: TaskSpec, tc: TaskContext) -> TaskResult:
        from thresher.scorers.proxy_lm import train_proxy_lm

        data = np.load(storage.readable(task.input("tokens")), allow_pickle=False)
        val = np.load(storage.readable(task.input("val")), allow_pickle=False)
        name, seed = task.args["train"], task.args["seed"]
        fingerprint = value_digest(
            {
                "params": self.params.model_dump(mode="json"),
                "seed": seed,
                "data": file_digest(task.input("tokens")),
            }
        )
        config = self.params.proxy_config()
        report = train_proxy_lm(
            config,
            tokenizer_path=task.input("tokenizer"),
            train_streams=[data["tokens"]],
            val_streams=[val["tokens"]],
            out_dir=self._model(name, seed),
            checkpoint_dir=self.ctx.work / "checkpoints" / f"{name}-seed{seed}",
            fingerprint=fingerprint,
            seed=seed,
            device=self.params.device,
            threads=self.params.threads,
        )
        for file in sorted(self._model(name, seed).iterdir()):
            tc.record(file)
        return TaskResult(
            extra={
                "train": name,
                "seed": seed,
                "steps": report.steps,
                "seconds": report.seconds,
                "tokens_per_second": round(self.params.tokens / max(report.seconds, 1e-9), 1),
                "history": report.history,
                # What turns the history's steps into tokens seen, for the report's learning curves.
                "tokens_per_step": config.batch_size * config.context_length,
            }
        )

    @phase()
    def evaluate(self, task: TaskSpec, tc: TaskContext) -> TaskResult:
        from thresher.scorers.causal_lm import CausalLMScorer

        texts = json.loads(task.input("eval").read_text(encoding="utf-8"))
        scorer = CausalLMScorer(
            task.input("model").parent, device=self.params.device, threads=self.params.threads
        )
        scores = scorer.score(texts)
        nll = np.where(scores.tokens > 0, np.log(scores.ppl) * scores.tokens, 0.0)
        out = self._losses(task.args["train"], task.args["seed"], task.args["eval"])
        with atomic_open(out, "wb") as f:
            np.save(f, np.stack([nll, scores.tokens.astype(np.float64)]), allow_pickle=False)
        tc.record(out)
        return TaskResult(extra={"docs": len(texts), "tokens": int(scores.tokens.sum())})

    @phase()
    def compare(self, task: TaskSpec, tc: TaskContext) -> TaskResult:
        losses: dict[tuple[str, str], list[np.ndarray]] = {}
        tokens: dict[str, np.ndarray] = {}
        for train in self.params.train:
            for eval_name in self.params.eval:
                for seed in self._seeds():
                    nll, count = np.load(
                        storage.readable(self._losses(train, seed, eval_name)), allow_pickle=False
                    )
                    losses.setdefault((train, eval_name), []).append(nll)
                    tokens[eval_name] = count
        cells = compare(losses, tokens, list(self.params.train), self.params.bootstrap, self.ctx.seed)
        result = {
            "baseline": next(iter(self.params.train)),
            "tokens_per_model": self.params.tokens,
            "seeds": self._seeds(),
            "results": [c.as_json() for c in cells],
        }
        with tc.artifact(RESULTS) as tmp:
            tmp.write_text(json.dumps(result, indent=2) + "\n")
        return TaskResult(extra=result)

    def summarize(self, records: list[TaskRecord]) -> dict[str, Any]:
        compared = [r for r in records if r.phase == "compare"]
        keys = ("train", "seed", "steps", "seconds", "tokens_per_second", "history", "tokens_per_step")
        # A record written before `tokens_per_step` existed lacks it; the rest are always there.
        training = [{k: r.extra[k] for k in keys if k in r.extra} for r in records if r.phase == "train"]
        return {**(dict(compared[0].extra) if compared else {}), "training": training}
