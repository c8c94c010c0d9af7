"""Deterministic synthetic sample corpora with planted defects, for demos and for measuring stages.

All text comes from the small invented vocabularies and templates below, so the corpus is free to ship and
every planted item (duplicates, boilerplate, PII, ...) is known exactly through a truth table.
"""

from __future__ import annotations

import json
import os
import random
import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from thresher.pipelines.stages.pii.patterns import luhn_valid

__all__ = [
    "INSTRUCTION_SCHEMA",
    "TRUTH_SCHEMA",
    "WEB_SCHEMA",
    "WebSample",
    "generate_instructions",
    "generate_web",
    "jaccard_5gram",
    "luhn_valid",
    "normalise_text",
    "write_sample_data",
]

WEB_SCHEMA = pa.schema(
    [("id", pa.string()), ("text", pa.string()), ("domain", pa.string()), ("url", pa.string())]
)
TRUTH_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("kind", pa.string()),
        ("source_id", pa.string()),
        ("edit_rate", pa.float64()),
        ("jaccard_5gram", pa.float64()),
    ]
)
INSTRUCTION_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("instruction", pa.string()),
        ("input", pa.string()),
        ("output", pa.string()),
        ("task", pa.string()),
        ("is_correct", pa.bool_()),
    ]
)

DOMAIN_WEIGHTS: dict[str, float] = {"news": 0.3, "science": 0.2, "recipes": 0.2, "forum": 0.2, "code": 0.1}
# Shares of the corpus per planted kind; `clean` takes whatever is left (~71%).
KIND_SHARES: dict[str, float] = {
    "exact_dup": 0.05,
    "near_dup": 0.08,
    "boilerplate": 0.03,
    "spam": 0.03,
    "short": 0.04,
    "pii": 0.03,
    "non_latin": 0.01,
    "long": 0.02,
}
# With `hard_quality`: more than twice the negatives, most of them written to pass for articles.
HARD_QUALITY_SHARES: dict[str, float] = {**KIND_SHARES, "boilerplate": 0.08, "spam": 0.08}
# 0.01 and 0.02 land above Jaccard 0.8 on 5-gram shingles, the rest below, so a 0.8 threshold is tested
# from both sides.
NEAR_DUP_RATES: tuple[float, ...] = (0.01, 0.02, 0.05, 0.1, 0.2, 0.3)
# With `hard_quality`, the shares of boilerplate that are thin pages and of spam that is SEO copy (the rest
# is the blatant kind the rule filters catch), and the share of sentences in the site's own voice: up to
# CLEAN_VOICE_MAX on clean pages, drawn from these ranges on thin and SEO pages. The ranges overlap, so
# some pages of each class read like the other and a classifier's scores spread instead of saturating.
THIN_SHARE = 0.8
SEO_SHARE = 0.8
CLEAN_VOICE_MAX = 0.7
THIN_VOICE = (0.35, 0.85)
SEO_VOICE = (0.4, 0.9)
TASK_SHARES: dict[str, float] = {"arithmetic": 0.3, "rewrite": 0.2, "classify": 0.2, "qa": 0.15, "list": 0.15}
ARITHMETIC_WRONG_SHARE = 0.2
POOR_OUTPUT_SHARE = 0.1
SHINGLE_SIZE = 5

_Slot = Sequence[str] | Callable[[random.Random], str]


# ---------------------------------------------------------------------------------------------------------
# Text utilities shared with the truth computation


def normalise_text(text: str) -> str:
    """Lowercase and collapse all whitespace runs to one space (leading/trailing whitespace dropped)."""
    return " ".join(text.lower().split())


def _shingles(text: str, k: int = SHINGLE_SIZE) -> set[tuple[str, ...]]:
    tokens = normalise_text(text).split()
    if len(tokens) < k:
        # A short text still needs one shingle, or every pair of short texts would compare as equal.
        return {tuple(tokens)} if tokens else set()
    return {tuple(tokens[i : i + k]) for i in range(len(tokens) - k + 1)}


def jaccard_5gram(a: str, b: str) -> float:
    """Exact Jaccard similarity of the word 5-gram shingle sets of the normalised texts."""
    sa, sb = _shingles(a), _shingles(b)
    if not sa and not sb:
        return 1.0
    return len(sa & sb) / len(sa | sb)


def _luhn_check_digit(payload: str) -> int:
    for check in range(10):
        if luhn_valid(payload + str(check)):
            return check
    raise AssertionError("unreachable: one of ten check digits always satisfies Luhn")


def _word_count(text: str) -> int:
    return len(text.split())


def _capitalise(s: str) -> str:
    return s[:1].upper() + s[1:]


_SLOT_RE = re.compile(r"\{(\w+)\}")


def _fill(rng: random.Random, template: str, slots: dict[str, _Slot]) -> str:
    def pick(m: re.Match[str]) -> str:
        slot = slots[m.group(1)]
        return slot(rng) if callable(slot) else rng.choice(slot)

    return _SLOT_RE.sub(pick, template)


# ---------------------------------------------------------------------------------------------------------
# Vocabularies. Invented place and person names keep the corpus from looking like real reporting.

_PLACES = (
    "Brackenford", "Lowmere", "Easthollow", "Tarnwick", "Silverdale", "Quellport", "Marrowby", "Ashgrove",
    "Fennick Bay", "Oldcastle Rise", "Dunmarrow", "Wyndle", "Corrin Vale", "Pellsworth", "Gannet Point",
)  # fmt: skip
_FIRST_NAMES = (
    "Mara", "Tobin", "Ilse", "Corwin", "Nadia", "Pell", "Ruth", "Anselm", "Jory", "Wren", "Odile", "Bram",
    "Tamsin", "Felix", "Greta", "Hollis",
)  # fmt: skip
_LAST_NAMES = (
    "Velt", "Amsel", "Okafor", "Brandt", "Quill", "Harrow", "Lindqvist", "Mercer", "Ostrova", "Tull",
    "Varga", "Ellery", "Pike", "Sorensen",
)  # fmt: skip
_WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
_MONTHS = (
    "January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
    "November", "December",
)  # fmt: skip


def _name(rng: random.Random) -> str:
    return f"{rng.choice(_FIRST_NAMES)} {rng.choice(_LAST_NAMES)}"


def _int_slot(lo: int, hi: int) -> Callable[[random.Random], str]:
    return lambda rng: str(rng.randint(lo, hi))


_COMMON_SLOTS: dict[str, _Slot] = {
    "PLACE": _PLACES,
    "NAME": _name,
    "DAY": _WEEKDAYS,
    "MONTH": _MONTHS,
    "NUM": _int_slot(3, 950),
    "SMALL": _int_slot(2, 9),
    "PCT": _int_slot(2, 80),
}

