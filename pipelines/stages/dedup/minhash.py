"""MinHash LSH near-dedup that scales past memory.

Phases:
1. `signatures` (per shard, or per part of a big shard, row groups or slices of one, so a few big shards
   still use every core): MinHash each document; write its band keys, sorted by key within each band,
   and its text length (and, for --verify estimate, its signature) to work files.
2. `buckets` (per band): k-way merge of that band's sorted runs from all shards; documents sharing a key
   become candidate pairs. Nothing holds a whole band in memory.
3. `components` (one task): connected components over candidate pairs only, so memory follows the
   number of candidates, not the corpus; each component's keeper is its first document in (preference,
   doc) order. Components are spread over verify buckets.
4. `gather` (per signatures part): read the part's clustered documents again and write what verification
   compares, by verify bucket: the exact shingle sets (--verify exact, exact-any), recomputed for clustered
   documents only, or the signatures (estimate).
5. `verify` (per verify bucket): check every member against its keeper (exact: exact Jaccard of shingle
   sets; exact-any: against any member of its cluster; estimate: from the signatures). A member below the
   threshold is kept (LSH false positives and chains of candidates). Memory follows one bucket's clustered
   documents, and the buckets run in parallel.
6. `filter` (per shard): drop clustered non-keepers (naming their keeper) and add `minhash_cluster`.
   With `--mode tag` nothing is dropped: `minhash_cluster` (the keeper's id, on the keeper and on each
   member; null outside clusters) and `minhash_duplicate` (true on the rows drop mode would drop) are
   added, so `thresher filter --where "not minhash_duplicate"` keeps what drop mode keeps.
Documents are ordered by (shard file name, row), which makes every choice independent of scheduling.
Later phases list the index of the phases they read, not their files: the plan stays O(shards + bands).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pydantic import Field, model_validator

from thresher.pipelines.engine import storage
from thresher.pipelines.engine.manifest import TaskRecord
from thresher.pipelines.engine.mapping import BatchOutcome, map_batches
from thresher.pipelines.engine.plan import phase_index_path, phase_outputs
from thresher.pipelines.engine.shards import (
    ID_COLUMN,
    ShardPart,
    ShardWriter,
    dropped_table,
    iter_batches,
    shard_parts,
)
from thresher.pipelines.engine.stage import PhaseSpec, Stage, StageParams, TaskContext, TaskResult, TaskSpec
from thresher.pipelines.engine.tagging import WOULD_DROP, FilterMode, mode_field
from thresher.pipelines.stages.dedup import signatures as minhash
from thresher.pipelines.stages.dedup.lsh_merge import (
    BAND_SCHEMA,
    PAIR_SCHEMA,
    band_runs,
    merged_groups,
    star_edges,
)
from thresher.pipelines.stages.dedup.verify import VerifyMode, jaccard, shingle_sets, verify_clusters
from thresher.pipelines.text.hashing import splitmix64

REASON = "near_duplicate"
CLUSTER_COLUMN = "minhash_cluster"
DUPLICATE_COLUMN = "minhash_duplicate"
ROW_BITS = 40  # doc = shard << 40 | row: a trillion rows per shard, 8 million shards
# Documents MinHashed per step: the arrays of one step (a few per token) stay near 20 MB at 260 words a
# document, where 8192 documents peaked at 150 MB in each worker; per-step overhead is still small here.
SIGNATURE_BATCH_ROWS = 1024
COMPONENT_SCHEMA = pa.schema(
    [("doc", pa.int64()), ("keeper", pa.int64()), ("preference", pa.int64()), ("bucket", pa.int32())]
)
GATHER_SCHEMA = pa.schema(
    [
        ("bucket", pa.int32()),
        ("keeper", pa.int64()),
        ("preference", pa.int64()),
        ("doc", pa.int64()),
        ("id", pa.string()),
        ("data", pa.binary()),  # sorted distinct uint32 shingle hashes, or the signature
    ]
)
# Clustered documents are spread over about one verify task per this many input rows (at least two, so
# even a small set verifies on two cores): at 10-20% clustered, a task holds 10-20k shingle sets.
VERIFY_ROWS = 100_000
# Clusters of its component a member is checked against, at most (see verify_clusters): real clusters
# of near duplicates split into a handful at most, so this bounds only chains of unrelated documents.
MAX_CLUSTERS_TRIED = 32
CLUSTER_SCHEMA = pa.schema(
    [("shard", pa.int32()), ("row", pa.int64()), ("cluster", pa.string()), ("dup_of", pa.string())]
)


def _row_groups_where(path: Path, column: str, value: int) -> pa.Table:
    """The rows of a file written a row group per value of `column`, for one value: its row groups are
    picked by their statistics, without `pq.read_table(filters=...)`, whose dataset layer imports pandas
    (half a second and 40 MB in every worker)."""
    pf = pq.ParquetFile(storage.readable(path))
    at = pf.schema_arrow.get_field_index(column)
    groups = [
        g
        for g in range(pf.metadata.num_row_groups)
        if pf.metadata.row_group(g).column(at).statistics.min == value
    ]
    return pf.read_row_groups(groups) if groups else pf.schema_arrow.empty_table()


class MinHashParams(StageParams):
    text_column: str = Field("text", description="Column holding the text to compare.")
    threshold: float = Field(0.8, gt=0.0, lt=1.0, description="Jaccard similarity that counts as duplicate.")
    num_perm: int = Field(128, ge=8, le=2048, description="MinHash permutations (signature length).")
    bands: int | None = Field(None, ge=1, description="LSH bands; default: chosen from --threshold.")
    rows: int | None = Field(None, ge=1, description="Rows per band; give with --bands.")
    fn_weight: float = Field(
        0.9,
        ge=0.0,
        le=1.0,
        description="When choosing bands/rows from --threshold: weight of missed "
        "duplicates against false candidates (datasketch's method). --verify removes false candidates.",
    )
    ngram: int = Field(5, ge=1, description="Shingle size, in words (or characters with --shingle char).")
    shingle: Literal["word", "char"] = Field(
        "word",
        description="Word n-grams, or character n-grams: use char for Chinese, Japanese, Thai and "
        "other scripts written without spaces (with --ngram 3 to 5).",
    )
    lowercase: bool = Field(True, description="Case-fold before shingling (whitespace is always collapsed).")
    strip_punctuation: bool = Field(False, description="Remove punctuation and symbols before shingling.")
    keep: Literal["first", "longest"] = Field(
        "first",
        description="Which document of a cluster to keep: the first (shard, row) or the longest "
        "text (ties: the first).",
    )
    verify: VerifyMode = Field(
        "exact",
        description="Check each cluster member before dropping it: exact (exact Jaccard of its shingles "
        "to the keeper's, recomputed for clustered documents only), exact-any (to any member already in "
        "its cluster), estimate (estimated Jaccard from the signatures, to the keeper) or none. A member "
        "below --threshold is kept, and with exact and exact-any may keep a cluster of its own.",
    )
    mode: FilterMode = mode_field("minhash_duplicate (minhash_cluster is added in both modes)")

    @model_validator(mode="after")
    def _bands_and_rows(self) -> MinHashParams:
        if (self.bands is None) != (self.rows is None):
            raise ValueError("give --bands and --rows together, or neither")
        if self.bands is not None and self.rows is not None and self.bands * self.rows > self.num_perm:
            raise ValueError(
                f"--bands x --rows ({self.bands * self.rows}) exceeds --num-perm ({self.num_perm})"
            )
        return self


class MinHashDedup(Stage):
    name = "minhash-dedup"
    parallel = "threads"  # Arrow and numpy kernels: the GIL is released most of the time
    uses_pandas = False
    version = "4"
    Params = MinHashParams
    summary = "Drop near-duplicate documents (MinHash LSH), keeping one per cluster; adds minhash_cluster."
    example = "thresher dedup minhash data/01-exact data/02-minhash --threshold 0.8 --workers 16"
    command = ("dedup", "minhash")
    params: MinHashParams

    def lsh_shape(self) -> tuple[int, int]:
        p = self.params
        if p.bands is not None and p.rows is not None:
            return p.bands, p.rows
        return minhash.choose_bands(p.threshold, p.num_perm, p.fn_weight)

    @property
    def _shingling(self) -> minhash.Shingling:
        p = self.params
        return minhash.Shingling(p.ngram, p.shingle, p.lowercase, p.strip_punctuation)

    def _work(self, kind: str, name: str) -> Path:
        return self.ctx.work / kind / name

    def phases(self) -> list[PhaseSpec]:
        assert self.ctx.input is not None
        shards = self.ctx.input.shards
        if self.params.mode == "tag":
            self.check_new_columns([CLUSTER_COLUMN, DUPLICATE_COLUMN])
        bands, rows = self.lsh_shape()
        signatures, buckets, components, gather, verify = (
            str(phase_index_path(self.ctx.output, name))
            for name in ("signatures", "buckets", "components", "gather", "verify")
        )
        shape = {"bands": bands, "rows": rows}
        parts = [
            (i, s, part)
            for i, (s, mine) in enumerate(zip(shards, shard_parts(shards, split_groups=True), strict=True))
            for part in mine
        ]
        n_verify = self.verify_buckets()
        return [
            PhaseSpec(
                "signatures",
                [
                    TaskSpec(
                        part.name(s.name), (str(s.path),), {"shard": i, **shape, **part.args()}, part.rows
                    )
                    for i, s, part in parts
                ],
            ),
            PhaseSpec(
                "buckets", [TaskSpec(f"band-{b:04d}", (signatures,), {"band": b}) for b in range(bands)]
            ),
            PhaseSpec("components", [TaskSpec("components", (buckets, signatures), {"buckets": n_verify})]),
            PhaseSpec(
                "gather",
                [
                    TaskSpec(
                        part.name(s.name),
                        # The signatures it may read (--verify estimate) stand behind components' digest.
                        (str(s.path), components),
                        {"shard": i, "task": k, **part.args()},
                        part.rows,
                    )
                    for k, (i, s, part) in enumerate(parts)
                ],
            ),
            PhaseSpec(
                "verify",
                [TaskSpec(f"verify-{b:04d}", (gather,), {"bucket": b}) for b in range(n_verify)],
            ),
            PhaseSpec(
                "filter",
                [
                    TaskSpec(s.name, (str(s.path), verify), {"shard": i}, s.num_rows)
                    for i, s in enumerate(shards)
                ],
            ),
        ]

    def verify_buckets(self) -> int:
        assert self.ctx.input is not None
        return max(2, -(-self.ctx.input.num_rows // VERIFY_ROWS))

    def _meta_schema(self) -> pa.Schema:
        fields = [("doc", pa.int64()), ("length", pa.int64())]
        if self.params.verify == "estimate":
            fields.append(("signature", pa.binary(4 * self.params.num_perm)))
        return pa.schema(fields)

    def _signature_files(self, kind: str) -> list[Path]:
        """The `kind` ("bands" or "meta") work files every signatures task wrote, in shard order."""
        return [p for p in phase_outputs(self.ctx.output, "signatures") if p.parent.name == kind]

    def run_task(self, phase: str, task: TaskSpec, tc: TaskContext) -> TaskResult:
        if phase not in ("signatures", "buckets", "components", "gather", "verify", "filter"):
            raise RuntimeError(f"stage {self.name} has no phase '{phase}'")
        method = "_verify_bucket" if phase == "verify" else "_" + phase
        result: TaskResult = getattr(self, method)(task, tc)
        return result

    # -- phase 1 -------------------------------------------------------------------------------------------
    def _signatures(self, task: TaskSpec, tc: TaskContext) -> TaskResult:
        p = self.params
        shard, bands, rows = task.args["shard"], task.args["bands"], task.args["rows"]
        part = ShardPart.from_args(task.args, task.rows)
        shard_path = storage.location(task.inputs[0])
        name = part.name(shard_path.name)
        meta_schema = self._meta_schema()
        meta = ShardWriter(self._work("meta", name), meta_schema)
        keys_parts, docs_parts = [], []
        offset, empty = part.first_row, 0
        try:
            for batch in iter_batches(
                shard_path, [ID_COLUMN, p.text_column], batch_rows=SIGNATURE_BATCH_ROWS, part=part
            ):
                text = batch.column(p.text_column)
                sig = minhash.signatures(text, self._shingling, p.num_perm, self.ctx.seed)
                has_shingles = sig[:, 0] != minhash.MAX_HASH
                # A document with shingles has no all-max signature: some shingle wins every permutation.
                rows_here = np.nonzero(has_shingles)[0]
                empty += batch.num_rows - len(rows_here)
                docs = (np.int64(shard) << ROW_BITS) | (rows_here + offset)
                keys_parts.append(minhash.band_keys(sig[rows_here], bands, rows))
                docs_parts.append(docs)
                lengths = pc.fill_null(pc.utf8_length(text), 0).to_numpy(zero_copy_only=False)
                columns: dict[str, Any] = {"doc": docs, "length": lengths[rows_here].astype(np.int64)}
                if p.verify == "estimate":
                    columns["signature"] = pa.FixedSizeBinaryArray.from_buffers(
                        pa.binary(4 * p.num_perm),
                        len(rows_here),
                        [None, pa.py_buffer(np.ascontiguousarray(sig[rows_here]))],
                    )
                meta.write(pa.table(columns, schema=meta_schema))
                offset += batch.num_rows
                tc.progress(batch.num_rows)
            tc.record(meta.close())
        except BaseException:
            meta.abort()
            raise
        keys = np.concatenate(keys_parts) if keys_parts else np.zeros((0, bands), np.uint64)
        docs = np.concatenate(docs_parts) if docs_parts else np.zeros(0, np.int64)
        with ShardWriter(self._work("bands", name), BAND_SCHEMA) as writer:
            for band in range(bands):
                order = np.lexsort((docs, keys[:, band]))
                writer.write(
                    pa.table(
                        {
                            "band": np.full(len(docs), band, np.int16),
                            "key": keys[order, band],
                            "doc": docs[order],
                        },
                        schema=BAND_SCHEMA,
                    )
                )
            tc.record(writer.close())
        return TaskResult(extra={"documents": offset - part.first_row, "without_shingles": empty})

    # -- phase 2 -------------------------------------------------------------------------------------------
    def _buckets(self, task: TaskSpec, tc: TaskContext) -> TaskResult:
        band = task.args["band"]
        runs = [band_runs(path, band) for path in self._signature_files("bands")]
        pairs = 0
        with ShardWriter(self._work("pairs", f"{task.key}.parquet"), PAIR_SCHEMA) as writer:
            for keys, docs in merged_groups(runs):
                first, member = star_edges(keys, docs)
                if len(first):
                    writer.write(pa.table({"doc": member, "other": first}, schema=PAIR_SCHEMA))
                    pairs += len(first)
            tc.record(writer.close())
        return TaskResult(extra={"candidate_pairs": pairs})

    # -- phase 3 -------------------------------------------------------------------------------------------
    def _components(self, task: TaskSpec, tc: TaskContext) -> TaskResult:
        from scipy.sparse import coo_matrix
        from scipy.sparse.csgraph import connected_components

        pairs = [
            pq.ParquetFile(storage.readable(f)).read() for f in phase_outputs(self.ctx.output, "buckets")
        ]
        doc = np.concatenate([t["doc"].to_numpy() for t in pairs]) if pairs else np.zeros(0, np.int64)
        other = np.concatenate([t["other"].to_numpy() for t in pairs]) if pairs else np.zeros(0, np.int64)
        del pairs
        nodes = np.unique(np.concatenate([doc, other]))
        n = len(nodes)
        graph = coo_matrix(
            (np.ones(len(doc), np.int8), (np.searchsorted(nodes, doc), np.searchsorted(nodes, other))),
            shape=(n, n),
        )
        _, labels = connected_components(graph, directed=False)
        del graph
        longest = self.params.keep == "longest"
        preference = -self._node_lengths(nodes) if longest else np.zeros(n, np.int64)
        # Keeper of each component: its first node in (preference, doc) order.
        order = np.lexsort((nodes, preference, labels))
        is_first = (
            np.concatenate([[True], labels[order][1:] != labels[order][:-1]]) if n else np.zeros(0, bool)
        )
        keeper_of_label = np.empty(labels.max() + 1 if n else 0, np.int64)
        keeper_of_label[labels[order][is_first]] = nodes[order][is_first]
        keeper = keeper_of_label[labels]
        buckets = task.args["buckets"]
        bucket = (splitmix64(keeper.astype(np.uint64)) % np.uint64(buckets)).astype(np.int32)
        table = pa.table(
            {"doc": nodes, "keeper": keeper, "preference": preference, "bucket": bucket},
            schema=COMPONENT_SCHEMA,
        )
        with ShardWriter(self.ctx.work / "components.parquet", COMPONENT_SCHEMA) as writer:
            writer.write(table)
            tc.record(writer.close())
        return TaskResult(extra={"candidate_pairs": len(doc), "candidates": n})

    def _node_lengths(self, nodes: np.ndarray) -> np.ndarray:
        """Text lengths of the candidate documents only, read file by file."""
        lengths = np.zeros(len(nodes), np.int64)
        for path in self._signature_files("meta"):
            for batch in iter_batches(path, ["doc", "length"]):
                docs = batch.column(0).to_numpy()
                hit = np.isin(docs, nodes, assume_unique=True)
                if hit.any():
                    lengths[np.searchsorted(nodes, docs[hit])] = batch.column(1).to_numpy()[hit]
        return lengths

    # -- phase 4 -------------------------------------------------------------------------------------------
    def _gather(self, task: TaskSpec, tc: TaskContext) -> TaskResult:
        """What verification compares, for this part's clustered documents, split by verify bucket."""
        p = self.params
        shard = task.args["shard"]
        part = ShardPart.from_args(task.args, task.rows)
        shard_path = storage.location(task.inputs[0])
        base = np.int64(shard) << ROW_BITS
        lo, hi = base + part.first_row, base + part.first_row + (part.rows or (1 << ROW_BITS) - 1)
        if part.whole:
            lo, hi = base, base + (1 << ROW_BITS) - 1
        everything = pq.ParquetFile(storage.readable(self.ctx.work / "components.parquet")).read()
        lo_at, hi_at = np.searchsorted(everything["doc"].to_numpy(), [lo, hi])  # sorted by doc
        mine = everything.slice(lo_at, hi_at - lo_at)
        del everything
        docs = mine["doc"].to_numpy()
        found: list[pa.Table] = []
        if len(docs):
            rows = docs - base
            offset = part.first_row
            batches = iter_batches(
                shard_path, [ID_COLUMN, p.text_column], batch_rows=SIGNATURE_BATCH_ROWS, part=part
            )
            for batch in batches:
                start, end = np.searchsorted(rows, [offset, offset + batch.num_rows])
                if end > start:
                    at = pa.array(rows[start:end] - offset)
                    found.append(
                        pa.table(
                            {
                                "id": batch.column(ID_COLUMN).take(at),
                                "data": self._compared(batch.column(p.text_column).take(at)),
                            }
                        )
                    )
                offset += batch.num_rows
                if end == len(rows):
                    break
            if p.verify == "estimate":
                signature = self._signatures_of(docs, task.args["task"])
                found = [pa.table({"id": pa.concat_tables(found)["id"], "data": signature})]
        gathered = (
            pa.concat_tables(found)
            if found
            else pa.table({"id": pa.array([], pa.string()), "data": pa.array([], pa.binary())})
        )
        table = pa.table(
            {
                "bucket": mine["bucket"],
                "keeper": mine["keeper"],
                "preference": mine["preference"],
                "doc": mine["doc"],
                "id": gathered["id"],
                "data": gathered["data"],
            },
            schema=GATHER_SCHEMA,
        ).sort_by([("bucket", "ascending"), ("doc", "ascending")])
        # A row group per verify bucket, so each verify task reads only its own.
        bucket = table["bucket"].to_numpy()
        bounds = np.searchsorted(bucket, np.arange(self.verify_buckets() + 1))
        with ShardWriter(self._work("gather", part.name(shard_path.name)), GATHER_SCHEMA) as writer:
            for b in range(len(bounds) - 1):
                if bounds[b + 1] > bounds[b]:
                    writer.write(table.slice(bounds[b], bounds[b + 1] - bounds[b]))
            tc.record(writer.close())
        return TaskResult(extra={"gathered": table.num_rows})

    def _compared(self, texts: pa.Array) -> pa.Array:
        """The exact shingle sets of `texts`, as binary (sorted distinct uint32); empty without --verify."""
        if self.params.verify in ("none", "estimate"):
            return pa.array([b""] * len(texts), pa.binary())
        sets = shingle_sets(texts, self._shingling)
        lengths = np.array([len(x) * 4 for x in sets], np.int32)
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
        data = np.concatenate(sets) if sets else np.zeros(0, np.uint32)
        return pa.BinaryArray.from_buffers(
            pa.binary(), len(sets), [None, pa.py_buffer(offsets), pa.py_buffer(data)]
        )

    def _signatures_of(self, docs: np.ndarray, task_index: int) -> pa.Array:
        """Signatures of `docs` (ascending) from the meta file of signatures task `task_index`."""
        path = self._signature_files("meta")[task_index]
        table = pq.ParquetFile(storage.readable(path)).read(columns=["doc", "signature"])
        at = np.searchsorted(table["doc"].to_numpy(), docs)
        return table["signature"].take(pa.array(at)).cast(pa.binary())

    # -- phase 5 -------------------------------------------------------------------------------------------
    def _verify_bucket(self, task: TaskSpec, tc: TaskContext) -> TaskResult:
        bucket = task.args["bucket"]
        files = phase_outputs(self.ctx.output, "gather")
        parts = [_row_groups_where(f, "bucket", bucket) for f in files]
        table = pa.concat_tables(parts) if parts else GATHER_SCHEMA.empty_table()
        del parts
        table = table.sort_by([("keeper", "ascending"), ("preference", "ascending"), ("doc", "ascending")])
        n = table.num_rows
        nodes = table["doc"].to_numpy()
        keepers = table["keeper"].to_numpy()
        labels = np.concatenate([[0], np.cumsum(keepers[1:] != keepers[:-1])]) if n else np.zeros(0, np.int64)
        order = np.arange(n)
        keeper = np.searchsorted(labels, labels)  # first position of each node's component
        head, comparisons = self._verify(
            table["data"].combine_chunks() if n else pa.array([], pa.binary()), labels, order, keeper
        )
        rejected = int(np.count_nonzero((head == np.arange(n)) & (keeper != np.arange(n))))
        duplicate = head != np.arange(n)
        # A kept document is in a cluster only if at least one member still points at it.
        clustered_keepers = np.unique(head[duplicate])
        in_cluster = duplicate.copy()
        in_cluster[clustered_keepers] = True
        idx = np.nonzero(in_cluster)[0]
        ids = table["id"].combine_chunks() if n else pa.array([], pa.string())
        keeper_ids = ids.take(pa.array(head[idx], pa.int64()))
        decided = pa.table(
            {
                "shard": (nodes[idx] >> ROW_BITS).astype(np.int32),
                "row": nodes[idx] & ((1 << ROW_BITS) - 1),
                "cluster": keeper_ids,
                "dup_of": pc.if_else(pa.array(duplicate[idx]), keeper_ids, pa.scalar(None, pa.string())),
            },
            schema=CLUSTER_SCHEMA,
        ).sort_by([("shard", "ascending"), ("row", "ascending")])
        with ShardWriter(self._work("verify", f"{task.key}.parquet"), CLUSTER_SCHEMA) as writer:
            writer.write(decided)
            tc.record(writer.close())
        return TaskResult(
            extra={
                "clusters": len(clustered_keepers),
                "duplicates": int(np.count_nonzero(duplicate)),
                "verified_pairs": comparisons,
                "verify_rejected": rejected,
            }
        )

    def _verify(
        self, data: pa.BinaryArray, labels: np.ndarray, order: np.ndarray, keeper: np.ndarray
    ) -> tuple[np.ndarray, int]:
        """(head of every node, comparisons made): see verify_clusters."""
        p = self.params
        if p.verify == "none" or len(labels) == 0:
            return keeper, 0
        # Zero-copy views of each node's bytes in the one data buffer.
        offsets = np.frombuffer(data.buffers()[1], np.int32)[data.offset : data.offset + len(data) + 1]
        raw = (
            np.frombuffer(data.buffers()[2], np.uint8)
            if data.buffers()[2] is not None
            else np.zeros(0, np.uint8)
        )
        if p.verify == "estimate":
            sigs = raw.view(np.uint32)
            first = offsets[:-1] // 4

            def similarity(i: int, j: int) -> float:
                a = sigs[first[i] : first[i] + p.num_perm]
                b = sigs[first[j] : first[j] + p.num_perm]
                return float(np.count_nonzero(a == b)) / p.num_perm

        else:
            words = raw.view(np.uint32)
            bounds = offsets // 4

            def similarity(i: int, j: int) -> float:
                return jaccard(words[bounds[i] : bounds[i + 1]], words[bounds[j] : bounds[j + 1]])

        return verify_clusters(
            order,
            labels,
            similarity,
            p.threshold,
            any_member=p.verify == "exact-any",
            split=p.verify != "estimate",
            max_clusters=MAX_CLUSTERS_TRIED,
        )

    # -- phase 6 -------------------------------------------------------------------------------------------
    def _filter(self, task: TaskSpec, tc: TaskContext) -> TaskResult:
        shard = task.args["shard"]
        found = []
        for f in phase_outputs(self.ctx.output, "verify"):
            table = pq.ParquetFile(storage.readable(f)).read()
            lo, hi = np.searchsorted(table["shard"].to_numpy(), [shard, shard + 1])  # sorted by shard
            found.append(table.slice(lo, hi - lo))
        decided = (pa.concat_tables(found) if found else CLUSTER_SCHEMA.empty_table()).sort_by("row")
        clustered_rows = decided["row"].to_numpy()
        clusters, dup_of = decided["cluster"], decided["dup_of"]
        tag = self.params.mode == "tag"

        def mark(batch: pa.RecordBatch, offset: int) -> BatchOutcome:
            rows = np.arange(offset, offset + batch.num_rows)
            hit = np.isin(rows, clustered_rows, assume_unique=True)
            at = pa.array(
                np.minimum(np.searchsorted(clustered_rows, rows), max(len(clustered_rows) - 1, 0)),
                pa.int64(),
                mask=~hit,
            )
            cluster = clusters.take(at) if len(clustered_rows) else pa.nulls(batch.num_rows, pa.string())
            dup = (
                pc.fill_null(pc.is_valid(dup_of.take(at)), False)
                if len(clustered_rows)
                else pa.array(np.zeros(batch.num_rows, bool))
            )
            table = pa.Table.from_batches([batch]).append_column(CLUSTER_COLUMN, cluster)
            if tag:
                table = table.append_column(DUPLICATE_COLUMN, dup)
                return BatchOutcome(table, None, {f"{WOULD_DROP}.{REASON}": int(pc.sum(dup).as_py() or 0)})
            if not pc.any(dup).as_py():
                return BatchOutcome(table)
            dropped = dropped_table(
                table[ID_COLUMN].filter(dup), self.name, REASON, dup_of.take(at).filter(dup)
            )
            return BatchOutcome(table.filter(pc.invert(dup)), dropped)

        return map_batches(storage.location(task.inputs[0]), tc, mark, writes_dropped=not tag)

    def summarize(self, records: list[TaskRecord]) -> dict[str, Any]:
        bands, rows = self.lsh_shape()
        components = next((r.extra for r in records if r.phase == "components"), {})
        verified = ("clusters", "duplicates", "verified_pairs", "verify_rejected")
        clusters = {
            "candidate_pairs": components.get("candidate_pairs", 0),
            **{k: sum(r.extra.get(k, 0) for r in records if r.phase == "verify") for k in verified},
        }
        without = sum(r.extra.get("without_shingles", 0) for r in records if r.phase == "signatures")
        summary: dict[str, Any] = {
            "bands": bands,
            "rows": rows,
            "s_curve": {
                f"{s:.2f}": round(minhash.candidate_probability(s, bands, rows), 6)
                for s in np.linspace(0.1, 1.0, 19)
            },
            "documents_without_shingles": without,
            **clusters,
        }
        if self.params.mode == "tag":
            summary["mode"] = "tag"
            summary["would_drop"] = {REASON: self.counted(WOULD_DROP).get(REASON, 0)}
        return summary
