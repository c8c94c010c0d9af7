"""Heuristic rules: each rule on a document that trips it and one that does not; the stage end to end."""

from __future__ import annotations

import re
import string
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import Cli, read_manifest, read_rows
from factories import write_shards
from test_bad_input import assert_no_output, assert_user_error

from thresher.pipelines.engine.errors import UsageError
from thresher.pipelines.stages.heuristics.rules import (
    RULE_NAMES,
    Blocklists,
    blocked_hosts,
    c4_clean_lines,
    expand_rules,
    rule,
)
from thresher.pipelines.stages.heuristics.stage import HeuristicChecker, HeuristicsParams
from thresher.pipelines.stages.heuristics.text_views import TextBatch
from thresher.pipelines.testing.sample_data import generate_web

GOOD = (
    "The harvest came late this year because the spring rains kept the fields wet until June. "
    "Farmers in the valley waited with their machines ready, watching the sky and the soil.\n\n"
    "When the wheat finally ripened, whole families worked from dawn to dusk to bring it in before the "
    "autumn storms. Old threshing floors were swept clean and the mill by the river ran day and night.\n\n"
    "By October the barns were full, and the village held its first market since the flood. Children "
    "sold apples, bakers brought fresh bread, and the mayor thanked everyone who had helped with the work."
)
SENTENCES = [s.strip() for s in GOOD.replace("\n\n", " ").split(". ") if s.strip()]
STOP = {"the", "be", "to", "of", "and", "that", "have", "with"}

TRIPS = {
    "gopher_word_count": "The harvest came late this year.",
    "gopher_mean_word_length": " ".join(f"incomprehensibilities{i}" for i in range(60)) + ".",
    "gopher_hash_ratio": GOOD + " #" * 30,
    "gopher_ellipsis_ratio": GOOD + " ..." * 20,
    "gopher_bullet_lines": "\n".join(f"- {s}" for s in SENTENCES),
    "gopher_ellipsis_lines": "\n".join(f"{s} ..." for s in SENTENCES),
    "gopher_alpha_words": GOOD + " " + " ".join(str(n) for n in range(1000, 1100)),
    "gopher_stop_words": " ".join(w for w in GOOD.split() if w.lower().strip(".,") not in STOP),
    "gopher_dup_lines": GOOD.replace("\n\n", "\n") + "\nRead more.\nRead more.\nRead more.\nRead more.",
    "gopher_dup_line_chars": GOOD + "\n" + "\n".join([SENTENCES[2] + "."] * 3),
    "gopher_dup_paragraphs": "\n\n".join([GOOD.split("\n\n")[0]] * 4 + [GOOD.split("\n\n")[1]]),
    "gopher_dup_paragraph_chars": "\n\n".join([*GOOD.split("\n\n"), GOOD.split("\n\n")[1]]),
    "gopher_top_ngram": GOOD + " " + " ".join(["cheap flights"] * 30),
    "gopher_dup_ngram": GOOD + " " + " ".join([SENTENCES[0] + "."] * 3),
    "c4_terminal_punct": "\n".join(w for w in GOOD.replace(".", "").split(", ")),
    "c4_lorem_ipsum": GOOD + " Lorem ipsum dolor sit amet.",
    "c4_curly_bracket": GOOD + " In C, a block is written { like this }.",
    "c4_javascript_cookie": "Please enable JavaScript to view this page.\nWe use cookies on this site.\n"
    + GOOD.replace("\n\n", "\n"),
    "word_blocklist": GOOD + " It was a scam, some said.",
}


@pytest.fixture
def blocklists(tmp_path: Path) -> Blocklists:
    words = tmp_path / "words.txt"
    words.write_text("# words nobody wants\nscam\n\nfree money\n", encoding="utf-8")
    domains = tmp_path / "domains.txt"
    domains.write_text("spam.example\nhttps://www.bad.example/some/page\n", encoding="utf-8")
    return Blocklists.load([str(words)], [str(domains)])