_NEWS_NOUNS = (
    "council", "mayor", "budget", "court", "committee", "ministry", "harbor authority", "school board",
    "transit agency", "union", "election board", "police department", "housing plan", "water utility",
    "parliament", "governor", "district office", "trade agreement", "ferry service", "tax proposal",
    "hospital trust", "planning commission", "bridge project", "airport expansion", "fire brigade",
)  # fmt: skip
_NEWS_SLOTS: dict[str, _Slot] = {
    "N": _NEWS_NOUNS,
    "N2": (
        "proposal", "contract", "ballot measure", "inquiry", "ordinance", "subsidy", "curfew", "audit",
        "repair plan", "strike", "merger", "zoning change", "relief fund", "ceasefire", "investigation",
        "vote", "settlement", "policy", "tariff", "evacuation order",
    ),
    "A": (
        "local", "regional", "national", "annual", "controversial", "emergency", "former", "federal",
        "temporary", "municipal", "disputed", "long-awaited", "bipartisan", "provisional", "coastal",
    ),
    "V": (
        "announced", "approved", "rejected", "delayed", "criticized", "confirmed", "postponed", "proposed",
        "suspended", "defended", "reviewed", "overturned", "endorsed", "blocked", "unveiled",
    ),
    "Vb": (
        "resume", "reopen", "expand", "appeal", "respond", "resign", "recover", "negotiate", "reconvene",
        "comment", "testify", "intervene",
    ),
    "ROLE": ("spokesperson", "councillor", "union leader", "analyst", "resident", "deputy mayor", "lawyer"),
}  # fmt: skip
_NEWS_TEMPLATES = (
    "The {A} {N} in {PLACE} {V} the {N2} on {DAY}.",
    "Officials said the {N} would {Vb} before the end of {MONTH}.",
    "{NAME}, a {ROLE} for the {N}, said the {N2} was {A} but necessary.",
    "According to the {N}, {NUM} residents attended the meeting about the {A} {N2}.",
    "Critics argue that the {N} {V} the {N2} without enough public debate.",
    "The {N2} is expected to cost {NUM} million dollars over {SMALL} years.",
    "In a statement released on {DAY}, the {N} {V} the {A} {N2}.",
    "Residents of {PLACE} have waited {SMALL} years for the {N} to {Vb}.",
    "{NAME} told reporters that the {N} had {V} the {N2} twice this year.",
    "The vote on the {N2} passed by {NUM} to {SMALL}, the {N} confirmed.",
    "Turnout in {PLACE} rose by {PCT} percent compared with the last {A} election.",
    "Talks between the {N} and the {ROLE} are set to {Vb} next {DAY}.",
    "It was not immediately clear whether the {N} would {Vb} after the {N2}.",
    "The {A} {N2} drew protests outside the {N} in {PLACE}.",
)

_SCIENCE_NOUNS = (
    "enzyme", "particle", "sample", "protein", "galaxy", "sensor", "molecule", "cell culture", "neuron",
    "catalyst", "isotope", "fossil", "crystal", "spectrum", "genome", "bacterial strain", "membrane",
    "telescope", "reactor", "sediment core", "ice sheet", "wavelength", "compound", "receptor",
    "plasma", "lattice", "pollinator", "coral reef", "magnetic field", "aerosol",
)  # fmt: skip
_SCIENCE_SLOTS: dict[str, _Slot] = {
    "N": _SCIENCE_NOUNS,
    "N2": (
        "temperature", "pressure", "concentration", "reaction rate", "gene expression", "signal strength",
        "density", "acidity", "growth rate", "energy output", "binding affinity", "diffusion", "salinity",
        "luminosity", "mutation rate", "viscosity",
    ),
    "A": (
        "thermal", "significant", "molecular", "experimental", "stable", "statistical", "magnetic",
        "microbial", "orbital", "synthetic", "anomalous", "quantitative", "isotopic", "marginal",
        "crystalline", "reproducible",
    ),
    "V": (
        "measured", "observed", "isolated", "detected", "simulated", "synthesized", "sequenced",
        "calibrated", "estimated", "replicated", "quantified", "characterized", "sampled", "modeled",
    ),
    "Vb": ("measure", "observe", "isolate", "detect", "simulate", "replicate", "quantify", "predict"),
    "INSTR": ("spectrometer", "microscope", "centrifuge", "probe", "particle detector", "thermocouple"),
}  # fmt: skip
_SCIENCE_TEMPLATES = (
    "The researchers {V} the {N} using a {A} {INSTR}.",
    "Our results suggest that the {N} is more {A} than previously assumed.",
    "We {V} {NUM} samples of the {A} {N} under controlled conditions.",
    "The {N2} increased by {PCT} percent after {SMALL} hours of exposure.",
    "Further work is needed to determine whether the {N} affects the {N2}.",
    "Figure {SMALL} shows the {N2} as a function of the {A} {N}.",
    "No {A} difference in {N2} was {V} between the two groups.",
    "The {N} was {V} at a resolution of {NUM} nanometers.",
    "These findings are consistent with a {A} model of {N2}.",
    "To {Vb} the {N2}, the team cooled the {N} to {NUM} kelvin.",
    "Each {N} was {V} in triplicate to reduce {A} error.",
    "A {A} shift in {N2} was {V} near the {N}.",
    "The hypothesis predicts that {N2} should fall as the {N} ages.",
    "Data from {SMALL} independent laboratories {V} the same {A} trend.",
)

_INGREDIENTS = (
    "flour", "butter", "garlic", "onion", "tomatoes", "lentils", "ginger", "rice", "yogurt", "cinnamon",
    "spinach", "mushrooms", "honey", "lemon juice", "olive oil", "basil", "black pepper", "carrots",
    "chickpeas", "potatoes", "cream", "vanilla", "brown sugar", "eggs", "broth", "parsley", "cumin",
    "paprika", "oats", "walnuts", "leeks", "shallots", "coconut milk", "thyme", "sesame seeds",
)  # fmt: skip
_RECIPE_SLOTS: dict[str, _Slot] = {
    "ING": _INGREDIENTS,
    "TOOL": ("skillet", "saucepan", "mixing bowl", "baking dish", "stockpot", "sheet pan", "wok", "colander"),
    "Vb": (
        "stir", "chop", "simmer", "whisk", "fold", "bake", "roast", "season", "drain", "knead", "saute",
        "sprinkle", "grate", "toss", "mash", "blend", "slice", "dice",
    ),
    "A": (
        "golden", "fragrant", "tender", "crispy", "fresh", "smooth", "glossy", "bubbling", "soft", "fluffy",
        "caramelized", "thick",
    ),
    "DISH": (
        "stew", "casserole", "flatbread", "soup", "salad", "curry", "tart", "pilaf", "risotto", "gratin",
        "pancakes", "porridge", "dumplings", "frittata", "crumble",
    ),
    "QTY": (
        "a pinch", "two tablespoons", "one cup", "half a cup", "a handful", "three cloves", "a teaspoon",
        "two cups", "a splash",
    ),
    "TEMP": _int_slot(160, 230),
    "MIN": _int_slot(3, 45),
}  # fmt: skip
_RECIPE_TEMPLATES = (
    "{Vb} the {ING} in a {TOOL} over medium heat for {MIN} minutes.",
    "Add {QTY} of {ING} and {Vb} until {A}.",
    "Meanwhile, {Vb} the {ING} and set it aside.",
    "Serve the {DISH} warm with a little {ING} on top.",
    "This {DISH} keeps well in the fridge for up to {SMALL} days.",
    "Preheat the oven to {TEMP} degrees and grease a {TOOL}.",
    "Once the {ING} turns {A}, {Vb} in the {ING}.",
    "If the {DISH} looks dry, add {QTY} of {ING}.",
    "My family asks for this {A} {DISH} every {DAY}.",
    "{Vb} everything together in a {TOOL} and let it rest for {MIN} minutes.",
    "You can swap the {ING} for {ING} if you prefer a {A} {DISH}.",
    "Bake for {MIN} minutes, or until the top is {A}.",
    "Season with {ING} and {ING} to taste.",
    "The secret to a {A} {DISH} is to {Vb} the {ING} slowly.",
)

