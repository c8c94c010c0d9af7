# ruff: noqa: RUF001  (the punctuation table below is made of look-alike characters on purpose)
"""cc_net-style text normalisation for KenLM: the same function feeds training and scoring, so the model
only ever sees text shaped the way it will be scored.

Per line: strip, lowercase, strip accents, every digit to 0, unicode punctuation to its ASCII form, and
control characters removed (cc_net `text_normalizer.normalize` with its defaults). A document is its
non-empty normalised lines; blank lines are layout, not text, and are not scored.
"""

from __future__ import annotations

import re
import unicodedata

# Unicode punctuation (mostly CJK full-width forms) and its ASCII spelling, as cc_net maps it.
_UNICODE_PUNCT = {
    "，": ",",
    "。": ". ",
    "、": ",",
    "„": '"',
    "”": '"',
    "“": '"',
    "«": '"',
    "»": '"',
    "」": '"',
    "「": '"',
    "《": '"',
    "》": '"',
    "´": "'",
    "∶": ":",
    "：": ":",
    "？": "?",
    "！": "!",
    "（": "(",
    "）": ")",
    "；": ";",
    "–": "-",
    "—": " - ",
    "．": ". ",
    "～": "~",
    "’": "'",
    "…": "...",
    "━": "-",
    "〈": "<",
    "〉": ">",
    "【": "[",
    "】": "]",
    "％": "%",
    "►": "-",
}
# One translate table does digits, punctuation and control characters in a single pass over the line.
# C0 and C1 control characters go (tabs included: cc_net drops them rather than spacing them).
_TABLE: dict[int, str | None] = {c: None for c in [*range(0, 32), *range(127, 160)]}
_TABLE.update({ord(d): "0" for d in "123456789"})
_TABLE.update({ord(k): v for k, v in _UNICODE_PUNCT.items()})
_DIGIT = re.compile(r"\d")  # any Unicode decimal digit, not only ASCII ones


def normalize_line(line: str) -> str:
    """One line in cc_net's normal form; an empty string when nothing printable is left."""
    line = line.strip().lower()
    if not line.isascii():
        # Accents: decompose, then drop the combining marks. Non-ASCII digits become 0 here, before the
        # punctuation table, as in cc_net (where full-width digits are matched by `\d` first).
        decomposed = unicodedata.normalize("NFD", line)
        line = "".join(c for c in decomposed if unicodedata.category(c) != "Mn")
        line = _DIGIT.sub("0", line)
    return line.translate(_TABLE).strip()


def document_lines(text: str | None) -> list[str]:
    """The normalised non-empty lines of a document (none for a null or blank document)."""
    if not text:
        return []
    return [n for n in map(normalize_line, text.split("\n")) if n]
