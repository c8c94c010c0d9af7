"""The heuristic document rules: Gopher quality and repetition rules, C4-style rules, blocklists.

Each rule measures one figure per document over a whole batch (vectorised, see `text_views`) and says
which documents trip it. Thresholds default to the values of the Gopher paper (Rae et al. 2021, appendix
A.1.1: the quality filters in its text, the repetition limits in its Table A1) and the C4 paper (Raffel et
al. 2020, section 2.2), adapted to document level: C4 removed offending lines, here a document is dropped
when too many of its lines offend. `c4_clean_lines` does what C4 did instead: it removes those lines and
the stage drops documents left with too few sentences (`--c4-lines`).

Words are split on whitespace; "normalised" words are lowercased with punctuation trimmed from both ends
(see `text_views`). Lines and paragraphs are counted stripped, blank ones left out. The rules, in the
order a document's drop reason is chosen, and when each drops a document at its default threshold (every
threshold is an option of the stage):

Gopher quality filters (appendix A.1.1)
  gopher_word_count           fewer than 50 or more than 100,000 words
  gopher_mean_word_length     mean normalised word length outside 3..10 characters
  gopher_hash_ratio           more than 0.1 '#' per word
  gopher_ellipsis_ratio       more than 0.1 ellipses ('...' or U+2026) per word
  gopher_bullet_lines         more than 90% of lines start with a bullet or dash
  gopher_ellipsis_lines       more than 30% of lines end in an ellipsis
  gopher_alpha_words          fewer than 80% of words contain a letter
  gopher_stop_words           fewer than 2 distinct words of: the, be, to, of, and, that, have, with
                              (normalised words, so case does not matter); `--stop-words-lang` picks
                              another language's eight (`STOP_WORDS`), `none` turns the rule off
Gopher repetition filters (Table A1)
  gopher_dup_lines            more than 30% of lines repeat an earlier line
  gopher_dup_line_chars       more than 20% of characters are in repeated lines
  gopher_dup_paragraphs       more than 30% of paragraphs repeat an earlier paragraph
  gopher_dup_paragraph_chars  more than 20% of characters are in repeated paragraphs
  gopher_top_ngram            the most repeated word 2-, 3-, 4-gram covers more than 20%, 18%, 16% of
                              the characters of the normalised words
  gopher_dup_ngram            repeated word 5- .. 10-grams cover more than 15%, 14%, 13%, 12%, 11%, 10%
C4 (section 2.2; the line rules are thresher's document-level reading, hence its own 10% limits)
  c4_lines                    with `--c4-lines` only, before every other rule: fewer than 3 sentences
                              left once the lines C4 removed are gone (see `c4_clean_lines`; lines of
                              fewer than 5 words go)
  c4_terminal_punct           fewer than 10% of lines end in terminal punctuation: C4's . ! ? and ",
                              the closing quotes ' U+201D U+2019 U+00BB, the ellipsis U+2026, and the
                              CJK stops U+3002 U+FF01 U+FF1F; not ')'
  c4_lorem_ipsum              'lorem ipsum' occurs (any case)
  c4_curly_bracket            '{' occurs (code residue)
  c4_javascript_cookie        more than 10% of lines mention javascript, cookies or site policies
                              (`_JAVASCRIPT_COOKIE`)
Blocklists (only with their files)
  word_blocklist              a listed word or phrase occurs (whole words, any case)
  url_blocklist               the URL's host is a listed domain or one of its subdomains

The group names gopher, c4 and blocklist stand for their rules, and gopher_symbol_ratio for the hash
and ellipsis rules (one filter in the paper); gopher and c4 are on by default, with or without
`--c4-lines`. With `--c4-lines` the rules measure the cleaned text, so, as in C4's code, only a
brace or 'lorem ipsum' on a line the cleaning kept drops the page.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from thresher.pipelines.engine import storage
from thresher.pipelines.engine.errors import UsageError
from thresher.pipelines.stages.heuristics.text_views import Pieces, TextBatch
from thresher.pipelines.text.normalize import separator

if TYPE_CHECKING:
    from thresher.pipelines.stages.heuristics.stage import HeuristicsParams

# Gopher's stop words: a document of English prose uses at least two of them.
GOPHER_STOP_WORDS = ("the", "be", "to", "of", "and", "that", "have", "with")
# The same test for other languages: eight of each one's most frequent function words, chosen here (Gopher
# gives only English), so a page of German prose is not dropped for lacking English ones.
STOP_WORDS: dict[str, tuple[str, ...]] = {
    "en": GOPHER_STOP_WORDS,
    "de": ("der", "die", "das", "und", "zu", "von", "mit", "ist"),
    "fr": ("le", "la", "de", "et", "les", "des", "que", "est"),
    "es": ("el", "la", "de", "que", "y", "en", "los", "es"),
    "it": ("il", "di", "che", "e", "la", "per", "un", "non"),
    "pt": ("de", "que", "o", "a", "e", "do", "da", "em"),
    "nl": ("de", "het", "een", "en", "van", "is", "dat", "op"),
}
# Bullets, dashes (hyphen, en dash) and arrows that start list lines; escapes keep look-alikes readable.
_BULLET = "^[\u2022\u2023\u25e6\u25aa\u25cf\u25cb\u25a0\u25a1\u27a2\u25ba*\\-\u2013]"
_ELLIPSIS = r"(\.\.\.|…)$"
# What ends a line as terminal punctuation: C4's . ! ? and '"', the other closing quotes (' \u201d \u2019
# \u00bb), the ellipsis character, and the ideographic/fullwidth stops for CJK text. Not ')': C4 did not
# take a line ending in a bracket for a sentence, and menus and captions often do.
_TERMINAL = "[.!?\"'\u201d\u2019\u00bb\u2026\u3002\uff01\uff1f]$"
_JAVASCRIPT_COOKIE = (
    r"(?i)javascript|cookie policy|use of cookies|uses cookies|use cookies|accept (all )?cookies"
    r"|privacy policy|terms of (use|service)"
)
_URL_HOST = r"^[A-Za-z][A-Za-z0-9+.-]*://(?:[^@/?#]*@)?(?P<host>[^/:?#]+)"


Figure = np.ndarray | list[str | None]


@dataclass
class RuleOutcome:
    """Which documents trip a rule, the measured figure, and the limit it was held to (for `_dropped/`).
    `figures` are what tag mode writes as columns, by name suffix ("" for the rule's own column); by
    default the figure itself when it is a number."""

    tripped: np.ndarray
    value: np.ndarray | list[str]
    limit: str
    figures: dict[str, Figure] | None = None

    def detail(self, row: int) -> str:
        value = self.value[row]
        shown = value if isinstance(value, str) else f"{value:.4g}"
        return f"{shown} {self.limit}".strip()

    def tag_figures(self) -> dict[str, Figure]:
        if self.figures is not None:
            return self.figures
        return {"": self.value} if isinstance(self.value, np.ndarray) else {}


RuleFn = Callable[[TextBatch, "HeuristicsParams", "Blocklists"], RuleOutcome]


def _fraction(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """numerator / denominator, 0 where the denominator is 0 (an empty document offends no share rule)."""
    out = np.zeros(len(numerator), dtype=np.float64)
    np.divide(numerator, denominator, out=out, where=denominator > 0)
    return out


# ---------------------------------------------------------------------------------------------------------
# Gopher quality rules


def word_count(tb: TextBatch, p: HeuristicsParams, _: Blocklists) -> RuleOutcome:
    n = tb.n_words
    return RuleOutcome(
        (n < p.min_words) | (n > p.max_words), n, f"words, outside {p.min_words}..{p.max_words}"
    )


def mean_word_length(tb: TextBatch, p: HeuristicsParams, _: Blocklists) -> RuleOutcome:
    words = tb.normalised_words
    mean = _fraction(tb.normalised_chars, words.per_doc(None, tb.n))
    tripped = (mean < p.min_mean_word_length) | (mean > p.max_mean_word_length)
    return RuleOutcome(
        tripped, mean, f"chars/word, outside {p.min_mean_word_length:g}..{p.max_mean_word_length:g}"
    )


def hash_ratio(tb: TextBatch, p: HeuristicsParams, _: Blocklists) -> RuleOutcome:
    ratio = _fraction(tb.count("#").astype(np.float64), tb.n_words)
    return RuleOutcome(ratio > p.max_symbol_word_ratio, ratio, f"'#' per word > {p.max_symbol_word_ratio:g}")


def ellipsis_ratio(tb: TextBatch, p: HeuristicsParams, _: Blocklists) -> RuleOutcome:
    ellipses = tb.count("...") + tb.count("\u2026")
    ratio = _fraction(ellipses.astype(np.float64), tb.n_words)
    return RuleOutcome(
        ratio > p.max_symbol_word_ratio, ratio, f"ellipses per word > {p.max_symbol_word_ratio:g}"
    )


def bullet_lines(tb: TextBatch, p: HeuristicsParams, _: Blocklists) -> RuleOutcome:
    lines = tb.lines
    share = _fraction(lines.per_doc(lines.matches(_BULLET).astype(float), tb.n), lines.per_doc(None, tb.n))
    return RuleOutcome(share > p.max_bullet_lines, share, f"of lines bulleted > {p.max_bullet_lines:g}")


def ellipsis_lines(tb: TextBatch, p: HeuristicsParams, _: Blocklists) -> RuleOutcome:
    lines = tb.lines
    share = _fraction(lines.per_doc(lines.matches(_ELLIPSIS).astype(float), tb.n), lines.per_doc(None, tb.n))
    return RuleOutcome(
        share > p.max_ellipsis_lines, share, f"of lines end in '...' > {p.max_ellipsis_lines:g}"
    )


def alpha_words(tb: TextBatch, p: HeuristicsParams, _: Blocklists) -> RuleOutcome:
    words = tb.words
    share = _fraction(words.per_doc(words.matches(r"\pL").astype(float), tb.n), tb.n_words)
    return RuleOutcome(share < p.min_alpha_words, share, f"of words have a letter < {p.min_alpha_words:g}")


def stop_words(tb: TextBatch, p: HeuristicsParams, _: Blocklists) -> RuleOutcome:
    """Distinct stop words per document: Gopher asks for two of the eight, so one short word repeated
    (a Polish page's "to", navigation's "Jump to") is not English prose. The words are lowercased, which
    for these words is the same as case folding."""
    words = tb.normalised_words
    listed = STOP_WORDS[p.stop_words_lang]
    which = pc.fill_null(pc.index_in(words.values, pa.array(listed)), -1)
    which = which.to_numpy(zero_copy_only=False)
    hit = which >= 0
    # A document-by-stop-word table of "seen" marks: linear, where a unique over (doc, word) pairs sorts.
    seen = np.zeros((tb.n, len(listed)), dtype=bool)
    seen[words.doc[hit], which[hit]] = True
    distinct = seen.sum(axis=1)
    return RuleOutcome(distinct < p.min_stop_words, distinct, f"distinct stop words < {p.min_stop_words}")


# ---------------------------------------------------------------------------------------------------------
# Gopher repetition rules


def dup_lines(tb: TextBatch, p: HeuristicsParams, _: Blocklists) -> RuleOutcome:
    lines = tb.lines
    share = _fraction(lines.per_doc(lines.repeated.astype(float), tb.n), lines.per_doc(None, tb.n))
    return RuleOutcome(share > p.max_dup_lines, share, f"of lines repeated > {p.max_dup_lines:g}")


def dup_line_chars(tb: TextBatch, p: HeuristicsParams, _: Blocklists) -> RuleOutcome:
    lines = tb.lines
    chars = lines.per_doc(np.where(lines.repeated, lines.lengths, 0).astype(float), tb.n)
    share = _fraction(chars, tb.chars)
    return RuleOutcome(
        share > p.max_dup_line_chars, share, f"of chars in repeated lines > {p.max_dup_line_chars:g}"
    )


def dup_paragraphs(tb: TextBatch, p: HeuristicsParams, _: Blocklists) -> RuleOutcome:
    paras = tb.paragraphs
    share = _fraction(paras.per_doc(paras.repeated.astype(float), tb.n), paras.per_doc(None, tb.n))
    return RuleOutcome(
        share > p.max_dup_paragraphs, share, f"of paragraphs repeated > {p.max_dup_paragraphs:g}"
    )


def dup_paragraph_chars(tb: TextBatch, p: HeuristicsParams, _: Blocklists) -> RuleOutcome:
    paras = tb.paragraphs
    chars = paras.per_doc(np.where(paras.repeated, paras.lengths, 0).astype(float), tb.n)
    share = _fraction(chars, tb.chars)
    return RuleOutcome(
        share > p.max_dup_paragraph_chars,
        share,
        f"of chars in repeated paragraphs > {p.max_dup_paragraph_chars:g}",
    )


def top_ngram(tb: TextBatch, p: HeuristicsParams, _: Blocklists) -> RuleOutcome:
    """Share of characters in the most repeated word 2-, 3- and 4-gram."""
    tripped = np.zeros(tb.n, dtype=bool)
    worst = np.zeros(tb.n, dtype=np.float64)
    labels = [""] * tb.n
    figures: dict[str, Figure] = {}
    for n, limit in p.top_ngram_limits():
        share = _fraction(tb.ngram_runs(n).top_chars(tb.n), tb.normalised_chars)
        figures[str(n)] = share
        over = (share > limit) & ~tripped
        for row in np.nonzero(over)[0]:
            labels[row] = f"{n}-gram > {limit:g}"
        worst = np.where(over, share, worst)
        tripped |= over
    return _labelled(tripped, worst, labels, "of chars in the top", figures)


def dup_ngram(tb: TextBatch, p: HeuristicsParams, _: Blocklists) -> RuleOutcome:
    """Share of characters covered by repeated word n-grams, n = 5..10."""
    tripped = np.zeros(tb.n, dtype=bool)
    worst = np.zeros(tb.n, dtype=np.float64)
    labels = [""] * tb.n
    words = tb.normalised_words
    figures: dict[str, Figure] = {}
    # In increasing n, so each n-gram pass looks only where the last one found repeats (see ngram_runs).
    for n, limit in p.dup_ngram_limits():
        runs = tb.ngram_runs(n)
        share = _fraction(runs.covered_chars(words.lengths, tb.n, words.doc), tb.normalised_chars)
        figures[str(n)] = share
        over = (share > limit) & ~tripped
        for row in np.nonzero(over)[0]:
            labels[row] = f"{n}-grams > {limit:g}"
        worst = np.where(over, share, worst)
        tripped |= over
    return _labelled(tripped, worst, labels, "of chars in repeated", figures)


def _labelled(
    tripped: np.ndarray, value: np.ndarray, labels: list[str], prefix: str, figures: dict[str, Figure]
) -> RuleOutcome:
    details = [f"{v:.4g} {prefix} {label}" if label else "" for v, label in zip(value, labels, strict=True)]
    return RuleOutcome(tripped, details, "", figures)


# ---------------------------------------------------------------------------------------------------------
# C4-style rules


def terminal_punct(tb: TextBatch, p: HeuristicsParams, _: Blocklists) -> RuleOutcome:
    lines = tb.lines
    share = _fraction(lines.per_doc(lines.matches(_TERMINAL).astype(float), tb.n), lines.per_doc(None, tb.n))
    has_lines = lines.per_doc(None, tb.n) > 0
    return RuleOutcome(
        has_lines & (share < p.min_terminal_punct_lines),
        share,
        f"of lines end in terminal punctuation < {p.min_terminal_punct_lines:g}",
    )


def lorem_ipsum(tb: TextBatch, p: HeuristicsParams, _: Blocklists) -> RuleOutcome:
    found = pc.match_substring(tb.text, "lorem ipsum", ignore_case=True).to_numpy(zero_copy_only=False)
    return RuleOutcome(found, ["'lorem ipsum'"] * tb.n, "found")


def curly_bracket(tb: TextBatch, p: HeuristicsParams, _: Blocklists) -> RuleOutcome:
    # C4: '{' is common in code (JavaScript above all on the web) and rare in prose. A regex, because RE2
    # finds one rare character with memchr, many times faster than Arrow's plain substring match.
    found = pc.match_substring_regex(tb.text, r"\{").to_numpy(zero_copy_only=False)
    return RuleOutcome(found, ["'{'"] * tb.n, "found")


def javascript_cookie(tb: TextBatch, p: HeuristicsParams, _: Blocklists) -> RuleOutcome:
    lines = tb.lines
    hits = lines.per_doc(lines.matches(_JAVASCRIPT_COOKIE).astype(float), tb.n)
    share = _fraction(hits, lines.per_doc(None, tb.n))
    return RuleOutcome(
        share > p.max_javascript_cookie_lines,
        share,
        f"of lines about javascript/cookies/policies > {p.max_javascript_cookie_lines:g}",
    )


@dataclass
class CleanedLines:
    """The outcome of C4's line cleaning on a batch: the rewritten texts, and per document the lines it
    had, the lines removed and the sentences left."""

    text: pa.Array
    lines: np.ndarray
    lines_removed: np.ndarray
    sentences: np.ndarray

    @property
    def changed(self) -> np.ndarray:
        return self.lines_removed > 0


# A run of terminal marks, then any closing quotes or brackets, then whitespace or the end of the text.
# RE2's \s is ASCII only (and leaves out \v), so Unicode's White_Space is spelled out: the ASCII controls,
# NEL, and the separators \pZ (no-break space, the thin and ideographic spaces, line/paragraph separators).
_SENTENCE_END = "[.!?\u2026\u3002\uff01\uff1f]+[\"'\u201d\u2019\u00bb)]*(?:[\\t\\n\\v\\f\\r\\x{85}\\pZ]|$)"
_BLANK_RUN = r"\n(?:[ \t\r\f\v]*\n){2,}"


def c4_clean_lines(texts: pa.Array | pa.ChunkedArray, min_line_words: int) -> CleanedLines:
    """Remove the lines C4 removed (Raffel et al. 2020, section 2.2): lines that do not end in terminal
    punctuation or that end in an ellipsis, lines of fewer than `min_line_words` words, and lines about
    javascript, cookies or site policies. Blank lines stay, so paragraphs stay apart (runs of them left
    by a removal are collapsed to one); a document that loses no line is returned byte for byte."""
    tb = TextBatch(texts)
    raw = tb.raw_lines
    stripped = pc.utf8_trim_whitespace(raw.values)
    blank = pc.equal(pc.utf8_length(stripped), 0).to_numpy(zero_copy_only=False)
    words = pc.list_value_length(pc.utf8_split_whitespace(stripped)).to_numpy(zero_copy_only=False)
    pieces = Pieces(stripped, raw.doc)
    good = (
        pieces.matches(_TERMINAL)
        & ~pieces.matches(_ELLIPSIS)
        & ~pieces.matches(_JAVASCRIPT_COOKIE)
        & (words >= min_line_words)
    )
    keep = blank | good
    removed = np.bincount(raw.doc, weights=~keep, minlength=tb.n).astype(np.int64)
    lines = np.bincount(raw.doc, weights=~blank, minlength=tb.n).astype(np.int64)
    offsets = np.concatenate([[0], np.cumsum(np.bincount(raw.doc[keep], minlength=tb.n))])
    kept = pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), raw.values.filter(pa.array(keep)))
    rewritten = pc.utf8_trim_whitespace(
        pc.replace_substring_regex(pc.binary_join(kept, separator("\n", raw.values.type)), _BLANK_RUN, "\n\n")
    )
    original = texts.combine_chunks() if isinstance(texts, pa.ChunkedArray) else texts
    text = pc.if_else(pa.array(removed > 0), rewritten, original)
    sentences = pc.count_substring_regex(pc.fill_null(text, ""), _SENTENCE_END)
    return CleanedLines(text, lines, removed, sentences.to_numpy(zero_copy_only=False).astype(np.int64))


# ---------------------------------------------------------------------------------------------------------
# Blocklists


@dataclass
class Blocklists:
    """Entries of the word and URL blocklist files, lowercased."""

    words: frozenset[str] = frozenset()
    phrases: tuple[str, ...] = ()
    domains: frozenset[str] = frozenset()

    @classmethod
    def load(cls, word_files: Iterable[str], url_files: Iterable[str]) -> Blocklists:
        entries = [e for path in word_files for e in read_list(storage.location(path))]
        words = frozenset(e for e in entries if " " not in e)
        phrases = tuple(sorted(e for e in entries if " " in e))
        domains = frozenset(_domain(e) for path in url_files for e in read_list(storage.location(path)))
        return cls(words, phrases, domains)


def read_list(path: Path) -> list[str]:
    """One entry per line; blank lines and lines starting with '#' are skipped; lowercased."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise UsageError(f"{path}: blocklist file does not exist") from None
    except UnicodeDecodeError as exc:
        raise UsageError(f"{path}: blocklist is not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    return [
        " ".join(line.lower().split()) for line in lines if line.strip() and not line.lstrip().startswith("#")
    ]


def _domain(entry: str) -> str:
    m = re.match(_URL_HOST, entry)
    host = m.group("host") if m else entry.split("/")[0]
    return host.lower().strip(".").removeprefix("www.")


def word_blocklist(tb: TextBatch, p: HeuristicsParams, lists: Blocklists) -> RuleOutcome:
    found: list[str] = [""] * tb.n
    entries: list[str | None] = [None] * tb.n  # the entry matched, as tag mode's column
    tripped = np.zeros(tb.n, dtype=bool)
    if lists.words:
        words = tb.normalised_words
        hit = pc.is_in(words.values, pa.array(sorted(lists.words))).to_numpy(zero_copy_only=False)
        hit_rows = np.nonzero(hit)[0]
        # The first blocked word of each document names the match.
        docs, first = np.unique(words.doc[hit_rows], return_index=True)
        matched = words.values.take(pa.array(hit_rows[first])).to_pylist()
        for doc, word in zip(docs, matched, strict=True):
            tripped[doc] = True
            found[doc], entries[doc] = repr(word), word
    if lists.phrases:
        pattern = (
            r"(?:^|[^\pL\pN])(" + "|".join(_re2_escape(ph) for ph in lists.phrases) + r")(?:$|[^\pL\pN])"
        )
        normal = pc.binary_join(
            pc.utf8_split_whitespace(pc.utf8_lower(tb.text)), separator(" ", tb.text.type)
        )
        hits = pc.match_substring_regex(normal, pattern).to_numpy(zero_copy_only=False)
        # Arrow's RE2 says which documents match; Python's re names the phrase for the few that do.
        named = re.compile(r"(?<![^\W_])(" + "|".join(re.escape(ph) for ph in lists.phrases) + r")(?![^\W_])")
        for doc in np.nonzero(hits & ~tripped)[0]:
            m = named.search(normal[int(doc)].as_py())
            found[doc] = repr(m.group(1)) if m else "a blocklisted phrase"
            entries[doc] = m.group(1) if m else None
        tripped |= hits
    return RuleOutcome(tripped, found, "is blocklisted", {"": entries})


def url_blocklist(tb: TextBatch, p: HeuristicsParams, lists: Blocklists) -> RuleOutcome:
    if tb.urls is None:
        raise AssertionError("url_blocklist needs the url column; the stage passes it")
    tripped, matched = blocked_hosts(tb.urls, lists.domains)
    matched_or_none: list[str | None] = [m or None for m in matched]
    return RuleOutcome(tripped, [repr(m) for m in matched], "is a blocklisted domain", {"": matched_or_none})


def blocked_hosts(urls: pa.Array, domains: frozenset[str]) -> tuple[np.ndarray, list[str]]:
    """Which URLs are on a blocklisted domain or one of its subdomains, and the domain matched."""
    hosts = pc.struct_field(pc.extract_regex(pc.fill_null(urls, ""), _URL_HOST), "host")
    encoded = pc.dictionary_encode(pc.utf8_lower(hosts))
    # Few distinct hosts per batch: check each once, in Python, against every parent domain.
    verdicts = []
    for host in encoded.dictionary.to_pylist():
        labels = host.strip(".").split(".") if host else []
        parents = [".".join(labels[i:]) for i in range(len(labels))]
        verdicts.append(next((d for d in parents if d in domains), ""))
    codes = encoded.indices.fill_null(-1).to_numpy(zero_copy_only=False)
    matched = [verdicts[c] if c >= 0 else "" for c in codes]
    return np.array([bool(m) for m in matched], dtype=bool), matched


def _re2_escape(text: str) -> str:
    return re.sub(r"([.^$*+?()\[\]{}|\\-])", r"\\\1", text)


@dataclass(frozen=True)
class Rule:
    name: str
    group: str
    measure: RuleFn
    about: str


RULES: tuple[Rule, ...] = (
    Rule("gopher_word_count", "gopher", word_count, "word count outside --min-words..--max-words"),
    Rule("gopher_mean_word_length", "gopher", mean_word_length, "mean word length out of bounds"),
    Rule("gopher_hash_ratio", "gopher", hash_ratio, "too many '#' per word"),
    Rule("gopher_ellipsis_ratio", "gopher", ellipsis_ratio, "too many ellipses per word"),
    Rule("gopher_bullet_lines", "gopher", bullet_lines, "too many lines start with a bullet"),
    Rule("gopher_ellipsis_lines", "gopher", ellipsis_lines, "too many lines end in an ellipsis"),
    Rule("gopher_alpha_words", "gopher", alpha_words, "too few words contain a letter"),
    Rule("gopher_stop_words", "gopher", stop_words, "too few stop words of the language"),
    Rule("gopher_dup_lines", "gopher", dup_lines, "too many repeated lines"),
    Rule("gopher_dup_line_chars", "gopher", dup_line_chars, "too many characters in repeated lines"),
    Rule("gopher_dup_paragraphs", "gopher", dup_paragraphs, "too many repeated paragraphs"),
    Rule(
        "gopher_dup_paragraph_chars", "gopher", dup_paragraph_chars, "too many chars in repeated paragraphs"
    ),
    Rule("gopher_top_ngram", "gopher", top_ngram, "one word 2/3/4-gram covers too much of the text"),
    Rule("gopher_dup_ngram", "gopher", dup_ngram, "repeated word 5..10-grams cover too much of the text"),
    Rule("c4_terminal_punct", "c4", terminal_punct, "too few lines end in terminal punctuation"),
    Rule("c4_lorem_ipsum", "c4", lorem_ipsum, "contains 'lorem ipsum'"),
    Rule("c4_curly_bracket", "c4", curly_bracket, "contains '{' (code)"),
    Rule("c4_javascript_cookie", "c4", javascript_cookie, "too many javascript/cookie/policy lines"),
    Rule("word_blocklist", "blocklist", word_blocklist, "a word or phrase from --word-blocklist"),
    Rule("url_blocklist", "blocklist", url_blocklist, "url on a domain from --url-blocklist"),
)
RULE_NAMES = tuple(r.name for r in RULES)
GROUPS = {group: tuple(r.name for r in RULES if r.group == group) for group in ("gopher", "c4", "blocklist")}
# Gopher's one symbol-to-word filter, checked as two rules; also the name that rule had before the split.
GROUPS["gopher_symbol_ratio"] = ("gopher_hash_ratio", "gopher_ellipsis_ratio")
DEFAULT_RULES = ("gopher", "c4")


def expand_rules(names: Iterable[str]) -> tuple[str, ...]:
    """Rule and group names into rule names, in catalogue order (so drop reasons do not depend on the
    order the user listed them in)."""
    wanted: set[str] = set()
    for name in names:
        if name in GROUPS:
            wanted.update(GROUPS[name])
        elif name in RULE_NAMES:
            wanted.add(name)
        else:
            known = ", ".join([*GROUPS, *RULE_NAMES])
            raise ValueError(f"unknown rule '{name}'; known rules and groups: {known}")
    return tuple(n for n in RULE_NAMES if n in wanted)


def rule(name: str) -> Rule:
    return RULES[RULE_NAMES.index(name)]