_FORUM_NOUNS = (
    "laptop", "router", "bike", "garden", "game", "mod", "save file", "keyboard", "headphones",
    "landlord", "graphics card", "phone", "printer", "car battery", "guitar amp", "fish tank", "drone",
    "smart watch", "mattress", "espresso machine", "tent", "vpn", "controller", "sourdough starter",
)  # fmt: skip
_FORUM_SLOTS: dict[str, _Slot] = {
    "N": _FORUM_NOUNS,
    "N2": (
        "update", "patch", "warranty", "firmware", "driver", "reset", "setting", "forum rules", "manual",
        "support ticket", "return policy", "beta", "season pass",
    ),
    "A": (
        "weird", "annoying", "decent", "solid", "overpriced", "flaky", "amazing", "sketchy", "noisy",
        "cheap", "underrated", "fine", "awful",
    ),
    "V": (
        "tried", "restarted", "installed", "returned", "fixed", "broke", "upgraded", "bought", "reset",
        "replaced", "cleaned", "rebuilt", "downgraded", "unplugged",
    ),
    "USER": ("quietfox", "rustbucket", "nightowl88", "p4nda", "grumpycat", "tinkerer", "mossy", "kettle42"),
    "DUR": ("a week", "two days", "a month", "an hour", "three weeks", "all weekend"),
}  # fmt: skip
_FORUM_TEMPLATES = (
    "Has anyone else had trouble with the {N} after the last {N2}?",
    "I {V} my {N} twice and it still won't work.",
    "Thanks for the tip, the {N2} fixed it for me!",
    "Honestly I think the {N} is {A} but your mileage may vary.",
    "Edit: {V} the {N} again and now it works.",
    "Any advice would be appreciated, I'm pretty stuck here.",
    "lol same thing happened to my {N} last {DAY}.",
    "Quoting {USER}: just roll back the {N2} and wait for a fix.",
    "Been using this {N} for {DUR} and it's been {A} so far.",
    "Does the {N2} void the warranty on the {N}?",
    "Not sure why people hate the {N}, mine is {A}.",
    "Update: I {V} the {N} and the {A} noise is gone.",
    "Can a mod move this thread to the {N} section?",
    "Same here, {V} everything and nothing changed after {DUR}.",
)

_CODE_VERBS = (
    "load", "parse", "build", "fetch", "merge", "render", "validate", "flush", "encode", "resolve", "sort",
    "filter", "split", "normalize", "compact", "retry", "emit", "collect",
)  # fmt: skip
_CODE_NOUNS = (
    "config", "buffer", "token", "record", "cache", "index", "payload", "header", "queue", "schema",
    "batch", "row", "chunk", "segment", "entry", "node", "offset", "path",
)  # fmt: skip
_CODE_VARS = ("items", "result", "total", "count", "data", "rows", "value", "out", "acc", "parts", "key")
_CODE_ATTRS = ("size", "name", "offset", "value", "weight", "length", "status", "kind")


def _fn_name(rng: random.Random) -> str:
    return f"{rng.choice(_CODE_VERBS)}_{rng.choice(_CODE_NOUNS)}"


_CODE_SLOTS: dict[str, _Slot] = {
    "FN": _fn_name,
    "N": _CODE_NOUNS,
    "Vs": (
        "loads", "parses", "builds", "fetches", "merges", "renders", "validates", "flushes", "encodes",
        "resolves", "sorts", "filters",
    ),
    "V": ("fixed", "refactored", "removed", "simplified", "rewrote", "optimized", "broke", "deprecated"),
    "A": (
        "null", "empty", "nested", "async", "legacy", "default", "cached", "recursive", "unicode", "global",
    ),
    "VAR": _CODE_VARS,
}  # fmt: skip
_CODE_TEMPLATES = (
    "The {FN} function {Vs} the {N} and returns a new {N}.",
    "If the {N} is {A}, the loop exits early.",
    "Run the tests again after you change the {N} handling.",
    "This version {V} the {A} {N} code path.",
    "Note that {FN} is not thread safe.",
    "I {V} the {A} branch in {FN} because it was never reached.",
    "The variable {VAR} holds the {N} until {FN} is called.",
    "Calling {FN} twice {Vs} the {N} a second time, which is wasteful.",
    "Here is a minimal example that reproduces the {A} {N} bug.",
    "The helper below {Vs} each {N} in a single pass.",
    "We {V} the {A} check so the {N} stays consistent.",
    "Pass the {N} by reference to avoid copying the {VAR} list.",
)


def _code_block(rng: random.Random) -> str:
    """A short program fragment; layouts vary so code docs don't all share the same shingles."""
    fn, helper = _fn_name(rng), _fn_name(rng)
    arg, item = rng.choice(_CODE_NOUNS), rng.choice(("item", "x", "entry", "elem", "it"))
    var, acc = rng.sample(_CODE_VARS, 2)
    attr, attr2 = rng.sample(_CODE_ATTRS, 2)
    n = rng.randint(0, 64)
    layout = rng.randrange(5)
    if layout == 0:
        lines = [
            f"def {fn}({arg}, limit={n}):",
            f"    {var} = {helper}({arg})",
            f"    if {var} is None:",
            "        return []",
            f"    {acc} = 0",
            f"    for {item} in {var}.{attr}:",
            f"        {acc} += {item}.{attr2}",
            f"    return {acc}",
        ]
    elif layout == 1:
        lines = [
            f"function {fn}({arg}) {{",
            f"  let {var} = {helper}({arg}.{attr});",
            f"  if (!{var}) return null;",
            f"  for (const {item} of {var}) {{",
            f"    {acc}.push({item}.{attr2});",
            "  }",
            f"  return {acc};",
            "}",
        ]
    elif layout == 2:
        lines = [
            f"PROCEDURE {fn.upper()}({arg})",
            f"  SET {acc} TO {n}",
            f"  FOR EACH {item} IN {arg}",
            f"    IF {item}.{attr} > {acc} THEN",
            f"      SET {acc} TO {item}.{attr}",
            "    END IF",
            "  END FOR",
            f"  RETURN {acc}",
            "END PROCEDURE",
        ]
    elif layout == 3:
        lines = [
            f"class {_capitalise(arg)}{_capitalise(rng.choice(_CODE_NOUNS))}:",
            f"    def __init__(self, {var}):",
            f"        self.{var} = {var}",
            f"        self.{attr} = {n}",
            "",
            f"    def {fn}(self):",
            f"        return [{item} for {item} in self.{var} if {item}.{attr2}]",
        ]
    else:
        lines = [
            f'{var} = {helper}("{arg}.json")',
            f"{acc} = {{}}",
            f"for {item} in {var}:",
            f"    {acc}[{item}.{attr}] = {item}",
            f"print(len({acc}), {n})",
        ]
    return "\n".join(lines)


_DOMAINS: dict[str, tuple[tuple[str, ...], dict[str, _Slot]]] = {
    "news": (_NEWS_TEMPLATES, _NEWS_SLOTS),
    "science": (_SCIENCE_TEMPLATES, _SCIENCE_SLOTS),
    "recipes": (_RECIPE_TEMPLATES, _RECIPE_SLOTS),
    "forum": (_FORUM_TEMPLATES, _FORUM_SLOTS),
    "code": (_CODE_TEMPLATES, _CODE_SLOTS),
}

# Words a page is "about": spam stuffs them, URL slugs are built from them.
_TOPIC_WORDS: dict[str, tuple[str, ...]] = {
    "news": _NEWS_NOUNS,
    "science": _SCIENCE_NOUNS,
    "recipes": _INGREDIENTS,
    "forum": _FORUM_NOUNS,
    "code": _CODE_NOUNS,
}


def _sentence(rng: random.Random, domain: str) -> str:
    templates, slots = _DOMAINS[domain]
    return _capitalise(_fill(rng, rng.choice(templates), {**_COMMON_SLOTS, **slots}))