def test_the_good_document_trips_no_rule(blocklists: Blocklists) -> None:
    params = HeuristicsParams(word_blocklist=["x"], url_blocklist=["y"])
    checker = HeuristicChecker(params, blocklists)
    reasons, details = checker.check(TextBatch(pa.array([GOOD]), pa.array(["https://news.example/a"])))
    assert reasons == [None], details


@pytest.mark.parametrize("name", sorted(TRIPS))
def test_rule_trips_on_its_document_and_not_on_prose(name: str, blocklists: Blocklists) -> None:
    outcome = rule(name).measure(TextBatch(pa.array([GOOD, TRIPS[name]])), HeuristicsParams(), blocklists)
    assert outcome.tripped.tolist() == [False, True], outcome.value
    assert outcome.detail(1)


def test_every_rule_has_a_test_case() -> None:
    assert set(TRIPS) | {"url_blocklist"} == set(RULE_NAMES)


def test_word_blocklist_matches_whole_words_and_phrases(blocklists: Blocklists) -> None:
    texts = ["A scam!", "Scampi is tasty.", "Get free  money now", "free of money", "SCAM"]
    outcome = rule("word_blocklist").measure(TextBatch(pa.array(texts)), HeuristicsParams(), blocklists)
    assert outcome.tripped.tolist() == [True, False, True, False, True]
    assert outcome.detail(2) == "'free money' is blocklisted"


def test_url_blocklist_blocks_domains_and_their_subdomains(blocklists: Blocklists) -> None:
    urls = pa.array(
        [
            "https://spam.example/x",
            "http://www.spam.example:8080/y",
            "https://notspam.example/",
            "https://bad.example",
            None,
            "ftp://user@spam.example/z",
        ]
    )
    blocked, matched = blocked_hosts(urls, blocklists.domains)
    assert blocked.tolist() == [True, True, False, True, False, True]
    assert matched[1] == "spam.example"
    outcome = rule("url_blocklist").measure(
        TextBatch(pa.array(["t"] * 6), urls), HeuristicsParams(), blocklists
    )
    assert outcome.tripped.tolist() == blocked.tolist()


def test_drop_reason_is_the_first_rule_in_catalogue_order() -> None:
    checker = HeuristicChecker(HeuristicsParams(rules=["c4", "gopher"]), Blocklists())
    # Short, no stop words, lorem ipsum: gopher_word_count comes first in the catalogue.
    reasons, details = checker.check(TextBatch(pa.array(["Lorem ipsum dolor."])))
    assert reasons == ["gopher_word_count"]
    assert details[0] == "3 words, outside 50..100000"
    assert checker.tripped["c4_lorem_ipsum"] == 1


def test_rule_groups_expand_and_unknown_rules_are_rejected() -> None:
    assert expand_rules(["c4"]) == (
        "c4_terminal_punct",
        "c4_lorem_ipsum",
        "c4_curly_bracket",
        "c4_javascript_cookie",
    )
    # The paper's one symbol-to-word filter, and the rule name before it was split in two.
    assert expand_rules(["gopher_symbol_ratio"]) == ("gopher_hash_ratio", "gopher_ellipsis_ratio")
    assert expand_rules(["c4_lorem_ipsum", "gopher_word_count"]) == ("gopher_word_count", "c4_lorem_ipsum")
    with pytest.raises(ValueError, match="unknown rule 'gopher_magic'"):
        HeuristicsParams(rules=["gopher_magic"])


def test_thresholds_are_tunable() -> None:
    text = pa.array([" ".join(["word"] * 40) + "."])
    assert rule("gopher_word_count").measure(TextBatch(text), HeuristicsParams(), Blocklists()).tripped[0]
    loose = HeuristicsParams(min_words=10)
    assert not rule("gopher_word_count").measure(TextBatch(text), loose, Blocklists()).tripped[0]
    repeated = pa.array([GOOD + " " + " ".join(["cheap flights"] * 30)])
    lenient = HeuristicsParams(top_ngram=["2:0.9", "3:0.9", "4:0.9"])
    assert not rule("gopher_top_ngram").measure(TextBatch(repeated), lenient, Blocklists()).tripped[0]


