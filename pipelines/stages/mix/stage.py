"""`thresher mix`: sample a mixture of domains to given weights and a token (or row) budget.

What a token is: with `--tokenizer FILE` (a `tokenizers` JSON file, such as the `tokenizer.json` that
`thresher reweight doremi` writes next to its weights, so budget and weights are in the same units) the
number of tokens the tokenizer encodes a text to; without it, whitespace-separated words. With `--rows` every
row counts one.

How rows are chosen, seeded and streaming, in three phases:

- `count` (per shard): each row's size in tokens, and per domain a histogram of tokens over 65,536 bins of a
  seeded 64-bit hash of the row id (the row's random key; the same id gets the same key in any sharding).
- `plan`: per domain, the target is weight * budget. A domain with enough text gets the rows whose key
  falls below a cutoff bin, the cutoff chosen so their tokens come closest to the target: a uniform random
  sample without replacement, to within a bin's worth of tokens. A domain that runs out is taken whole
  `passes` times (every row repeated), plus a keyed sample for the rest; it is reported in the manifest.
- `sample` (per shard): writes each chosen row (repeats next to each other) with a `mix_copy` column (0 for
  the first copy); repeated copies get the id `<id>#<copy>` so ids stay unique. Unchosen rows go to
  `_dropped/` (reason `not_sampled`, or `unweighted_domain` for domains without weight).

Row accounting: `rows_out` counts input rows kept at least once, so rows_in = rows_out + dropped still holds;
the rows written with repeats are the summary's `rows_written`. The manifest summary holds requested and
achieved weights per domain.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import xxhash
from pydantic import Field, model_validator

from thresher.pipelines.engine import storage
from thresher.pipelines.engine.atomic import write_json
from thresher.pipelines.engine.digest import file_digest
from thresher.pipelines.engine.errors import ThresherError, UsageError
from thresher.pipelines.engine.manifest import FileRecord, TaskRecord
from thresher.pipelines.engine.mapping import BatchOutcome, map_shard
from thresher.pipelines.engine.shards import ID_COLUMN, ShardWriter, dropped_table, iter_batches
from thresher.pipelines.engine.stage import PhaseSpec, Stage, StageParams, TaskContext, TaskResult, TaskSpec
from thresher.pipelines.text.normalize import separator

log = logging.getLogger("thresher")

BINS = 1 << 16
COPY_COLUMN = "mix_copy"
HIST_SCHEMA = pa.schema(
    [("domain", pa.string()), ("bin", pa.int32()), ("rows", pa.int64()), ("tokens", pa.int64())]
)
SIZES_SCHEMA = pa.schema([("tokens", pa.int64())])


class MixParams(StageParams):
    weights: str = Field(
        description="JSON file of domain weights: the domain_weights.json of `thresher reweight doremi`, or "
        "an object {domain: weight}. Normalised to sum to 1; domains left out get none."
    )
    tokens: int | None = Field(
        None,
        ge=1,
        description="Token budget. A token is one of --tokenizer's tokens if given, else a "
        "whitespace-separated word.",
    )
    rows: int | None = Field(None, ge=1, description="Row budget instead of --tokens (each row counts one).")
    tokenizer: str | None = Field(
        None,
        description="tokenizer.json to count tokens with (e.g. the one `thresher reweight doremi` writes, "
        "the units its weights are in); default: whitespace-separated words.",
    )
    domain_column: str = Field("domain", description="Column naming each row's domain (a string).")
    text_column: str = Field("text", description="Column holding the text (its tokens are counted).")

    @model_validator(mode="after")
    def _one_budget(self) -> MixParams:
        if (self.tokens is None) == (self.rows is None):
            raise ValueError("give exactly one budget: --tokens N or --rows N")
        if self.rows is not None and self.tokenizer is not None:
            raise ValueError("--tokenizer counts tokens; it goes with --tokens, not --rows")
        return self


def read_weights(path: Path) -> dict[str, float]:
    """Domain weights from a JSON file (`{"weights": {...}}` or `{domain: weight}`), normalised to sum 1."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise UsageError(f"--weights {path}: cannot read it ({exc.strerror})") from None
    except ValueError as exc:
        raise ThresherError(f"--weights {path}: not valid JSON ({exc})") from None
    raw = data.get("weights", data) if isinstance(data, dict) else None
    if not isinstance(raw, dict) or not raw:
        raise ThresherError(
            f"--weights {path}: expected a JSON object of domain weights, or {{'weights': ...}}"
        )
    weights = {}
    for domain, value in raw.items():
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or not np.isfinite(value)
            or value < 0
        ):
            raise ThresherError(
                f"--weights {path}: weight of '{domain}' is {value!r}; expected a number >= 0"
            )
        weights[str(domain)] = float(value)
    total = sum(weights.values())
    if total <= 0:
        raise ThresherError(f"--weights {path}: every weight is 0")
    return {d: w / total for d, w in sorted(weights.items())}