def _paragraph_units(
    rng: random.Random,
    domain: str,
    target_words: int,
    voice: float = 0.0,
    voice_templates: Sequence[str] = (),
) -> list[str]:
    """Paragraphs whose word total first reaches `target_words` (overshoot: at most one sentence/block);
    each sentence is one of `voice_templates` with probability `voice`, else the domain's prose."""
    paragraphs: list[str] = []
    words = 0
    while words < target_words:
        if domain == "code" and paragraphs and rng.random() < 0.5:
            para = _code_block(rng)
            words += _word_count(para)
        else:
            sents: list[str] = []
            for _ in range(rng.randint(2, 4)):
                if voice and rng.random() < voice:
                    sents.append(_site_sentence(rng, domain, voice_templates))
                else:
                    sents.append(_sentence(rng, domain))
                words += _word_count(sents[-1])
                if words >= target_words:
                    break
            para = " ".join(sents)
        paragraphs.append(para)
    if len(paragraphs) == 1:
        # Clean docs are promised to be multi-paragraph; split the lone paragraph at a sentence boundary.
        sents = re.split(r"(?<=[.!?]) ", paragraphs[0])
        if len(sents) >= 2:
            cut = len(sents) // 2
            paragraphs = [" ".join(sents[:cut]), " ".join(sents[cut:])]
    return paragraphs


def _clean_text(rng: random.Random, domain: str, voice_max: float = 0.0) -> str:
    # Skewed towards shorter docs keeps the default corpus at a few MB while still covering 80-600 words.
    target = 90 + int(450 * rng.random() ** 3)
    # Real articles vary in how much of the site's own voice they carry. No draw at all when there is
    # none, so the easy corpus stays the same for a seed.
    voice = voice_max * rng.random() if voice_max else 0.0
    return "\n\n".join(_paragraph_units(rng, domain, target, voice, _SITE_TEMPLATES))


def _long_text(rng: random.Random, domain: str) -> str:
    target = 3000 + int(4900 * rng.random() ** 3)
    return "\n\n".join(_paragraph_units(rng, domain, target))


# ---------------------------------------------------------------------------------------------------------
# Planted defects


_PSEUDO_LATIN = (
    "dolor", "amet", "velis", "quarum", "tendo", "morilla", "sepat", "ulmo", "farrex", "nostra", "cresi",
    "vantum", "iblis", "peronet", "sallum", "ordo", "mira", "tacet", "lumen", "civa", "brevo", "quosa",
)  # fmt: skip
_COOKIE_LINES = (
    "We use cookies to improve your experience on our site.",
    "By continuing to browse you agree to our use of cookies.",
    "Accept all | Reject all | Manage preferences",
    "Please enable JavaScript in your browser to view this page.",
    "JavaScript is disabled. Some features may not work as expected.",
    "This site uses cookies and similar technologies for analytics and advertising.",
    "Your browser is out of date. Update your browser for more security and speed.",
)
_NAV_LINES = (
    "Home | About | Contact | Privacy Policy | Terms of Service",
    "Sign in | Register | Forgot password?",
    "Share on: Facebook | Twitter | Email | Print",
    "Copyright (c) All rights reserved.",
    "Subscribe to our newsletter for the latest updates!",
    "Skip to main content",
    "Back to top ^",
)
_TEASERS = (
    "Top {SMALL} ways to fix your {N}",
    "You won't believe what happened to the {N}",
    "Read more about the {A} {N}",
    "Why everyone is talking about the {N}",
    "The one {N} trick experts don't want you to know",
    "Continue reading about {PLACE}",
)
_SPAM_KEYWORDS = (
    "cheap", "best", "discount", "free", "online", "deal", "pills", "casino", "loans", "followers",
    "replica watches", "crypto", "bonus", "prize", "weight loss",
)  # fmt: skip
_SYMBOL_LINES = (
    "$$$ >>> WIN BIG NOW <<< $$$",
    "!!! 100% FREE !!! *** LIMITED OFFER *** !!!",
    "###### CLICK ===> HERE <=== ######",
    "@@@ $$$ %%% &&& *** ### !!!",
    "~~~ ### BEST PRICE ### ~~~ +++ ONLY TODAY +++",
    "=> => => CLAIM YOUR PRIZE <= <= <=",
    "*$*$*$*$*$*$*$*$*$*$*$*$",
)
_SHORT_JUNK = (
    "click here", "404 not found", "page not found", "loading...", "subscribe now", "share this",
    "next page", "sign in to continue", "access denied", "error 500 internal server error",
    "this page intentionally left blank", "coming soon", "read more", "untitled", "test", "ok",
    "redirecting...", "under construction", "no results found for your search", "session expired",
    "click here to download", "403 forbidden", "javascript required",
)  # fmt: skip


# The site's own voice: calls to read on, update notes, pitches. Clean pages carry from none to much of
# it, thin and SEO pages are mostly made of it, so the classes share phrases and differ in proportion.
_SITE_TEMPLATES = (
    "Looking for more on the {T}? Read our full guide to the {T}.",
    "This page about the {T} was last updated on {DAY}.",
    "Our team in {PLACE} has followed the {T} for {SMALL} years.",
    "Tell us what you think about the {T} in the comments below.",
    "Find everything you need to know about the {T} in one place.",
    "We collected the best {T} tips from readers in {PLACE}.",
    "Here is what you should know about the {T} this {MONTH}.",
    "Sign up to get the latest {T} stories every {DAY}.",
    "More stories about the {T} are on the next page.",
)
# Search-engine copy in a domain's own words: no blocklisted terms and proper sentences, so the rule
# filters let most of it through and only a learned classifier can tell it from an article.
_SEO_TEMPLATES = (
    "Best {T} in {PLACE} at the lowest price, compare {T} offers today.",
    "Buy {T} online and save up to {PCT} percent on every {T} order.",
    "Top rated {T} guides, {T} reviews and {T} news for {PLACE} and nearby.",
    "Why pay more for the {T}? Our {T} experts in {PLACE} found the best {T} for you.",
    "Get the {T} you deserve, order now and get free delivery on the {T}.",
    "Cheap {T}, quality {T} and fast {T} service in {PLACE}.",
    "The number one {T} site for {PLACE}, trusted by {NUM} happy customers.",
    "Everything about the {T}: {T} tips, {T} prices and {T} news, updated every {DAY}.",
)


def _site_sentence(rng: random.Random, domain: str, templates: Sequence[str] = _SITE_TEMPLATES) -> str:
    return _fill(rng, rng.choice(templates), {**_COMMON_SLOTS, "T": _TOPIC_WORDS[domain]})


def _thin_text(rng: random.Random, domain: str) -> str:
    """Mostly site furniture around a few real sentences: low value, but plausible prose."""
    # Article-length on purpose: a length cue alone would separate the classes.
    target = 90 + int(450 * rng.random() ** 3)
    voice = rng.uniform(*THIN_VOICE)
    parts = _paragraph_units(rng, domain, target, voice, _SITE_TEMPLATES)
    style = rng.randrange(4)
    if style == 0:
        parts.insert(0, rng.choice(_COOKIE_LINES))
    elif style == 1:
        parts.append(rng.choice(_NAV_LINES))
    return "\n\n".join(parts)


def _seo_text(rng: random.Random, domain: str) -> str:
    """Keyword-led search copy stitched around borrowed domain sentences."""
    target = 90 + int(450 * rng.random() ** 3)
    voice = rng.uniform(*SEO_VOICE)
    return "\n\n".join(_paragraph_units(rng, domain, target, voice, _SEO_TEMPLATES + _SITE_TEMPLATES))