def test_ngram_passes_skip_positions_that_cannot_repeat_and_find_the_same_repeats() -> None:
    """Each n-gram pass looks only where the (n-1)-gram pass found repeats; the figures the rules read
    (top and covered characters) equal those of a full pass over every position."""
    texts = generate_web(300, seed=5).table.column("text")
    chained = TextBatch(texts)
    words = chained.normalised_words
    for n in range(2, 11):
        pruned = chained.ngram_runs(n)
        full = TextBatch(texts).ngram_runs(n)  # a fresh batch: no earlier pass to prune with
        assert (pruned.top_chars(chained.n) == full.top_chars(chained.n)).all(), n
        covered = [r.covered_chars(words.lengths, chained.n, words.doc) for r in (pruned, full)]
        assert (covered[0] == covered[1]).all(), n
        assert sorted(pruned.position[pruned.repeat]) == sorted(full.position[full.repeat]), n
        if n > 2:
            assert len(pruned.key) < len(full.key), n


def test_empty_and_null_texts_are_measured_without_errors() -> None:
    checker = HeuristicChecker(HeuristicsParams(), Blocklists())
    reasons, details = checker.check(TextBatch(pa.array(["", None, "   \n\n  "], pa.string())))
    assert reasons == ["gopher_word_count"] * 3
    assert details[0] == "0 words, outside 50..100000"


def test_stop_words_are_counted_once_each_and_case_folded() -> None:
    bare = " ".join(w for w in GOOD.split() if w.lower().strip(".,") not in STOP)
    # A page in another language passes no English filter on one short word, however often it occurs.
    texts = [bare + " to" * 38, bare + " The THE to", bare + " TO tO To."]
    outcome = rule("gopher_stop_words").measure(TextBatch(pa.array(texts)), HeuristicsParams(), Blocklists())
    assert outcome.value.tolist() == [1, 2, 1]
    assert outcome.tripped.tolist() == [True, False, True]
    assert outcome.detail(0) == "1 distinct stop words < 2"


def test_hash_and_ellipsis_ratios_are_each_held_to_the_limit() -> None:
    plain = ["word"] * 88
    texts = [
        " ".join(plain + ["#"] * 6 + ["..."] * 6),  # 0.06 each: under the limit, though 0.12 together
        " ".join(plain + ["#tag"] * 12),
        " ".join(plain + ["\u2026"] * 6 + ["wait..."] * 6),  # both ways of writing an ellipsis count
    ]
    tb = TextBatch(pa.array(texts))
    hashes = rule("gopher_hash_ratio").measure(tb, HeuristicsParams(), Blocklists())
    ellipses = rule("gopher_ellipsis_ratio").measure(tb, HeuristicsParams(), Blocklists())
    assert hashes.value.tolist() == pytest.approx([0.06, 0.12, 0.0])
    assert ellipses.value.tolist() == pytest.approx([0.06, 0.0, 0.12])
    assert hashes.tripped.tolist() == [False, True, False]
    assert ellipses.tripped.tolist() == [False, False, True]
    checker = HeuristicChecker(HeuristicsParams(rules=["gopher_symbol_ratio"]), Blocklists())
    reasons, details = checker.check(tb)
    assert reasons == [None, "gopher_hash_ratio", "gopher_ellipsis_ratio"]
    assert details[1] == "0.12 '#' per word > 0.1"


