"""Heuristic filters: drop documents that trip cheap, named rules (Gopher, C4-style, blocklists).

A map stage: every shard is streamed in batches, each rule measures the whole batch at once, and a dropped
document's `_dropped/` row names the first rule it tripped (in catalogue order) with the measured figure.
The manifest counts drops per rule, and also how many documents tripped each rule at all. Every rule, its
source (the Gopher or the C4 paper) and its default threshold are listed in `rules.py`.

With `--c4-lines` the stage first rewrites documents the way C4 did (offending lines removed, see
`rules.c4_clean_lines`), drops those left with too few sentences under the reason `c4_lines`,
and runs the rules on what is left; the manifest counts the lines removed.

With `--mode tag` no document is dropped. Each active rule adds its measured figure as `h_<rule>` (a
number, or for the blocklists the entry matched; `gopher_top_ngram` and `gopher_dup_ngram` add one
column per n, `h_<rule>_<n>`; the two substring rules have no figure) and `h_<rule>_pass`, and `h_reason`
names the rule drop mode would have dropped the document under (null: it passes), so
`thresher filter --where "h_reason is null"` keeps what drop mode keeps and
`--where "h_gopher_word_count >= 30 and h_c4_curly_bracket_pass"` tries other limits. `--c4-lines`
cleans the text in both modes; tag mode adds `h_c4_lines` (sentences left) and `h_c4_lines_pass`.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa
from pydantic import Field, field_validator, model_validator

from thresher.pipelines.engine import storage
from thresher.pipelines.engine.errors import UsageError
from thresher.pipelines.engine.manifest import TaskRecord
from thresher.pipelines.engine.mapping import BatchOutcome, MapStage
from thresher.pipelines.engine.stage import PhaseSpec, StageParams, TaskSpec
from thresher.pipelines.engine.tagging import WOULD_DROP, FilterMode, mode_field, would_drop_counts
from thresher.pipelines.stages.heuristics.rules import (
    DEFAULT_RULES,
    RULE_NAMES,
    Blocklists,
    CleanedLines,
    Figure,
    RuleOutcome,
    c4_clean_lines,
    expand_rules,
    rule,
)
from thresher.pipelines.stages.heuristics.text_views import TextBatch

TAG_PREFIX = "h_"
REASON_COLUMN = "h_reason"


def _ngram_limits(values: list[str], smallest: int, option: str) -> list[tuple[int, float]]:
    limits = []
    for item in values:
        n, sep, limit = item.partition(":")
        try:
            parsed = (int(n), float(limit))
        except ValueError:
            raise ValueError(f"{option}: expected N:FRACTION items like 2:0.2, got {item!r}") from None
        if not sep or parsed[0] < smallest or not 0 <= parsed[1] <= 1:
            raise ValueError(f"{option}: {item!r} needs N >= {smallest} and a fraction in 0..1")
        limits.append(parsed)
    return sorted(limits)


class HeuristicsParams(StageParams):
    text_column: str = Field("text", description="Column holding the text.")
    rules: list[str] = Field(
        list(DEFAULT_RULES),
        description="Rules to apply: the groups gopher and c4, and/or rule names ("
        + ", ".join(RULE_NAMES)
        + "). The blocklist rules are added when their files are given.",
    )
    min_words: int = Field(50, ge=0, description="gopher_word_count: fewest words.")
    max_words: int = Field(100_000, ge=1, description="gopher_word_count: most words.")
    min_mean_word_length: float = Field(3.0, ge=0, description="gopher_mean_word_length: lower bound.")
    max_mean_word_length: float = Field(10.0, ge=0, description="gopher_mean_word_length: upper bound.")
    max_symbol_word_ratio: float = Field(
        0.1,
        ge=0,
        description="gopher_hash_ratio, gopher_ellipsis_ratio: most '#' per word, and most ellipses per word"
        " ('...' or '\u2026'), each.",
    )
    max_bullet_lines: float = Field(0.9, ge=0, le=1, description="gopher_bullet_lines: most bulleted lines.")
    max_ellipsis_lines: float = Field(
        0.3, ge=0, le=1, description="gopher_ellipsis_lines: most lines ending in an ellipsis."
    )
    min_alpha_words: float = Field(
        0.8, ge=0, le=1, description="gopher_alpha_words: fewest words with a letter (share)."
    )
    min_stop_words: int = Field(
        2, ge=0, description="gopher_stop_words: fewest distinct stop words (of the language's eight)."
    )
    stop_words_lang: Literal["en", "de", "fr", "es", "it", "pt", "nl", "none"] = Field(
        "en",
        description="gopher_stop_words: whose stop words to count (en: Gopher's eight); none turns the "
        "rule off.",
    )
    max_dup_lines: float = Field(0.3, ge=0, le=1, description="gopher_dup_lines: most repeated lines.")
    max_dup_line_chars: float = Field(
        0.2, ge=0, le=1, description="gopher_dup_line_chars: most characters in repeated lines."
    )
    max_dup_paragraphs: float = Field(
        0.3, ge=0, le=1, description="gopher_dup_paragraphs: most repeated paragraphs."
    )
    max_dup_paragraph_chars: float = Field(
        0.2, ge=0, le=1, description="gopher_dup_paragraph_chars: most characters in repeated paragraphs."
    )
    top_ngram: list[str] = Field(
        ["2:0.2", "3:0.18", "4:0.16"],
        description="gopher_top_ngram: N:FRACTION, most characters in the most repeated word N-gram.",
    )
    dup_ngram: list[str] = Field(
        ["5:0.15", "6:0.14", "7:0.13", "8:0.12", "9:0.11", "10:0.1"],
        description="gopher_dup_ngram: N:FRACTION, most characters covered by repeated word N-grams.",
    )
    min_terminal_punct_lines: float = Field(
        0.1,
        ge=0,
        le=1,
        description="c4_terminal_punct: fewest lines ending in . ! ?, a closing quote, an ellipsis or a CJK"
        " full stop (share).",
    )
    max_javascript_cookie_lines: float = Field(
        0.1, ge=0, le=1, description="c4_javascript_cookie: most lines about javascript/cookies/policies."
    )
    c4_lines: bool = Field(
        False,
        description="Clean lines as C4 did before the rules run: remove lines without terminal punctuation"
        " (or ending in '...'), shorter than --c4-min-line-words, or about javascript/cookies/policies;"
        " then drop documents left with fewer than --c4-min-sentences sentences (reason c4_lines).",
    )
    c4_min_line_words: int = Field(5, ge=0, description="--c4-lines: fewest words a kept line has.")
    c4_min_sentences: int = Field(
        3, ge=0, description="--c4-lines: fewest sentences a document keeps after line cleaning."
    )
    word_blocklist: list[str] = Field(
        [], description="Files of blocked words or phrases, one per line ('#' comments); case-insensitive."
    )
    url_blocklist: list[str] = Field(
        [], description="Files of blocked domains, one per line; subdomains are blocked too."
    )
    url_column: str = Field("url", description="Column holding the URL, for --url-blocklist.")
    mode: FilterMode = mode_field("h_<rule> (the figure), h_<rule>_pass and h_reason (the first rule failed)")

    @field_validator("rules")
    @classmethod
    def _known_rules(cls, value: list[str]) -> list[str]:
        expand_rules(value)
        return value

    @field_validator("top_ngram")
    @classmethod
    def _top_ngram(cls, value: list[str]) -> list[str]:
        _ngram_limits(value, 1, "--top-ngram")
        return value

    @field_validator("dup_ngram")
    @classmethod
    def _dup_ngram(cls, value: list[str]) -> list[str]:
        _ngram_limits(value, 1, "--dup-ngram")
        return value

    @model_validator(mode="after")
    def _bounds(self) -> HeuristicsParams:
        if self.min_words > self.max_words:
            raise ValueError("--min-words is above --max-words")
        if self.min_mean_word_length > self.max_mean_word_length:
            raise ValueError("--min-mean-word-length is above --max-mean-word-length")
        return self

    def top_ngram_limits(self) -> list[tuple[int, float]]:
        return _ngram_limits(self.top_ngram, 1, "--top-ngram")

    def dup_ngram_limits(self) -> list[tuple[int, float]]:
        return _ngram_limits(self.dup_ngram, 1, "--dup-ngram")

    def active_rules(self) -> tuple[str, ...]:
        names = set(expand_rules(self.rules))
        if self.stop_words_lang == "none":
            if "gopher_stop_words" in self.rules:
                raise UsageError("--rules gopher_stop_words and --stop-words-lang none contradict each other")
            names.discard("gopher_stop_words")
        for name, files in (("word_blocklist", self.word_blocklist), ("url_blocklist", self.url_blocklist)):
            if files:
                names.add(name)
            elif name in names:
                raise UsageError(f"rule {name} needs --{name.replace('_', '-')} FILE")
        return tuple(n for n in RULE_NAMES if n in names)


class Heuristics(MapStage[HeuristicsParams]):
    name = "heuristics"
    summary = "Drop documents that trip heuristic rules (Gopher quality/repetition, C4-style, blocklists)."
    example = "thresher heuristics data/01-exact data/02-heuristics --rules gopher,c4 --min-words 30"
    command = ("heuristics",)
    phase_name = "filter"
    checker: HeuristicChecker  # per task: its blocklists come from the task's args

    def _url_column(self) -> list[str]:
        return [self.params.url_column] if self.params.url_blocklist else []

    def required_columns(self) -> list[str]:
        return [*super().required_columns(), *self._url_column()]

    def string_columns(self) -> list[str]:
        return [*super().string_columns(), *self._url_column()]

    def side_inputs(self) -> list[Path]:
        self.params.active_rules()  # a rule asked for without its file fails here, before any work
        files = [storage.location(f) for f in (*self.params.word_blocklist, *self.params.url_blocklist)]
        for f in files:
            if not f.is_file():
                raise UsageError(f"{f}: blocklist file does not exist")
        return files

    def writes_dropped(self) -> bool:
        return self.params.mode == "drop"

    def phases(self) -> list[PhaseSpec]:
        self.side_inputs()
        if self.params.mode == "tag":
            self._check_tag_columns()
        return super().phases()

    def _check_tag_columns(self) -> None:
        # Tag columns are named by rule, and the n-gram rules add a suffix per n: any input column under
        # a rule's prefix could be overwritten.
        assert self.ctx.input is not None
        rules = ["c4_lines", *self.params.active_rules()]
        for shard in self.ctx.input.shards:
            for column in shard.schema.names if shard.schema is not None else []:
                if column == REASON_COLUMN or any(column.startswith(TAG_PREFIX + r) for r in rules):
                    raise UsageError(
                        f"{shard.path}: already has column '{column}'; --mode tag would overwrite it"
                    )

    def task_args(self) -> dict[str, Any]:
        # Absolute paths: a task may run from another directory (a Slurm array task). The files' digests
        # are side inputs, so replacing one reruns every task.
        return {
            "word_blocklist": [str(storage.location(f).resolve()) for f in self.params.word_blocklist],
            "url_blocklist": [str(storage.location(f).resolve()) for f in self.params.url_blocklist],
        }

    def start_task(self, task: TaskSpec) -> None:
        self.checker = HeuristicChecker(
            self.params, Blocklists.load(task.args["word_blocklist"], task.args["url_blocklist"])
        )

    def map_batch(self, batch: pa.RecordBatch, offset: int) -> BatchOutcome:
        p, checker = self.params, self.checker
        urls = batch.column(p.url_column) if p.url_blocklist else None
        short: dict[int, str] = {}
        cleaned = None
        if p.c4_lines:
            index = batch.schema.get_field_index(p.text_column)
            cleaned, short = checker.clean(batch.column(index))
            batch = batch.set_column(index, batch.schema.field(index), cleaned.text)
        reasons, details, outcomes = checker.measure(TextBatch(batch.column(p.text_column), urls), short)
        if p.mode == "drop":
            drop = [r is not None for r in reasons]
            return BatchOutcome.drop_rows(batch, drop, reasons, details, checker.take_counts())
        if cleaned is not None:
            passed = cleaned.sentences >= p.c4_min_sentences
            outcomes = {"c4_lines": RuleOutcome(~passed, cleaned.sentences, ""), **outcomes}
        table = pa.Table.from_batches([batch])
        for name, values in tag_columns(outcomes, reasons).items():
            table = table.append_column(name, values)
        return BatchOutcome(table, None, {**checker.take_counts(), **would_drop_counts(reasons)})

    def summarize(self, records: list[TaskRecord]) -> dict[str, Any]:
        rules = list(self.params.active_rules())
        rules = ["c4_lines", *rules] if self.params.c4_lines else rules
        tripped = self.counted("tripped")
        summary: dict[str, Any] = {
            "rules": rules,
            "dropped_by_rule": {name: self.totals.dropped.get(name, 0) for name in rules},
            # A document can trip several rules; it is dropped under the first.
            "tripped_by_rule": {name: tripped.get(name, 0) for name in rules},
            "c4_lines": self.counted("c4_lines") if self.params.c4_lines else None,
        }
        if self.params.mode == "tag":
            would_drop = self.counted(WOULD_DROP)
            summary["mode"] = "tag"
            summary["would_drop_by_rule"] = {name: would_drop.get(name, 0) for name in rules}
        return summary


def _figure_column(values: Figure) -> pa.Array:
    if isinstance(values, list):
        return pa.array(values, pa.string())
    # One type per figure for every batch, whatever numpy made of it: counts as int64, shares as float64.
    kind = pa.int64() if np.issubdtype(values.dtype, np.integer) else pa.float64()
    return pa.array(values, kind)


def tag_columns(outcomes: dict[str, RuleOutcome], reasons: list[str | None]) -> dict[str, pa.Array]:
    """Tag mode's columns: per rule its figures and whether the document passes, then the first rule
    it fails."""
    columns: dict[str, pa.Array] = {}
    for name, outcome in outcomes.items():
        for suffix, values in outcome.tag_figures().items():
            columns[TAG_PREFIX + name + (f"_{suffix}" if suffix else "")] = _figure_column(values)
        columns[f"{TAG_PREFIX}{name}_pass"] = pa.array(~np.asarray(outcome.tripped, bool), pa.bool_())
    columns[REASON_COLUMN] = pa.array(reasons, pa.string())
    return columns


class HeuristicChecker:
    """Applies the active rules to batches and counts how often each one trips."""

    def __init__(self, params: HeuristicsParams, blocklists: Blocklists) -> None:
        self.params = params
        self.blocklists = blocklists
        self.rules = [rule(name) for name in params.active_rules()]
        self.tripped: Counter[str] = Counter({r.name: 0 for r in self.rules})
        self.line_counts: Counter[str] = Counter(lines_removed=0, documents_changed=0)
        self._taken: Counter[str] = Counter()

    def take_counts(self) -> dict[str, int]:
        """What was counted since the last call, as task counters (`tripped.<rule>`, `c4_lines.<what>`);
        every name appears, with 0 where nothing happened."""
        now = Counter({f"tripped.{k}": n for k, n in self.tripped.items()})
        if self.params.c4_lines:
            now.update({f"c4_lines.{k}": n for k, n in self.line_counts.items()})
        delta = {k: n - self._taken[k] for k, n in now.items()}
        self._taken = now
        return delta

    def clean_lines(self, texts: pa.Array | pa.ChunkedArray) -> tuple[pa.Array, dict[int, str]]:
        """The texts with C4's offending lines removed, and the documents left with too few sentences
        (row -> detail), which `check` drops under c4_lines before any rule."""
        cleaned, short = self.clean(texts)
        return cleaned.text, short

    def clean(self, texts: pa.Array | pa.ChunkedArray) -> tuple[CleanedLines, dict[int, str]]:
        """`clean_lines` with the whole outcome of the cleaning (sentences left, for tag mode)."""
        p = self.params
        cleaned = c4_clean_lines(texts, p.c4_min_line_words)
        self.line_counts["lines_removed"] += int(cleaned.lines_removed.sum())
        self.line_counts["documents_changed"] += int(cleaned.changed.sum())
        short = {
            int(i): f"{cleaned.sentences[i]} sentences left after removing {cleaned.lines_removed[i]} of "
            f"{cleaned.lines[i]} lines, < {p.c4_min_sentences}"
            for i in np.nonzero(cleaned.sentences < p.c4_min_sentences)[0]
        }
        self.tripped["c4_lines"] += len(short)
        return cleaned, short

    def check(
        self, tb: TextBatch, dropped_first: dict[int, str] | None = None
    ) -> tuple[list[str | None], list[str | None]]:
        """Per document: the first rule it trips (None if none) and that rule's detail. Rows in
        `dropped_first` (from `clean_lines`) are dropped under c4_lines whatever the rules say."""
        reasons, details, _ = self.measure(tb, dropped_first)
        return reasons, details

    def measure(
        self, tb: TextBatch, dropped_first: dict[int, str] | None = None
    ) -> tuple[list[str | None], list[str | None], dict[str, RuleOutcome]]:
        """`check`, and each rule's outcome by name."""
        outcomes: dict[str, RuleOutcome] = {}
        reasons: list[str | None] = [None] * tb.n
        details: list[str | None] = [None] * tb.n
        undecided = np.ones(tb.n, dtype=bool)
        for row, detail in (dropped_first or {}).items():
            reasons[row], details[row] = "c4_lines", detail
            undecided[row] = False
        for r in self.rules:
            outcome = r.measure(tb, self.params, self.blocklists)
            outcomes[r.name] = outcome
            self.tripped[r.name] += int(outcome.tripped.sum())
            for row in np.nonzero(outcome.tripped & undecided)[0]:
                reasons[row] = r.name
                details[row] = outcome.detail(int(row))
            undecided &= ~outcome.tripped
        return reasons, details, outcomes