def _boilerplate_text(rng: random.Random, domain: str, hard: bool) -> str:
    if hard and rng.random() < THIN_SHARE:
        return _thin_text(rng, domain)
    teaser_slots = {**_COMMON_SLOTS, **_DOMAINS[domain][1], "N": _TOPIC_WORDS[domain]}
    parts: list[str] = []
    for style in rng.sample(range(4), rng.randint(2, 4)):
        if style == 0:
            parts.append("\n".join(rng.sample(_COOKIE_LINES, rng.randint(2, 4))))
        elif style == 1:
            words = [rng.choice(_PSEUDO_LATIN) for _ in range(rng.randint(30, 90))]
            parts.append("Lorem ipsum " + " ".join(words) + ".")
        elif style == 2:
            line = rng.choice(_NAV_LINES)
            parts.append("\n".join([line] * rng.randint(4, 15)))
        else:
            bullets = [
                f"* {_fill(rng, rng.choice(_TEASERS), teaser_slots)}..." for _ in range(rng.randint(4, 10))
            ]
            parts.append("\n".join(bullets))
    return "\n\n".join(parts)


def _spam_text(rng: random.Random, domain: str, hard: bool) -> str:
    if hard and rng.random() < SEO_SHARE:
        return _seo_text(rng, domain)
    topic = rng.choice(_TOPIC_WORDS[domain])
    lines: list[str] = []
    for _ in range(rng.randint(3, 8)):
        if rng.random() < 0.55:
            kws = rng.sample(_SPAM_KEYWORDS, 4)
            lines.append(" ".join(f"{k} {topic}" for k in kws) + f" {kws[0]} {topic} {kws[0]} {topic}")
        else:
            lines.append(rng.choice(_SYMBOL_LINES))
    return "\n".join(lines)


def _short_text(rng: random.Random) -> str:
    text = rng.choice(_SHORT_JUNK)
    if rng.random() < 0.5:
        # A site name or page counter makes most junk pages unique, so they are not also exact duplicates.
        text += rng.choice((f" | {rng.choice(_PLACES)}", f" - page {rng.randint(2, 99)}"))
    style = rng.randrange(3)
    if style == 1:
        text = text.upper()
    elif style == 2:
        text = _capitalise(text)
    return text


_EMAIL_DOMAINS = ("example.com", "example.org", "example.net")
_DOC_IP_PREFIXES = ("192.0.2", "198.51.100", "203.0.113")  # RFC 5737 documentation ranges


def _email(rng: random.Random) -> str:
    first, last = rng.choice(_FIRST_NAMES).lower(), rng.choice(_LAST_NAMES).lower()
    local = rng.choice((f"{first}.{last}", f"{first}{rng.randint(1, 99)}", f"{first[0]}{last}"))
    return f"{local}@{rng.choice(_EMAIL_DOMAINS)}"


def _phone(rng: random.Random) -> str:
    # 555-0100..555-0199 is the block reserved for fictional use.
    area = rng.randint(201, 989)
    line = f"555-01{rng.randint(0, 99):02d}"
    return rng.choice((line, f"({area}) {line}", f"{area}-{line}"))


def _card(rng: random.Random, valid: bool) -> str:
    payload = rng.choice("45") + "".join(str(rng.randrange(10)) for _ in range(14))
    check = _luhn_check_digit(payload)
    if not valid:
        check = (check + rng.randint(1, 9)) % 10
    digits = payload + str(check)
    sep = rng.choice((" ", "-"))
    return sep.join(digits[i : i + 4] for i in range(0, 16, 4))


_PII_TEMPLATES = {
    "email": (
        "You can reach me at {} if you have questions.",
        "Send corrections to {} and we will update the page.",
    ),
    "phone": ("Call the front desk at {} before noon.", "For bookings, phone {} during office hours."),
    "ip": (
        "The server at {} stopped responding last night.",
        "Requests from {} were blocked by the firewall.",
    ),
    "card": ("My card {} was charged twice for the same order.", "Payment was made with card number {}."),
}


class _PiiPlanter:
    """Inserts PII sentences into clean text; alternates valid/invalid cards so both always occur."""

    def __init__(self, voice_max: float) -> None:
        self.cards = 0
        self.voice_max = voice_max

    def __call__(self, rng: random.Random, domain: str, force_card: bool) -> str:
        paragraphs = _clean_text(rng, domain, self.voice_max).split("\n\n")
        kinds = rng.sample(("email", "phone", "ip", "card"), rng.randint(1, 3))
        if force_card and "card" not in kinds:
            kinds.append("card")
        for kind in kinds:
            if kind == "email":
                value = _email(rng)
            elif kind == "phone":
                value = _phone(rng)
            elif kind == "ip":
                value = f"{rng.choice(_DOC_IP_PREFIXES)}.{rng.randint(1, 254)}"
            else:
                value = _card(rng, valid=self.cards % 2 == 0)
                self.cards += 1
            sentence = rng.choice(_PII_TEMPLATES[kind]).format(value)
            # Prose paragraphs only: a sentence spliced into a code block would read as a code line.
            prose = [i for i, p in enumerate(paragraphs) if re.search(r"[.!?]$", p)] or [0]
            i = rng.choice(prose)
            sents = re.split(r"(?<=[.!?]) ", paragraphs[i])
            sents.insert(rng.randint(0, len(sents)), sentence)
            paragraphs[i] = " ".join(sents)
        return "\n\n".join(paragraphs)


_CYRILLIC_WORDS = (
    "привет", "вопрос", "ответ", "спасибо", "помогите", "форум", "ошибка", "работает", "не", "как", "почему",
    "сегодня", "друзья", "компьютер", "игра", "новый", "старый", "очень", "быстро", "медленно", "где",
    "найти", "драйвер", "обновление", "тоже", "это", "мой", "сломался", "купил", "вчера",
)  # fmt: skip
_CJK_WORDS = (
    "我们", "今天", "问题", "谢谢", "论坛", "代码", "学习", "朋友", "时间", "天气", "喜欢", "这个", "可以",
    "没有", "知道", "电脑", "游戏", "更新", "已经", "还是", "怎么", "为什么", "大家", "觉得", "非常",
    "手机", "昨天", "买了",
)  # fmt: skip


def _non_latin_text(rng: random.Random, cyrillic: bool) -> str:
    paragraphs = []
    for _ in range(rng.randint(2, 5)):
        sents = []
        for _ in range(rng.randint(2, 5)):
            if cyrillic:
                words = [rng.choice(_CYRILLIC_WORDS) for _ in range(rng.randint(4, 10))]
                sents.append(_capitalise(" ".join(words)) + rng.choice(".?!"))
            else:
                words = [rng.choice(_CJK_WORDS) for _ in range(rng.randint(4, 10))]
                # Ideographic full stop and fullwidth ?/!, escaped so the source stays unambiguous to read.
                sents.append("".join(words) + rng.choice("\u3002\uff1f\uff01"))
        paragraphs.append((" " if cyrillic else "").join(sents))
    return "\n\n".join(paragraphs)


def _exact_variant(rng: random.Random, text: str) -> str:
    """Same text up to case/whitespace, so only a normalised-text hash catches it."""
    style = rng.randrange(4)
    if style == 0:
        return text.upper()
    if style == 1:
        return text.lower()
    if style == 2:
        return "  " + text.replace(" ", "  ") + "\n"
    return text.replace("\n\n", "\n \t\n").replace(". ", ".   ")


def _near_dup_text(rng: random.Random, text: str, rate: float, domain: str) -> str:
    """Word-level substitute/insert/delete edits at `rate` of word positions, keeping the layout."""
    tokens = re.findall(r"\S+|\s+", text)
    lead = tokens.pop(0) if tokens and tokens[0].isspace() else ""
    words: list[list[str]] = []  # [word, separator that follows it]
    for tok in tokens:
        if tok.isspace():
            words[-1][1] = tok
        else:
            words.append([tok, ""])
    vocab: list[str] = [w for v in _DOMAINS[domain][1].values() if not callable(v) for w in v]
    n_edits = max(1, round(rate * len(words)))
    positions = sorted(rng.sample(range(len(words)), n_edits), reverse=True)
    for i in positions:  # right to left so earlier indices stay valid
        op = rng.randrange(3)
        new = rng.choice(vocab).split()[0]
        if op == 0:
            words[i][0] = new
        elif op == 1:
            words.insert(i + 1, [new, words[i][1]])
            words[i][1] = " "
        elif len(words) > 1:
            # Keep a paragraph/line break that followed the deleted word.
            if i > 0 and "\n" in words[i][1]:
                words[i - 1][1] = words[i][1]
            del words[i]
    out = lead + "".join(w + sep for w, sep in words)
    if out == text:  # every substitution drew the original word; force a visible edit
        out = text + " " + rng.choice(vocab).split()[0]
    return out