def test_c4_curly_bracket_drops_a_page_with_a_brace_and_is_on_by_default() -> None:
    code = GOOD + "\n\nIn C, the body of int f(void) { return 1; } is a block of one statement."
    checker = HeuristicChecker(HeuristicsParams(), Blocklists())
    reasons, details = checker.check(TextBatch(pa.array([GOOD, code])))
    assert reasons == [None, "c4_curly_bracket"]
    assert details[1] == "'{' found"
    # With --c4-lines the rules see what the cleaning kept, as in C4, where only a kept line's brace
    # dropped the page: a code line without terminal punctuation goes, and its page stays.
    config = GOOD + "\nvar config = {debug: false};"
    checker = HeuristicChecker(HeuristicsParams(c4_lines=True), Blocklists())
    texts, short = checker.clean_lines(pa.array([code, config]))
    reasons, _ = checker.check(TextBatch(texts), short)
    assert reasons == ["c4_curly_bracket", None]


def test_a_closing_bracket_does_not_end_a_line() -> None:
    terminal = [".", "!", "?", '"', "'", "\u201d", "\u2019", "\u00bb", "\u2026", "\u3002", "\uff01", "\uff1f"]
    other = [")", "]", ";", ":", ",", "-"]
    texts = [f"the line ends here{mark}" for mark in terminal + other]
    outcome = rule("c4_terminal_punct").measure(TextBatch(pa.array(texts)), HeuristicsParams(), Blocklists())
    assert outcome.value.tolist() == [1.0] * len(terminal) + [0.0] * len(other)
    page = "Prices are listed on the back page (in euros)\nPrices are listed on the back page."
    assert c4_clean_lines(pa.array([page]), 5).text.to_pylist() == ["Prices are listed on the back page."]


def test_unicode_whitespace_after_a_stop_ends_a_sentence() -> None:
    texts = [
        "One.\xa0Two. Three.",
        "One.\u2009Two.\u3000Three.",
        "One.\u202fTwo.\u2028Three.",
        "One.\x0bTwo.\x85Three.",
        "Pi is 3.14 or so.",
        "Dr.Who? Yes.",
    ]
    assert c4_clean_lines(pa.array(texts), 0).sentences.tolist() == [3, 3, 3, 3, 1, 2]


# Independent restatements of the rules' figures, in plain Python, for the test below.
_EDGE = string.punctuation + "\u00ab\u00bb\u2018\u2019\u201c\u201d\u201e\u2026\u2013\u2014\u00a1\u00bf\u00b7"
_BULLETS = tuple("\u2022\u2023\u25e6\u25aa\u25cf\u25cb\u25a0\u25a1\u27a2\u25ba*-\u2013")
_TERMINAL = tuple(".!?\"'\u201d\u2019\u00bb\u2026\u3002\uff01\uff1f")
_NOTICE = re.compile(
    r"javascript|cookie policy|use of cookies|uses cookies|use cookies|accept (all )?cookies"
    r"|privacy policy|terms of (use|service)",
    re.IGNORECASE,
)
_STOPS = re.compile(r"[.!?\u2026\u3002\uff01\uff1f]+[\"'\u201d\u2019\u00bb)]*(?=\s|$)")


def _repeated_share(pieces: list[str], text: str) -> tuple[float, float]:
    """Share of the pieces equal to an earlier one, and share of the text's characters in those."""
    seen: set[str] = set()
    count = chars = 0
    for piece in pieces:
        if piece in seen:
            count, chars = count + 1, chars + len(piece)
        seen.add(piece)
    return count / len(pieces), chars / len(text)


