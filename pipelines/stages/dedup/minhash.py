"""MinHash LSH near-dedup that scales past memory.

Phases:
1. `signatures` (per shard, or per row-group part of a big shard, so a few big shards still use every
   core): MinHash each document; write its band keys, sorted by key within each band, and its signature
   (for --verify) to work files.
2. `buckets` (per band): k-way merge of that band's sorted runs from all shards; documents sharing a key
   become candidate pairs. Nothing holds a whole band in memory.
3. `clusters` (one task): connected components over candidate pairs only, so memory follows the number
   of duplicates, not the corpus; pick each cluster's keeper; verify members against it (--verify exact:
   exact Jaccard of shingle sets recomputed for the clustered documents only; exact-any: against any member
   of its cluster; estimate: from the signatures). A member below the threshold is kept (LSH false positives
   and chains of candidates).
4. `filter` (per shard): drop clustered non-keepers (naming their keeper) and add `minhash_cluster`.
Documents are ordered by (shard file name, row), which makes every choice independent of scheduling.
Phases 2-4 list the index of the phases they read, not their files: the plan stays O(shards + bands).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pydantic import Field, model_validator

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
from thresher.pipelines.stages.dedup import signatures as minhash
from thresher.pipelines.stages.dedup.lsh_merge import (
    BAND_SCHEMA,
    PAIR_SCHEMA,
    band_runs,
    merged_groups,
    star_edges,
)
from thresher.pipelines.stages.dedup.verify import VerifyMode, jaccard, shingle_sets, verify_clusters

REASON = "near_duplicate"
CLUSTER_COLUMN = "minhash_cluster"
ROW_BITS = 40  # doc = shard << 40 | row: a trillion rows per shard, 8 million shards
CLUSTER_SCHEMA = pa.schema(
    [("shard", pa.int32()), ("row", pa.int64()), ("cluster", pa.string()), ("dup_of", pa.string())]
)


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
    version = "2"
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
        bands, rows = self.lsh_shape()
        signatures, buckets, clusters = (
            str(phase_index_path(self.ctx.output, name)) for name in ("signatures", "buckets", "clusters")
        )
        shape = {"bands": bands, "rows": rows}
        return [
            PhaseSpec(
                "signatures",
                [
                    TaskSpec(
                        part.name(s.name),
                        (str(s.path),),
                        {"shard": i, **shape, **part.args()},
                        part.rows,
                    )
                    for i, (s, parts) in enumerate(zip(shards, shard_parts(shards), strict=True))
                    for part in parts
                ],
            ),
            PhaseSpec(
                "buckets", [TaskSpec(f"band-{b:04d}", (signatures,), {"band": b}) for b in range(bands)]
            ),
            PhaseSpec("clusters", [TaskSpec("clusters", (buckets, signatures), shape)]),
            PhaseSpec(
                "filter",
                [
                    TaskSpec(s.name, (str(s.path), clusters), {"shard": i}, s.num_rows)
                    for i, s in enumerate(shards)
                ],
            ),
        ]

    def _signature_files(self, kind: str) -> list[Path]:
        """The `kind` ("bands" or "meta") work files every signatures task wrote, in shard order."""
        return [p for p in phase_outputs(self.ctx.output, "signatures") if p.parent.name == kind]

    def run_task(self, phase: str, task: TaskSpec, tc: TaskContext) -> TaskResult:
        if phase not in ("signatures", "buckets", "clusters", "filter"):
            raise RuntimeError(f"stage {self.name} has no phase '{phase}'")
        result: TaskResult = getattr(self, "_" + phase)(task, tc)
        return result

    # -- phase 1 -------------------------------------------------------------------------------------------
    def _signatures(self, task: TaskSpec, tc: TaskContext) -> TaskResult:
        p = self.params
        shard, bands, rows = task.args["shard"], task.args["bands"], task.args["rows"]
        part = ShardPart.from_args(task.args, task.rows)
        shard_path = Path(task.inputs[0])
        name = part.name(shard_path.name)
        meta_schema = pa.schema(
            [
                ("doc", pa.int64()),
                ("id", pa.string()),
                ("length", pa.int64()),
                ("signature", pa.binary(4 * p.num_perm)),
            ]
        )
        meta = ShardWriter(self._work("meta", name), meta_schema)
        keys_parts, docs_parts = [], []
        offset, empty = part.first_row, 0
        try:
            for batch in iter_batches(shard_path, [ID_COLUMN, p.text_column], part=part):
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
                meta.write(
                    pa.table(
                        {
                            "doc": docs,
                            "id": batch.column(ID_COLUMN).take(pa.array(rows_here)),
                            "length": lengths[rows_here].astype(np.int64),
                            "signature": pa.array(
                                [s.tobytes() for s in sig[rows_here]], pa.binary(4 * p.num_perm)
                            ),
                        },
                        schema=meta_schema,
                    )
                )
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
    def _clusters(self, task: TaskSpec, tc: TaskContext) -> TaskResult:
        from scipy.sparse import coo_matrix
        from scipy.sparse.csgraph import connected_components

        pairs = [pq.read_table(f) for f in phase_outputs(self.ctx.output, "buckets")]
        doc = np.concatenate([t["doc"].to_numpy() for t in pairs]) if pairs else np.zeros(0, np.int64)
        other = np.concatenate([t["other"].to_numpy() for t in pairs]) if pairs else np.zeros(0, np.int64)
        nodes = np.unique(np.concatenate([doc, other]))
        n = len(nodes)
        graph = coo_matrix(
            (np.ones(len(doc), np.int8), (np.searchsorted(nodes, doc), np.searchsorted(nodes, other))),
            shape=(n, n),
        )
        _, labels = connected_components(graph, directed=False)
        ids, lengths, sigs = self._node_meta(nodes, self._signature_files("meta"))

        # Keeper of each component: the first node in (label, preference, doc) order.
        preference = -lengths if self.params.keep == "longest" else np.zeros(n, np.int64)
        order = np.lexsort((nodes, preference, labels))
        is_first = (
            np.concatenate([[True], labels[order][1:] != labels[order][:-1]]) if n else np.zeros(0, bool)
        )
        keeper_of_label = np.empty(labels.max() + 1 if n else 0, np.int64)
        keeper_of_label[labels[order][is_first]] = order[is_first]
        keeper = keeper_of_label[labels]

        head, comparisons = self._verify(nodes, labels, order, keeper, sigs)
        rejected = int(np.count_nonzero((head == np.arange(n)) & (keeper != np.arange(n))))
        duplicate = head != np.arange(n)
        # A kept document is in a cluster only if at least one member still points at it.
        clustered_keepers = np.unique(head[duplicate])
        in_cluster = duplicate.copy()
        in_cluster[clustered_keepers] = True
        idx = np.nonzero(in_cluster)[0]
        keeper_ids = ids.take(pa.array(head[idx]))
        table = pa.table(
            {
                "shard": (nodes[idx] >> ROW_BITS).astype(np.int32),
                "row": nodes[idx] & ((1 << ROW_BITS) - 1),
                "cluster": keeper_ids,
                "dup_of": pc.if_else(pa.array(duplicate[idx]), keeper_ids, pa.scalar(None, pa.string())),
            },
            schema=CLUSTER_SCHEMA,
        )
        with ShardWriter(self.ctx.work / "clusters.parquet", CLUSTER_SCHEMA) as writer:
            writer.write(table)
            tc.record(writer.close())
        return TaskResult(
            extra={
                "candidate_pairs": len(doc),
                "clusters": len(clustered_keepers),
                "duplicates": int(np.count_nonzero(duplicate)),
                "verified_pairs": comparisons,
                "verify_rejected": rejected,
            }
        )

    def _verify(
        self, nodes: np.ndarray, labels: np.ndarray, order: np.ndarray, keeper: np.ndarray, sigs: np.ndarray
    ) -> tuple[np.ndarray, int]:
        """(head of every node, comparisons made): see verify_clusters."""
        p = self.params
        if p.verify == "none" or len(nodes) == 0:
            return keeper, 0
        if p.verify == "estimate":

            def similarity(i: int, j: int) -> float:
                return float(np.count_nonzero(sigs[i] == sigs[j])) / p.num_perm

        else:
            sets = self._node_shingles(nodes)

            def similarity(i: int, j: int) -> float:
                return jaccard(sets[i], sets[j])

        return verify_clusters(
            order,
            labels,
            similarity,
            p.threshold,
            any_member=p.verify == "exact-any",
            split=p.verify != "estimate",
        )

    def _node_shingles(self, nodes: np.ndarray) -> list[np.ndarray]:
        """Shingle sets of the candidate documents only, read batch by batch from their input shards: memory
        follows the clustered documents, not the corpus."""
        assert self.ctx.input is not None
        shards = self.ctx.input.shards
        sets: list[np.ndarray] = [np.zeros(0, np.uint32)] * len(nodes)
        shard_of = nodes >> ROW_BITS
        for shard in np.unique(shard_of).tolist():
            lo, hi = np.searchsorted(shard_of, [shard, shard + 1])
            wanted = nodes[lo:hi] & ((1 << ROW_BITS) - 1)
            offset = 0
            for batch in iter_batches(shards[shard].path, [self.params.text_column]):
                start, end = np.searchsorted(wanted, [offset, offset + batch.num_rows])
                if end > start:
                    rows = pa.array(wanted[start:end] - offset)
                    texts = batch.column(0).take(rows)
                    for i, found in enumerate(shingle_sets(texts, self._shingling)):
                        sets[lo + start + i] = found
                offset += batch.num_rows
                if end == len(wanted):
                    break
        return sets

    def _node_meta(
        self, nodes: np.ndarray, meta_files: list[Path]
    ) -> tuple[pa.Array, np.ndarray, np.ndarray]:
        """ids, text lengths and signatures of the candidate documents only, read file by file."""
        n, num_perm = len(nodes), self.params.num_perm
        ids: list[Any] = [None] * n
        lengths = np.zeros(n, np.int64)
        sigs = np.zeros((n, num_perm), np.uint32)
        for path in meta_files:
            pf = pq.ParquetFile(path)
            if pf.metadata.num_rows == 0:
                continue
            # A file's docs ascend, so its first and last doc bound the candidates it can hold.
            first = pf.read_row_group(0, columns=["doc"])["doc"][0].as_py()
            last = pf.read_row_group(pf.metadata.num_row_groups - 1, columns=["doc"])["doc"][-1].as_py()
            lo, hi = np.searchsorted(nodes, [first, last + 1])
            if lo == hi:
                continue
            wanted = nodes[lo:hi]
            for batch in iter_batches(path):
                docs = batch.column("doc").to_numpy()
                hit = np.isin(docs, wanted, assume_unique=True)
                if not hit.any():
                    continue
                at = lo + np.searchsorted(wanted, docs[hit])
                mask = pa.array(hit)
                for i, value in zip(at, batch.column("id").filter(mask).to_pylist(), strict=True):
                    ids[i] = value
                lengths[at] = batch.column("length").filter(mask).to_numpy()
                raw = b"".join(batch.column("signature").filter(mask).to_pylist())
                sigs[at] = np.frombuffer(raw, np.uint32).reshape(-1, num_perm)
        return pa.array(ids, pa.string()), lengths, sigs

    # -- phase 4 -------------------------------------------------------------------------------------------
    def _filter(self, task: TaskSpec, tc: TaskContext) -> TaskResult:
        clusters_file = self.ctx.work / "clusters.parquet"
        decided = pq.read_table(clusters_file, filters=[("shard", "=", task.args["shard"])]).sort_by("row")
        clustered_rows = decided["row"].to_numpy()
        clusters, dup_of = decided["cluster"], decided["dup_of"]

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
            if not pc.any(dup).as_py():
                return BatchOutcome(table)
            dropped = dropped_table(
                table[ID_COLUMN].filter(dup), self.name, REASON, dup_of.take(at).filter(dup)
            )
            return BatchOutcome(table.filter(pc.invert(dup)), dropped)

        return map_batches(Path(task.inputs[0]), tc, mark, writes_dropped=True)

    def summarize(self, records: list[TaskRecord]) -> dict[str, Any]:
        bands, rows = self.lsh_shape()
        clusters = next((r.extra for r in records if r.phase == "clusters"), {})
        without = sum(r.extra.get("without_shingles", 0) for r in records if r.phase == "signatures")
        return {
            "bands": bands,
            "rows": rows,
            "s_curve": {
                f"{s:.2f}": round(minhash.candidate_probability(s, bands, rows), 6)
                for s in np.linspace(0.1, 1.0, 19)
            },
            "documents_without_shingles": without,
            **clusters,
        }