# ---------------------------------------------------------------------------------------------------------
# Corpus assembly


@dataclass(frozen=True)
class WebSample:
    """The web table and its planted-truth table (same ids, same row order)."""

    table: pa.Table
    truth: pa.Table


@dataclass
class _Doc:
    key: int
    kind: str
    domain: str
    text: str
    source: int | None = None
    edit_rate: float | None = None
    jaccard: float | None = None


def _plan_counts(n: int, shares: dict[str, float], rest: str, min_each: bool) -> dict[str, int]:
    counts = {k: round(n * s) for k, s in shares.items()}
    if min_each:
        counts = {k: max(1, c) for k, c in counts.items()}
    # `rest` (clean docs, duplicate sources) must keep at least one row whenever n > 0.
    while n > 0 and sum(counts.values()) > n - 1 and any(counts.values()):
        counts[max(counts, key=lambda k: (counts[k], k))] -= 1
    counts[rest] = n - sum(counts.values())
    return counts


def _pick_domain(rng: random.Random) -> str:
    return rng.choices(list(DOMAIN_WEIGHTS), weights=list(DOMAIN_WEIGHTS.values()))[0]


def _slug(rng: random.Random, domain: str, used: set[str]) -> str:
    while True:
        words = [w.replace(" ", "-") for w in rng.sample(_TOPIC_WORDS[domain], rng.randint(2, 3))]
        slug = "-".join(words) + f"-{rng.randrange(10**6):06d}"
        if slug not in used:
            used.add(slug)
            return slug


def generate_web(n_docs: int = 3000, seed: int = 0, hard_quality: bool = False) -> WebSample:
    """Build a shuffled web-like corpus of `n_docs` docs with planted defects and its truth table.

    `hard_quality` plants thin pages and SEO copy among the boilerplate and spam, more of both, and some
    of the site's own voice in clean pages, so a quality classifier ranks rather than separates (held-out
    ROC AUC about 0.9 instead of 1.0). Off, a seed gives the same corpus it always has.
    """
    if n_docs < 0:
        raise ValueError(f"n_docs must be >= 0, got {n_docs}")
    # A string seed goes through SHA-512 in random.Random, so it is stable and independent of hash().
    rng = random.Random(f"thresher-web-{seed}")
    shares = HARD_QUALITY_SHARES if hard_quality else KIND_SHARES
    voice_max = CLEAN_VOICE_MAX if hard_quality else 0.0
    counts = _plan_counts(n_docs, shares, "clean", min_each=n_docs >= 40)
    docs: list[_Doc] = []

    def add(kind: str, domain: str, text: str, source: int | None = None, rate: float | None = None) -> None:
        docs.append(_Doc(len(docs), kind, domain, text, source, rate))

    for _ in range(counts["clean"]):
        d = _pick_domain(rng)
        add("clean", d, _clean_text(rng, d, voice_max))
    sources = list(docs)
    for _ in range(counts["long"]):
        d = _pick_domain(rng)
        add("long", d, _long_text(rng, d))
    planter = _PiiPlanter(voice_max)
    for i in range(counts["pii"]):
        d = _pick_domain(rng)
        add("pii", d, planter(rng, d, force_card=i < 2))
    for _ in range(counts["boilerplate"]):
        d = _pick_domain(rng)
        add("boilerplate", d, _boilerplate_text(rng, d, hard_quality))
    for _ in range(counts["spam"]):
        d = _pick_domain(rng)
        add("spam", d, _spam_text(rng, d, hard_quality))
    for _ in range(counts["short"]):
        add("short", _pick_domain(rng), _short_text(rng))
    for i in range(counts["non_latin"]):
        add("non_latin", "forum", _non_latin_text(rng, cyrillic=i % 2 == 0))
    for i in range(counts["exact_dup"]):
        src = rng.choice(sources)
        # A quarter differ only by case/whitespace: a raw-bytes hash misses them, a normalised one must not.
        text = _exact_variant(rng, src.text) if i % 4 == 3 else src.text
        add("exact_dup", src.domain, text, src.key)
    for i in range(counts["near_dup"]):
        src = rng.choice(sources)
        rate = NEAR_DUP_RATES[i % len(NEAR_DUP_RATES)]
        add("near_dup", src.domain, _near_dup_text(rng, src.text, rate, src.domain), src.key, rate)
    for doc in docs:
        if doc.source is not None:
            doc.jaccard = jaccard_5gram(doc.text, docs[doc.source].text)

    order = list(range(len(docs)))
    rng.shuffle(order)
    # Put each source before all of its copies, reusing the group's own slots so the spread stays random.
    groups: dict[int, list[int]] = {}
    for doc in docs:
        if doc.source is not None:
            groups.setdefault(doc.source, [doc.source]).append(doc.key)
    pos = {key: p for p, key in enumerate(order)}
    for src, members in groups.items():
        slots = sorted(pos[m] for m in members)
        order[slots[0]] = src
        for slot, member in zip(slots[1:], [m for m in members if m != src], strict=True):
            order[slot] = member

    ids = {key: f"web-{p:06d}" for p, key in enumerate(order)}
    used: set[str] = set()
    rows = [docs[k] for k in order]
    urls = [f"https://{d.domain}.example/{_slug(rng, d.domain, used)}" for d in rows]
    table = pa.Table.from_pydict(
        {
            "id": [ids[d.key] for d in rows],
            "text": [d.text for d in rows],
            "domain": [d.domain for d in rows],
            "url": urls,
        },
        schema=WEB_SCHEMA,
    )
    truth = pa.Table.from_pydict(
        {
            "id": [ids[d.key] for d in rows],
            "kind": [d.kind for d in rows],
            "source_id": [None if d.source is None else ids[d.source] for d in rows],
            "edit_rate": [d.edit_rate for d in rows],
            "jaccard_5gram": [d.jaccard for d in rows],
        },
        schema=TRUTH_SCHEMA,
    )
    return WebSample(table=table, truth=truth)


# ---------------------------------------------------------------------------------------------------------
# Instruction set


_ARITH_TEMPLATES: dict[str, tuple[tuple[str, str], ...]] = {
    "add": (
        ("What is {a} + {b}?", ""),
        ("Add {a} and {b}.", ""),
        ("Compute the sum of {a} and {b}.", ""),
        ("Evaluate the expression.", "{a} + {b}"),
    ),
    "sub": (
        ("What is {a} - {b}?", ""),
        ("Subtract {b} from {a}.", ""),
        ("Compute {a} minus {b}.", ""),
        ("Evaluate the expression.", "{a} - {b}"),
    ),
    "mul": (
        ("What is {a} * {b}?", ""),
        ("What is {a} times {b}?", ""),
        ("Multiply {a} by {b}.", ""),
        ("Compute the product of {a} and {b}.", ""),
        ("Evaluate the expression.", "{a} * {b}"),
    ),
}
_ARITH_ANSWERS = ("{r}", "The answer is {r}.", "{r}.", "Result: {r}")