def _plain_figures(text: str) -> dict[str, float]:
    words = text.split()
    norm = [w for w in (w.lower().strip(_EDGE) for w in words) if w]
    lines = [line.strip() for line in text.split("\n") if line.strip()]
    paras = [p.strip() for p in re.split(r"\n[ \t\r\f\v]*\n", text) if p.strip()]
    dup_lines, dup_line_chars = _repeated_share(lines, text)
    dup_paragraphs, dup_paragraph_chars = _repeated_share(paras, text)
    return {
        "gopher_word_count": len(words),
        "gopher_mean_word_length": sum(map(len, norm)) / len(norm),
        "gopher_hash_ratio": text.count("#") / len(words),
        "gopher_ellipsis_ratio": (text.count("...") + text.count("\u2026")) / len(words),
        "gopher_bullet_lines": sum(line.startswith(_BULLETS) for line in lines) / len(lines),
        "gopher_ellipsis_lines": sum(line.endswith(("...", "\u2026")) for line in lines) / len(lines),
        "gopher_alpha_words": sum(any(c.isalpha() for c in w) for w in words) / len(words),
        "gopher_stop_words": len({w.casefold() for w in norm} & STOP),
        "gopher_dup_lines": dup_lines,
        "gopher_dup_line_chars": dup_line_chars,
        "gopher_dup_paragraphs": dup_paragraphs,
        "gopher_dup_paragraph_chars": dup_paragraph_chars,
        "c4_terminal_punct": sum(line.endswith(_TERMINAL) for line in lines) / len(lines),
        "c4_javascript_cookie": sum(bool(_NOTICE.search(line)) for line in lines) / len(lines),
    }


def _plain_top_ngram_share(norm: list[str], n: int) -> float:
    """Characters in every occurrence of the most repeated n-gram, over all characters of the words."""
    grams = Counter(tuple(norm[i : i + n]) for i in range(len(norm) - n + 1))
    top = max((count * sum(map(len, g)) for g, count in grams.items() if count > 1), default=0)
    return top / sum(map(len, norm))


def _plain_dup_ngram_share(norm: list[str], n: int) -> float:
    """Characters of the words inside an n-gram occurrence that repeats an earlier one."""
    seen: set[tuple[str, ...]] = set()
    covered = [False] * len(norm)
    for i in range(len(norm) - n + 1):
        gram = tuple(norm[i : i + n])
        if gram in seen:
            covered[i : i + n] = [True] * n
        seen.add(gram)
    return sum(len(w) for w, c in zip(norm, covered, strict=True) if c) / sum(map(len, norm))


FIGURE_DOCS = [
    GOOD,
    "# Menu\n- Home\n- News ...\n- News ...\n\n"
    "The BEST deals\u2026 #sale #today\n\nThe BEST deals\u2026 #sale #today\n\n1234 5678 and more to come.",
    "\u00abQuoted\u00bb words \u2014 and dashes.\u00a0Next sentence here!\n\u4ed6\u8bf4\u3002\n"
    "This site uses cookies (see our privacy policy)\n'Single' quotes end here'",
    GOOD + " Cheap flights to Rome, cheap flights to Rome!" * 4 + "\nWith THE best of them.",
]


def test_rule_figures_equal_a_plain_python_recount() -> None:
    tb = TextBatch(pa.array(FIGURE_DOCS))
    expected = [_plain_figures(text) for text in FIGURE_DOCS]
    for name in expected[0]:
        outcome = rule(name).measure(tb, HeuristicsParams(), Blocklists())
        assert outcome.value.tolist() == pytest.approx([e[name] for e in expected]), name
    norms = [[w for w in (w.lower().strip(_EDGE) for w in t.split()) if w] for t in FIGURE_DOCS]
    for n in range(2, 11):  # in increasing n, as the rules build them
        runs = tb.ngram_runs(n)
        if n <= 4:
            share = runs.top_chars(tb.n) / tb.normalised_chars
            assert share.tolist() == pytest.approx([_plain_top_ngram_share(w, n) for w in norms]), n
        else:
            words = tb.normalised_words
            share = runs.covered_chars(words.lengths, tb.n, words.doc) / tb.normalised_chars
            assert share.tolist() == pytest.approx([_plain_dup_ngram_share(w, n) for w in norms]), n
    braces = rule("c4_curly_bracket").measure(tb, HeuristicsParams(), Blocklists())
    assert braces.tripped.tolist() == ["{" in t for t in FIGURE_DOCS]
    cleaned = c4_clean_lines(pa.array(FIGURE_DOCS), 0)
    assert cleaned.sentences.tolist() == [len(_STOPS.findall(t)) for t in cleaned.text.to_pylist()]
    assert (cleaned.sentences > 0).all()