def row_keys(ids: pa.Array, seed: int) -> np.ndarray:
    """A seeded 64-bit hash of each id: the row's random key, whatever shard it sits in."""
    return np.fromiter(
        (xxhash.xxh64_intdigest(i, seed=seed) for i in pc.cast(ids, pa.binary()).to_pylist()),
        np.uint64,
        count=len(ids),
    )


def key_bins(keys: np.ndarray) -> np.ndarray:
    return (keys >> np.uint64(48)).astype(np.int32)


def choose_cutoff(cumulative: np.ndarray, target: float) -> int:
    """The bin b whose cumulative total (units in bins < b) comes closest to the target; ties go low."""
    b = int(np.searchsorted(cumulative, target, side="left"))
    if b >= len(cumulative):
        return len(cumulative) - 1
    if b > 0 and target - cumulative[b - 1] <= cumulative[b] - target:
        return b - 1
    return b


def plan_domain(histogram: np.ndarray, target: float) -> dict[str, Any]:
    """How to sample one domain: every row `passes` times, plus the rows in bins below `cutoff` once more."""
    available = int(histogram.sum())
    cumulative = np.concatenate([[0], np.cumsum(histogram)])
    passes = int(target // available) if target > available else 0
    cutoff = choose_cutoff(cumulative, target - passes * available)
    return {
        "passes": passes,
        "cutoff": cutoff,
        "available": available,
        "planned": int(passes * available + cumulative[cutoff]),
        "ran_out": target > available,
    }


def add_to_histograms(
    histograms: dict[str | None, np.ndarray], domains: pa.Array, bins: np.ndarray, sizes: np.ndarray
) -> None:
    """Add a batch to per-domain (rows, tokens) histograms over key bins; a null domain is key None."""
    encoded = pc.dictionary_encode(domains)
    codes = pc.fill_null(encoded.indices, -1).to_numpy(zero_copy_only=False)
    for code, name in [*enumerate(encoded.dictionary.to_pylist()), (-1, None)]:
        chosen = codes == code
        if not chosen.any():
            continue
        hist = histograms.setdefault(name, np.zeros((2, BINS), np.int64))
        np.add.at(hist[0], bins[chosen], 1)
        np.add.at(hist[1], bins[chosen], sizes[chosen])


def histogram_table(histograms: dict[str | None, np.ndarray]) -> pa.Table:
    """The non-empty bins of every domain's histogram, as a small table."""
    parts = [HIST_SCHEMA.empty_table()]
    for name in sorted(histograms, key=lambda n: (n is None, n or "")):
        hist = histograms[name]
        nonzero = np.flatnonzero(hist[0])
        parts.append(
            pa.table(
                {
                    "domain": pa.array([name] * len(nonzero), pa.string()),
                    "bin": nonzero.astype(np.int32),
                    "rows": hist[0][nonzero],
                    "tokens": hist[1][nonzero],
                },
                schema=HIST_SCHEMA,
            )
        )
    return pa.concat_tables(parts)


class Mix(Stage):
    name = "mix"
    version = "1"
    Params = MixParams
    summary = (
        "Sample a domain mixture to weights (e.g. DoReMi's) and a token or row budget: seeded, streaming, "
        "repeating a domain's rows only when it runs out (repeats get the id <id>#<n> and a mix_copy column)."
    )
    example = "thresher mix data/web data/mix --weights data/doremi/domain_weights.json --tokens 50000000"
    command = ("mix",)
    params: MixParams

    def required_columns(self) -> list[str]:
        return [*super().required_columns(), self.params.domain_column]

    def string_columns(self) -> list[str]:
        return [*super().string_columns(), self.params.domain_column]

    def _weights_path(self) -> Path:
        path = storage.location(self.params.weights)
        if not path.is_file():
            raise UsageError(f"--weights {path}: no such file")
        return path

    def _tokenizer_path(self) -> Path | None:
        if self.params.tokenizer is None:
            return None
        path = storage.location(self.params.tokenizer)
        if not path.is_file():
            raise UsageError(
                f"--tokenizer {path}: no such file (a tokenizers JSON file, e.g. tokenizer.json)"
            )
        return path

    def side_inputs(self) -> list[Path]:
        return [p for p in (self._weights_path(), self._tokenizer_path()) if p is not None]

    def _work(self, kind: str, shard_name: str) -> Path:
        return self.ctx.work / kind / shard_name

    def _plan_file(self) -> Path:
        return self.ctx.work / "mix_plan.json"

    def phases(self) -> list[PhaseSpec]:
        assert self.ctx.input is not None
        read_weights(self._weights_path())  # a bad file fails before any work
        for shard in self.ctx.input.shards:
            if shard.schema is not None and COPY_COLUMN in shard.schema.names:
                raise ThresherError(
                    f"{shard.path}: already has a '{COPY_COLUMN}' column (the output of a mix?)"
                )
        shards = self.ctx.input.shards
        tokenizer = self._tokenizer_path()
        extra = (str(tokenizer),) if tokenizer else ()
        hists = tuple(str(self._work("hist", s.name)) for s in shards)
        plan = str(self._plan_file())
        return [
            PhaseSpec("count", [TaskSpec(s.name, (str(s.path), *extra), {}, s.num_rows) for s in shards]),
            PhaseSpec("plan", [TaskSpec("plan", (*hists, str(self._weights_path())), {})]),
            PhaseSpec(
                "sample",
                [
                    TaskSpec(s.name, (str(s.path), str(self._work("sizes", s.name)), plan), {}, s.num_rows)
                    for s in shards
                ],
            ),
        ]

    def run_task(self, phase: str, task: TaskSpec, tc: TaskContext) -> TaskResult:
        if phase == "count":
            return self._count(task, tc)
        if phase == "plan":
            return self._plan(task, tc)
        return self._sample(task, tc)

    # -- count -------------------------------------------------------------------------------------------

    def _sizer(self, tokenizer_path: Path | None) -> Callable[[pa.Array], np.ndarray]:
        if self.params.rows is not None:
            return lambda texts: np.ones(len(texts), np.int64)
        if tokenizer_path is None:

            def words(texts: pa.Array) -> np.ndarray:
                # Runs of non-whitespace (Unicode whitespace). Trimmed first: a split keeps an empty part
                # for leading or trailing whitespace, and an empty text splits into one empty part.
                trimmed = pc.utf8_trim_whitespace(texts)
                counts = pc.list_value_length(pc.utf8_split_whitespace(trimmed))
                counts = pc.if_else(pc.equal(pc.utf8_length(trimmed), 0), 0, counts)
                return pc.fill_null(counts, 0).to_numpy(zero_copy_only=False).astype(np.int64)

            return words
        from thresher.scorers.proxy_lm import load_tokenizer

        try:
            tokenizer = load_tokenizer(tokenizer_path)
        except Exception as exc:  # tokenizers raises a bare Exception for a file it cannot parse
            raise ThresherError(f"--tokenizer {tokenizer_path}: not a tokenizers JSON file ({exc})") from None

        def bpe(texts: pa.Array) -> np.ndarray:
            values = [t or "" for t in texts.to_pylist()]
            return np.array([len(e.ids) for e in tokenizer.encode_batch(values)], np.int64)

        return bpe

    def _count(self, task: TaskSpec, tc: TaskContext) -> TaskResult:
        p = self.params
        sizer = self._sizer(storage.location(task.inputs[1]) if len(task.inputs) > 1 else None)
        histograms: dict[str | None, np.ndarray] = {}
        sizes_writer = ShardWriter(self._work("sizes", task.key), SIZES_SCHEMA)
        with sizes_writer:
            for batch in iter_batches(
                storage.location(task.inputs[0]), [ID_COLUMN, p.text_column, p.domain_column]
            ):
                sizes = sizer(batch.column(p.text_column))
                sizes_writer.write(pa.table({"tokens": sizes}, schema=SIZES_SCHEMA))
                bins = key_bins(row_keys(batch.column(ID_COLUMN), self.ctx.seed))
                add_to_histograms(histograms, batch.column(p.domain_column), bins, sizes)
                tc.progress(batch.num_rows)
        tc.record(sizes_writer.close())
        hist = histogram_table(histograms)
        writer = ShardWriter(self._work("hist", task.key), HIST_SCHEMA)
        with writer:
            writer.write(hist)
        tc.record(writer.close())
        return TaskResult(
            extra={
                "domains": {
                    str(name): {"rows": int(h[0].sum()), "tokens": int(h[1].sum())}
                    for name, h in sorted(histograms.items(), key=lambda kv: str(kv[0]))
                }
            }
        )

    # -- plan --------------------------------------------------------------------------------------------

    def _plan(self, task: TaskSpec, tc: TaskContext) -> TaskResult:
        p = self.params
        weights_path = storage.location(task.inputs[-1])
        weights = read_weights(weights_path)
        units: dict[str | None, np.ndarray] = {}
        for path in task.inputs[:-1]:
            table = pq.read_table(storage.readable(path))
            encoded = pc.dictionary_encode(table["domain"].combine_chunks())
            codes = pc.fill_null(encoded.indices, -1).to_numpy(zero_copy_only=False)
            bins, tokens = table["bin"].to_numpy(), table["tokens"].to_numpy()
            for code, name in [*enumerate(encoded.dictionary.to_pylist()), (-1, None)]:
                chosen = codes == code
                if chosen.any():
                    np.add.at(units.setdefault(name, np.zeros(BINS, np.int64)), bins[chosen], tokens[chosen])
        budget = p.tokens if p.tokens is not None else p.rows
        assert budget is not None
        domains: dict[str, Any] = {}
        for name, weight in weights.items():
            if weight <= 0:
                continue
            histogram = units.get(name)
            if histogram is None or histogram.sum() == 0:
                unit = "tokens" if p.tokens is not None else "rows"
                raise ThresherError(
                    f"--weights {weights_path}: domain '{name}' has weight {weight:.4g} but no {unit} in "
                    f"column '{p.domain_column}' of the input; drop it from the weights or add its data"
                )
            target = weight * budget
            plan = plan_domain(histogram, target)
            domains[name] = {"weight": weight, "target": round(target, 3), **plan}
            if plan["ran_out"]:
                log.warning(
                    "mix: domain '%s' has %d %s but %.0f are requested; its rows are repeated (%.2fx)",
                    name,
                    plan["available"],
                    "tokens" if p.tokens is not None else "rows",
                    target,
                    target / plan["available"],
                )
        unweighted = sorted(n if n is not None else "(null)" for n in units if n not in domains)
        document = {
            "budget": budget,
            "unit": "tokens" if p.tokens is not None else "rows",
            "domains": domains,
        }
        write_json(self._plan_file(), document)
        path = self._plan_file()
        tc.record(FileRecord(path=str(path), size=path.stat().st_size, digest=file_digest(path)))
        return TaskResult(extra={**document, "unweighted_domains": unweighted})

    # -- sample ------------------------------------------------------------------------------------------

    def _sample(self, task: TaskSpec, tc: TaskContext) -> TaskResult:
        p = self.params
        plan = json.loads(storage.location(task.inputs[2]).read_text(encoding="utf-8"))["domains"]
        sizes = pq.read_table(storage.readable(task.inputs[1]))["tokens"].to_numpy()
        names = sorted(plan)
        passes = np.array([plan[n]["passes"] for n in names] + [0], np.int64)
        cutoffs = np.array([plan[n]["cutoff"] for n in names] + [0], np.int64)
        lookup = pa.array(names, pa.string())
        achieved = {n: {"rows": 0, "tokens": 0} for n in names}
        offset = 0
        stats = {"rows_written": 0, "repeated_rows": 0}

        def choose(batch: pa.RecordBatch) -> BatchOutcome:
            nonlocal offset
            n = batch.num_rows
            batch_sizes = sizes[offset : offset + n]
            offset += n
            index = pc.index_in(batch.column(p.domain_column), value_set=lookup)
            domain = pc.fill_null(index, len(names)).to_numpy(zero_copy_only=False).astype(np.int64)
            bins = key_bins(row_keys(batch.column(ID_COLUMN), self.ctx.seed))
            copies = passes[domain] + (bins < cutoffs[domain])
            weighted = domain < len(names)
            for i, name in enumerate(names):
                mine = domain == i
                achieved[name]["rows"] += int(copies[mine].sum())
                achieved[name]["tokens"] += int((copies[mine] * batch_sizes[mine]).sum())
            take = np.repeat(np.arange(n), copies)
            copy = (np.arange(len(take)) - np.repeat(np.cumsum(copies) - copies, copies)).astype(np.int32)
            kept = pa.Table.from_batches([batch]).take(pa.array(take, pa.int64()))
            ids = kept.column(ID_COLUMN)
            if (copy > 0).any():
                numbers = pa.array(copy.astype(str), ids.type)
                suffixed = pc.binary_join_element_wise(ids, numbers, separator("#", ids.type))
                ids = pc.if_else(pa.array(copy > 0), suffixed, ids)
                kept = kept.set_column(kept.schema.get_field_index(ID_COLUMN), ID_COLUMN, ids)
            kept = kept.append_column(COPY_COLUMN, pa.array(copy, pa.int32()))
            stats["rows_written"] += kept.num_rows
            stats["repeated_rows"] += int((copy > 0).sum())
            dropped_mask = copies == 0
            dropped = None
            if dropped_mask.any():
                reasons = np.where(weighted[dropped_mask], "not_sampled", "unweighted_domain")
                dropped = dropped_table(
                    batch.column(ID_COLUMN).filter(pa.array(dropped_mask)), self.name, pa.array(reasons)
                )
            return BatchOutcome(kept, dropped)

        result = map_shard(storage.location(task.inputs[0]), tc, choose, writes_dropped=True)
        if offset != len(sizes):
            raise RuntimeError(f"mix: {task.key} has {offset} rows but its size file {len(sizes)}")
        # map_shard counted written rows; the accounting is of input rows (see the module docstring).
        assert result.counts is not None
        result.counts.rows_out = result.counts.rows_in - sum(result.counts.dropped.values())
        result.extra.update({"achieved": achieved, **stats})
        return result

    def summarize(self, records: list[TaskRecord]) -> dict[str, Any]:
        plan = next((r.extra for r in records if r.phase == "plan"), None)
        if plan is None:
            return {}
        unit = plan["unit"]
        achieved = {n: 0 for n in plan["domains"]}
        rows = {n: 0 for n in plan["domains"]}
        written = repeated = 0
        for r in records:
            if r.phase != "sample":
                continue
            for name, got in r.extra["achieved"].items():
                achieved[name] += got["tokens"]
                rows[name] += got["rows"]
            written += r.extra["rows_written"]
            repeated += r.extra["repeated_rows"]
        total = sum(achieved.values()) or 1
        domains = {}
        for name, d in plan["domains"].items():
            domains[name] = {
                "requested_weight": round(d["weight"], 6),
                "achieved_weight": round(achieved[name] / total, 6),
                "requested": d["target"],
                "achieved": achieved[name],
                "available": d["available"],
                "rows_written": rows[name],
                "ran_out": d["ran_out"],
                # How often each row of the domain is used on average: above 1 when it ran out.
                "uses_per_row": round(achieved[name] / d["available"], 4),
            }
        return {
            "unit": unit,
            "token_count": "rows"
            if unit == "rows"
            else (
                f"tokenizer {self.params.tokenizer}"
                if self.params.tokenizer
                else "whitespace-separated words"
            ),
            "budget": plan["budget"],
            "achieved": sum(achieved.values()),
            "max_weight_error": round(
                max(abs(d["achieved_weight"] - d["requested_weight"]) for d in domains.values()), 6
            ),
            "domains": domains,
            "ran_out": sorted(n for n, d in domains.items() if d["ran_out"]),
            "unweighted_domains": plan.get("unweighted_domains", []),
            "rows_written": written,
            "repeated_rows": repeated,
        }