_PEOPLE = (
    "farmer", "teacher", "baker", "pilot", "neighbor", "student", "driver", "gardener", "painter", "doctor",
    "clerk", "sailor",
)  # fmt: skip
_THINGS = (
    "basket", "window", "garden", "letter", "fence", "bicycle", "report", "boat", "map", "lamp", "ladder",
    "door", "kettle", "parcel",
)  # fmt: skip
_PLAIN_ADJ = ("tall", "quiet", "young", "busy", "patient", "cheerful", "tired", "careful", "old", "clever")
_VERB_FORMS = (
    ("carries", "carried"), ("paints", "painted"), ("watches", "watched"), ("fixes", "fixed"),
    ("builds", "built"), ("finds", "found"), ("moves", "moved"), ("cleans", "cleaned"), ("opens", "opened"),
    ("checks", "checked"), ("sells", "sold"), ("writes", "wrote"), ("brings", "brought"), ("hides", "hid"),
)  # fmt: skip
_TIMES = ("every morning", "every evening", "on weekends", "each Monday", "in the summer", "after lunch")
_PRODUCTS = ("kettle", "backpack", "desk lamp", "blender", "umbrella", "phone case", "rain jacket", "chair")
_POS_WORDS = ("excellent", "sturdy", "delightful", "comfortable", "reliable", "wonderful", "well made")
_NEG_WORDS = ("flimsy", "disappointing", "broken", "noisy", "awful", "useless", "poorly made")
_CATEGORIES: dict[str, tuple[str, ...]] = {
    "fruits": ("apple", "banana", "pear", "plum", "cherry", "grape", "mango", "lemon", "apricot", "fig"),
    "colors": ("red", "blue", "green", "yellow", "purple", "orange", "brown", "teal", "violet", "gray"),
    "animals": ("otter", "badger", "heron", "fox", "rabbit", "owl", "beaver", "lynx", "moose", "seal"),
    "vegetables": ("carrot", "leek", "onion", "potato", "celery", "radish", "turnip", "cabbage", "pea"),
    "musical instruments": ("violin", "flute", "drum", "cello", "trumpet", "harp", "oboe", "banjo", "piano"),
}
_NUMBER_WORDS = ("two", "three", "four", "five")
_SENTIMENT_PROMPTS = (
    "Classify the sentiment of this review as positive or negative.",
    "Is the following review positive or negative?",
)
_EMPTYISH = ("", " ", "N/A", "...", "I don't know.", "?")


def _simple_sentence(rng: random.Random) -> tuple[str, str]:
    """A sentence in the present tense and the same sentence in the past tense."""
    subject = f"The {rng.choice(_PLAIN_ADJ)} {rng.choice(_PEOPLE)}"
    rest = f"the {rng.choice(_THINGS)} {rng.choice(_TIMES)}."
    present, past = rng.choice(_VERB_FORMS)
    return f"{subject} {present} {rest}", f"{subject} {past} {rest}"


def _arithmetic_row(rng: random.Random, wrong: bool) -> tuple[str, str, str]:
    op = rng.choice(("add", "sub", "mul"))
    if op == "mul":
        a, b = rng.randint(2, 99), rng.randint(2, 99)
        r = a * b
    else:
        a, b = rng.randint(2, 999), rng.randint(2, 999)
        r = a + b if op == "add" else a - b
    if wrong:
        # Plausible slips (off by a little, or by a place value) rather than obviously absurd numbers.
        r += rng.choice((-100, -10, -2, -1, 1, 2, 10, 100))
    instruction, inp = rng.choice(_ARITH_TEMPLATES[op])
    return instruction.format(a=a, b=b), inp.format(a=a, b=b), rng.choice(_ARITH_ANSWERS).format(r=r)


def _rewrite_row(rng: random.Random) -> tuple[str, str, str]:
    present, past = _simple_sentence(rng)
    style = rng.randrange(5)
    if style == 0:
        return "Rewrite the following sentence in the past tense.", present, past
    if style == 1:
        return "Convert the following sentence to uppercase.", present, present.upper()
    if style == 2:
        return (
            "Capitalize the first letter of every word in this sentence.",
            present,
            " ".join(_capitalise(w) for w in present.split()),
        )
    if style == 3:
        words = present.rstrip(".").split()
        return "Reverse the order of the words in this phrase.", " ".join(words), " ".join(reversed(words))
    thing = next(t for t in _THINGS if re.search(rf"\b{t}\b", present))
    new = rng.choice([t for t in _THINGS if t != thing])
    out = re.sub(rf"\b{thing}\b", new, present)
    return f'Replace the word "{thing}" with "{new}" in the sentence below.', present, out


def _classify_row(rng: random.Random) -> tuple[str, str, str]:
    style = rng.randrange(3)
    if style == 0:
        positive = rng.random() < 0.5
        words = _POS_WORDS if positive else _NEG_WORDS
        product = rng.choice(_PRODUCTS)
        rec = "would happily recommend it" if positive else "would not recommend it"
        review = f"The {product} is {rng.choice(words)} and {rng.choice(words)}. I {rec}."
        instr = rng.choice(_SENTIMENT_PROMPTS)
        return instr, review, "positive" if positive else "negative"
    if style == 1:
        domain = _pick_domain(rng)
        instr = "Which category does this text belong to? Choose from news, science, recipes, forum, or code."
        return instr, _sentence(rng, domain), domain
    n = rng.randint(1, 9999)
    return f"Is {n} even or odd?", "", "even" if n % 2 == 0 else "odd"


def _qa_row(rng: random.Random) -> tuple[str, str, str]:
    style = rng.randrange(4)
    if style < 2:
        place = rng.choice(_PLACES)
        people, length, year = rng.randint(800, 90000), rng.randint(40, 2400), rng.randint(1820, 2019)
        context = (
            f"{place} is a town with {people} residents. "
            f"Its main bridge is {length} meters long and was opened in {year}."
        )
        qa = (
            (f"How many residents does {place} have?", str(people)),
            (f"How long is the main bridge in {place}?", f"{length} meters"),
            (f"In what year was the bridge in {place} opened?", str(year)),
        )
        q, a = rng.choice(qa)
        return f"Answer the question using the text. {q}", context, a
    if style == 2:
        word = rng.choice([w for v in _CATEGORIES.values() for w in v] + list(_THINGS))
        return f'How many letters are in the word "{word}"?', "", str(len(word))
    a, b = rng.sample(range(1, 5000), 2)
    return f"Which number is larger, {a} or {b}?", "", str(max(a, b))


def _list_row(rng: random.Random) -> tuple[str, str, str]:
    style = rng.randrange(3)
    if style == 0:
        k = rng.randint(2, 5)
        category = rng.choice(list(_CATEGORIES))
        items = rng.sample(_CATEGORIES[category], k)
        return f"List {_NUMBER_WORDS[k - 2]} {category}.", "", "\n".join(f"- {x}" for x in items)
    if style == 1:
        words = rng.sample([w for v in _CATEGORIES.values() for w in v], rng.randint(4, 7))
        return "Sort the following words alphabetically.", ", ".join(words), ", ".join(sorted(words))
    lo = rng.randint(1, 80)
    hi = lo + rng.randint(4, 14)
    evens = [str(x) for x in range(lo, hi + 1) if x % 2 == 0]
    return f"List the even numbers from {lo} to {hi}, inclusive.", "", ", ".join(evens)


_TASK_BUILDERS: dict[str, Callable[[random.Random], tuple[str, str, str]]] = {
    "rewrite": _rewrite_row,
    "classify": _classify_row,
    "qa": _qa_row,
    "list": _list_row,
}