# ---------------------------------------------------------------------------------------------------------
# The stage


def test_c4_line_cleaning_removes_the_lines_c4_removed_and_keeps_paragraphs() -> None:
    first, second, third = GOOD.split("\n\n")
    page = "\n".join(
        [
            "Home | News | Contact",  # no terminal punctuation
            first,
            "Read the rest of the story...",  # ends in an ellipsis
            "",
            "Share this.",  # fewer than five words
            "Please enable JavaScript to view the comments below.",
            "This site uses cookies to improve your experience.",
            second,
            "",
            "",
            "Posted in Farming",
            "",
            third,
        ]
    )
    texts = pa.array([page, GOOD, "Too short to matter. Only two. ", None, ""])
    cleaned = c4_clean_lines(texts, min_line_words=5)
    assert cleaned.text[0].as_py() == f"{first}\n\n{second}\n\n{third}"
    assert cleaned.lines.tolist() == [9, 3, 1, 0, 0]
    assert cleaned.lines_removed.tolist() == [6, 0, 0, 0, 0]
    # A document that loses no line comes back byte for byte, trailing space included.
    assert cleaned.text.to_pylist()[1:] == [GOOD, "Too short to matter. Only two. ", None, ""]
    assert cleaned.sentences.tolist() == [6, 6, 2, 0, 0]
    # Shards may hold large_string text; the rewritten column keeps its type.
    large = c4_clean_lines(pa.array([page], pa.large_string()), min_line_words=5).text
    assert large.type == pa.large_string() and large.to_pylist() == [cleaned.text[0].as_py()]
    # Lines are measured stripped; the word bound is tunable.
    assert c4_clean_lines(pa.array(["  Share this.  \nAnd one more line."]), 3).text[0].as_py() == (
        "And one more line."
    )


def test_c4_lines_drop_documents_left_with_too_few_sentences_before_any_rule() -> None:
    params = HeuristicsParams(rules=["gopher_word_count"], min_words=1, c4_lines=True)
    checker = HeuristicChecker(params, Blocklists())
    texts, short = checker.clean_lines(pa.array([GOOD, "Menu\nOne sentence that is long enough.", "x"]))
    assert sorted(short) == [1, 2]
    assert short[1] == "1 sentences left after removing 1 of 2 lines, < 3"
    reasons, _ = checker.check(TextBatch(texts), short)
    assert reasons == [None, "c4_lines", "c4_lines"]
    assert checker.tripped["c4_lines"] == 2
    assert dict(checker.line_counts) == {"lines_removed": 2, "documents_changed": 2}