def _poor_output(rng: random.Random, good: str) -> str:
    style = rng.randrange(3)
    if style == 0 and len(good) >= 6:
        return good[: max(1, len(good) // 3)]  # truncated mid-answer
    if style == 1:
        return _sentence(rng, "forum")  # off-topic
    return rng.choice(_EMPTYISH)


def generate_instructions(n_rows: int = 1000, seed: int = 0) -> pa.Table:
    """Instruction/response rows over five task types with planted wrong and poor answers."""
    if n_rows < 0:
        raise ValueError(f"n_rows must be >= 0, got {n_rows}")
    rng = random.Random(f"thresher-instructions-{seed}")
    shares = {k: v for k, v in TASK_SHARES.items() if k != "arithmetic"}
    counts = _plan_counts(n_rows, shares, "arithmetic", min_each=n_rows >= 10)
    rows: list[tuple[str, str, str, str, bool]] = []
    n_arith = counts["arithmetic"]
    wrong = set(rng.sample(range(n_arith), round(ARITHMETIC_WRONG_SHARE * n_arith)))
    for i in range(n_arith):
        rows.append((*_arithmetic_row(rng, wrong=i in wrong), "arithmetic", i not in wrong))
    for task, build in _TASK_BUILDERS.items():
        n = counts[task]
        poor = set(rng.sample(range(n), round(POOR_OUTPUT_SHARE * n)))
        for i in range(n):
            instruction, inp, out = build(rng)
            if i in poor:
                rows.append((instruction, inp, _poor_output(rng, out), task, False))
            else:
                rows.append((instruction, inp, out, task, True))
    rng.shuffle(rows)
    return pa.Table.from_pydict(
        {
            "id": [f"inst-{i:06d}" for i in range(len(rows))],
            "instruction": [r[0] for r in rows],
            "input": [r[1] for r in rows],
            "output": [r[2] for r in rows],
            "task": [r[3] for r in rows],
            "is_correct": [r[4] for r in rows],
        },
        schema=INSTRUCTION_SCHEMA,
    )


# ---------------------------------------------------------------------------------------------------------
# Writing


def _atomic_write(path: Path, write: Callable[[Path], None]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    # Same directory so os.replace is a rename on one filesystem; the pid keeps concurrent writers apart.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _write_parquet(path: Path, table: pa.Table) -> Path:
    # No schema metadata means no pandas block and nothing run-dependent in the footer.
    table = table.replace_schema_metadata(None)
    return _atomic_write(path, lambda tmp: pq.write_table(table, tmp, compression="zstd"))


def _write_bytes(path: Path, data: bytes) -> Path:
    return _atomic_write(path, lambda tmp: tmp.write_bytes(data))


def _write_shards(directory: Path, table: pa.Table, rows_per_shard: int) -> list[Path]:
    starts = range(0, max(table.num_rows, 1), rows_per_shard)
    written = [
        _write_parquet(directory / f"part-{i:05d}.parquet", table.slice(start, rows_per_shard))
        for i, start in enumerate(starts)
    ]
    # Shards left from an earlier run with a different shard size would otherwise be read as data.
    for stale in sorted(directory.glob("part-*.parquet")):
        if stale not in written:
            stale.unlink()
    return written


def _readme(sample: WebSample, instructions: pa.Table, seed: int, hard_quality: bool) -> str:
    kinds = sample.truth.column("kind").to_pylist()
    domains = sample.table.column("domain").to_pylist()
    n = max(len(kinds), 1)
    kind_lines = [f"- `{k}`: {kinds.count(k)} ({kinds.count(k) / n:.1%})" for k in sorted(set(kinds))]
    domain_lines = [f"- `{d}`: {domains.count(d)}" for d in sorted(set(domains))]
    tasks = instructions.column("task").to_pylist()
    wrong = Counter(
        t for t, ok in zip(tasks, instructions.column("is_correct").to_pylist(), strict=True) if not ok
    )
    task_lines = [
        f"- `{t}`: {tasks.count(t)} rows, {wrong[t]} with is_correct=false" for t in sorted(set(tasks))
    ]
    rates = ", ".join(str(r) for r in NEAR_DUP_RATES)
    kind_block, domain_block, task_block = ("\n".join(x) for x in (kind_lines, domain_lines, task_lines))
    hard_block = (
        f"""

Made with `hard_quality`: about {THIN_SHARE:.0%} of the boilerplate pages are thin pages (article-length,
mostly the site's own voice around a few real sentences, sometimes a cookie or navigation line) and
about {SEO_SHARE:.0%} of the spam is SEO copy in the domain's own words; clean pages carry up to
{CLEAN_VOICE_MAX:.0%} of their sentences in the site's voice. The classes overlap, so a quality classifier
trained on `kind` ranks pages (held-out ROC AUC about 0.9) rather than separating them perfectly."""
        if hard_quality
        else ""
    )
    return f"""\
# thresher sample data

Synthetic, generated by `thresher.pipelines.testing.sample_data` with seed {seed}. All text is made up from
small invented vocabularies; nothing is copied from real sources.

## Files

- `web/part-*.parquet`: web-like docs (`id`, `text`, `domain`, `url`).
- `web.jsonl`: the same web docs as JSON lines, for demoing raw ingest.
- `web_truth.parquet`: what was planted in each web doc
  (`id`, `kind`, `source_id`, `edit_rate`, `jaccard_5gram`).
- `instructions/part-*.parquet`: instruction rows
  (`id`, `instruction`, `input`, `output`, `task`, `is_correct`).

## Web docs ({len(kinds)})

{kind_block}

Planted: exact duplicates (some differ only by case/whitespace); near duplicates with word
edits at rates {rates} (`jaccard_5gram` is the exact Jaccard of word 5-gram sets after
lowercasing and whitespace collapse); cookie/JavaScript/navigation boilerplate and lorem-ipsum
filler; keyword-stuffed and symbol-heavy spam; short junk pages; fake PII (example.com emails,
555-01xx phones, RFC 5737 IPs, card numbers half passing and half failing Luhn); a few
Cyrillic/CJK forum posts; long docs of 3000-8000 words.{hard_block}

Domains:

{domain_block}

## Instructions ({len(tasks)})

{task_block}

About {ARITHMETIC_WRONG_SHARE:.0%} of arithmetic answers are wrong (checkable from the question);
about {POOR_OUTPUT_SHARE:.0%} of other rows have empty, off-topic or truncated outputs. Rows reuse a
few templates with different numbers and words, so many are near duplicates of each other.
"""


def write_sample_data(
    out_dir: Path,
    seed: int = 0,
    web_docs: int = 3000,
    instruction_rows: int = 1000,
    rows_per_shard: int = 1000,
    hard_quality: bool = True,
) -> list[Path]:
    """Write the web shards, truth table, instruction shards, web JSONL and a README; return their paths.

    The written sample is the hard-quality corpus by default: it is what `make demo` runs on, and a demo
    whose classifier separates perfectly shows nothing about a quality cut."""
    if rows_per_shard < 1:
        raise ValueError(f"rows_per_shard must be >= 1, got {rows_per_shard}")
    out_dir = Path(out_dir)
    sample = generate_web(web_docs, seed, hard_quality=hard_quality)
    instructions = generate_instructions(instruction_rows, seed)
    written = _write_shards(out_dir / "web", sample.table, rows_per_shard)
    written.append(_write_parquet(out_dir / "web_truth.parquet", sample.truth))
    written += _write_shards(out_dir / "instructions", instructions, rows_per_shard)
    lines = [json.dumps(row, ensure_ascii=False, sort_keys=True) + "\n" for row in sample.table.to_pylist()]
    written.append(_write_bytes(out_dir / "web.jsonl", "".join(lines).encode("utf-8")))
    written.append(
        _write_bytes(out_dir / "README.md", _readme(sample, instructions, seed, hard_quality).encode("utf-8"))
    )
    return written