@pytest.fixture
def web(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    sample = generate_web(400, seed=3)
    write_shards(sample.table, tmp_path / "web", rows_per_shard=150)
    return tmp_path / "web", dict(
        zip(sample.truth["id"].to_pylist(), sample.truth["kind"].to_pylist(), strict=True)
    )


def test_heuristics_stage_drops_junk_and_names_rules(
    cli: Cli, tmp_path: Path, web: tuple[Path, dict[str, str]]
) -> None:
    src, kinds = web
    words = tmp_path / "words.txt"
    words.write_text("casino\n", encoding="utf-8")
    out = tmp_path / "out"
    result = cli("heuristics", src, out, "--workers", "1", "-q", "--word-blocklist", words)
    assert result.exit_code == 0, result.output

    kept = {r["id"] for r in read_rows(out)}
    dropped = pq.read_table(out / "_dropped").to_pylist()
    assert len(kept) + len(dropped) == 400
    assert {r["stage"] for r in dropped} == {"heuristics"}
    assert all(r["reason"] in RULE_NAMES and r["detail"] for r in dropped)
    for kind in ("short", "spam", "boilerplate", "non_latin"):
        assert not any(kinds[i] == kind for i in kept), kind
    assert sum(kinds[i] == "clean" for i in kept) > 0.5 * sum(k == "clean" for k in kinds.values())

    summary = read_manifest(out)["summary"]
    by_rule = {}
    for r in dropped:
        by_rule[r["reason"]] = by_rule.get(r["reason"], 0) + 1
    assert {k: v for k, v in summary["dropped_by_rule"].items() if v} == by_rule
    assert "word_blocklist" in summary["rules"]
    assert all(summary["tripped_by_rule"][k] >= v for k, v in summary["dropped_by_rule"].items())
    assert read_manifest(out)["totals"]["dropped"] == dict(sorted(by_rule.items()))


def test_c4_lines_through_the_cli_rewrites_documents_and_counts_every_line(
    cli: Cli, tmp_path: Path, web: tuple[Path, dict[str, str]]
) -> None:
    src, kinds = web
    out = tmp_path / "out"
    args = ("--rules", "c4_lorem_ipsum", "--c4-lines")
    assert cli("heuristics", src, out, "-w", "1", "-q", *args).exit_code == 0
    before = {r["id"]: r["text"] for r in read_rows(src)}
    kept = {r["id"]: r["text"] for r in read_rows(out)}
    dropped = pq.read_table(out / "_dropped").to_pylist()
    assert len(kept) + len(dropped) == len(before) == 400
    assert {r["reason"] for r in dropped} <= {"c4_lines", "c4_lorem_ipsum"}
    assert any(r["reason"] == "c4_lines" for r in dropped)
    # What is kept is what the cleaning gives, document by document.
    ids = list(kept)
    expected = c4_clean_lines(pa.array([before[i] for i in ids]), 5).text.to_pylist()
    assert [kept[i] for i in ids] == expected
    assert any(kept[i] != before[i] for i in ids) and any(kept[i] == before[i] for i in ids)
    # Short pages go; prose stays (some of it loses a heading or a caption line).
    assert not any(kinds[i] == "short" for i in kept)
    assert sum(kinds[i] == "clean" for i in kept) == sum(k == "clean" for k in kinds.values())
    summary = read_manifest(out)["summary"]
    assert summary["rules"] == ["c4_lines", "c4_lorem_ipsum"]
    assert summary["dropped_by_rule"]["c4_lines"] == sum(r["reason"] == "c4_lines" for r in dropped)
    everything = c4_clean_lines(pa.array(list(before.values())), 5)
    assert summary["c4_lines"] == {
        "documents_changed": int(everything.changed.sum()),
        "lines_removed": int(everything.lines_removed.sum()),
    }


def test_url_blocklist_through_the_cli(cli: Cli, tmp_path: Path) -> None:
    table = pa.table(
        {"id": ["a", "b"], "text": [GOOD, GOOD], "url": ["https://ok.example/1", "https://m.spam.example/2"]}
    )
    write_shards(table, tmp_path / "in", rows_per_shard=10)
    (tmp_path / "domains.txt").write_text("spam.example\n", encoding="utf-8")
    out = tmp_path / "out"
    args = ("--rules", "c4_lorem_ipsum", "--url-blocklist", tmp_path / "domains.txt")
    result = cli("heuristics", tmp_path / "in", out, "-w", "1", "-q", *args)
    assert result.exit_code == 0, result.output
    assert [r["id"] for r in read_rows(out)] == ["a"]
    assert pq.read_table(out / "_dropped").to_pylist()[0]["reason"] == "url_blocklist"


def test_changing_a_blocklist_file_reruns_the_stage(cli: Cli, tmp_path: Path) -> None:
    table = pa.table({"id": ["a", "b"], "text": [GOOD, GOOD.replace("harvest", "casino")]})
    write_shards(table, tmp_path / "in", rows_per_shard=10)
    words = tmp_path / "words.txt"
    words.write_text("scam\n", encoding="utf-8")
    out = tmp_path / "out"
    args = ("heuristics", tmp_path / "in", out, "-w", "1", "-q", "--rules", "c4", "--word-blocklist", words)
    assert cli(*args).exit_code == 0
    assert len(read_rows(out)) == 2
    words.write_text("casino\n", encoding="utf-8")
    assert cli(*args).exit_code == 0
    assert [r["id"] for r in read_rows(out)] == ["a"]


def test_bad_heuristics_options_are_one_line_errors(cli: Cli, tmp_path: Path) -> None:
    write_shards(pa.table({"id": ["a"], "text": [GOOD]}), tmp_path / "in", rows_per_shard=10)
    out = tmp_path / "out"
    assert_user_error(cli("heuristics", tmp_path / "in", out, "--rules", "nope"), 2, "unknown rule 'nope'")
    missing = tmp_path / "missing.txt"
    assert_user_error(cli("heuristics", tmp_path / "in", out, "--word-blocklist", missing), 2, "missing.txt")
    assert_user_error(
        cli("heuristics", tmp_path / "in", out, "--rules", "gopher,word_blocklist"),
        2,
        "--word-blocklist FILE",
    )
    assert_user_error(cli("heuristics", tmp_path / "in", out, "--top-ngram", "2-0.1"), 2, "--top-ngram")
    (tmp_path / "d.txt").write_text("x.example\n", encoding="utf-8")
    assert_user_error(
        cli("heuristics", tmp_path / "in", out, "--url-blocklist", tmp_path / "d.txt"), 1, "'url'"
    )
    assert_no_output(out)


def test_example_blocklists_load() -> None:
    repo = Path(__file__).resolve().parents[1]
    lists = Blocklists.load(
        [str(repo / "recipes/blocklists/spam-words.txt")], [str(repo / "recipes/blocklists/domains.txt")]
    )
    assert "casino" in lists.words and "replica watches" in lists.phrases
    assert lists.domains == {"spam.example", "link-farm.example", "ads.example.net"}


GERMAN = (
    "Die Ernte kam in diesem Jahr spät, weil der Regen im Frühling die Felder bis in den Juni nass hielt. "
    "Die Bauern im Tal warteten mit ihren Maschinen und beobachteten den Himmel und den Boden.\n\n"
    "Als der Weizen endlich reif war, arbeiteten ganze Familien von morgens bis abends, um ihn vor den "
    "Stürmen im Herbst einzubringen. Die alten Tennen wurden sauber gefegt, und die Mühle am Fluss lief "
    "Tag und Nacht.\n\n"
    "Im Oktober waren die Scheunen voll, und das Dorf hielt seinen ersten Markt seit der Flut ab. Kinder "
    "verkauften Äpfel, Bäcker brachten frisches Brot, und der Bürgermeister dankte allen, die bei der "
    "Arbeit geholfen hatten."
)


def test_stop_words_follow_the_language(cli: Cli, tmp_path: Path) -> None:
    table = pa.table({"id": ["de", "en"], "text": [GERMAN, GOOD]})
    write_shards(table, tmp_path / "in", rows_per_shard=10)

    def run(*args: str) -> tuple[list[str], dict[str, str]]:
        out = tmp_path / "-".join(args or ("default",))
        result = cli("heuristics", tmp_path / "in", out, "-w", "1", "-q", *args)
        assert result.exit_code == 0, result.output
        dropped = pq.read_table(out / "_dropped").to_pylist() if (out / "_dropped").exists() else []
        return [r["id"] for r in read_rows(out)], {r["id"]: r["reason"] for r in dropped}

    # English by default: the German page has none of Gopher's eight, and that is the only rule it trips.
    assert run() == (["en"], {"de": "gopher_stop_words"})
    assert run("--stop-words-lang", "de") == (["de"], {"en": "gopher_stop_words"})
    assert run("--stop-words-lang", "none") == (["de", "en"], {})
    assert "gopher_stop_words" not in HeuristicsParams(stop_words_lang="none").active_rules()
    with pytest.raises(UsageError, match="contradict"):
        HeuristicsParams(rules=["gopher_stop_words"], stop_words_lang="none").active_rules()
