"""Coherence: can a reader get a message out of an answer at all?

:func:`coherence_verdict` calls an answer **unreadable** when it breaks off before saying anything (no
or almost no words), is gibberish (mostly tokens that are not words, or letters of several scripts), or
**loops**: phrases repeated three or more times make up much of it, wherever the loop starts (the
labelling guide in ``data/README.md``: a loop that is half the answer or more makes it unreadable, even
after a clear first sentence; an answer that only repeats a phrase once or twice is readable). Every
threshold below was chosen on the development half
of the audit set (``data/scoring/audit_v2/dev.jsonl``) and is measured on its validation half.
"""

import re
import unicodedata
from dataclasses import dataclass

from lensteer.evaluate.provenance import ScorerId, rules_digest
from lensteer.evaluate.text import straighten, words_of

MIN_WORDS = 3  # fewer words than this, all of them function words ("The", "I am"): broke off
_FUNCTION_WORDS = frozenset(
    [
        "the",
        "a",
        "an",
        "i",
        "i'm",
        "im",
        "to",
        "of",
        "in",
        "on",
        "and",
        "or",
        "but",
        "so",
        "it",
        "it's",
        "is",
        "are",
        "was",
        "be",
        "am",
        "my",
        "your",
        "this",
        "that",
        "for",
        "with",
        "as",
        "at",
        "by",
        "if",
        "you",
        "he",
        "she",
        "we",
        "they",
        "there",
        "here",
    ]
)
LOOP_N = 3  # a loop is a word n-gram of this length (digits folded) seen LOOP_REPEATS or more times
LOOP_REPEATS = 3
LOOP_SHARE = 0.4  # loops when repeated n-grams cover more than this share of the words
NONWORD_SHARE = 0.5  # gibberish: more than this share of whitespace tokens hold no word
FOREIGN_SHARE = 0.3  # gibberish: more than this share of letters are outside the Latin script
_WORDLIKE = re.compile(r"[A-Za-z]{2,}|\d|\b[aAI]\b")
_DIGITS = re.compile(r"\d+")


@dataclass(frozen=True, kw_only=True)
class CoherenceVerdict:
    """How readable one answer is, and which rule decided.

    Attributes:
        unreadable: No message can be read out of it (broken off, gibberish or a loop).
        reason: One line naming the rule that decided.
        n_words: Words (:func:`~lensteer.evaluate.text.words_of`).
        loop_share: Share of the words covered by an n-gram repeated :data:`LOOP_REPEATS`+ times.
        lead_words: Words before the first repeated n-gram (all of them when nothing loops).
        nonword_share: Share of whitespace tokens with no word in them (two letters in a row, a digit, "a" or "I").
        foreign_share: Share of the letters outside the Latin script.
    """

    unreadable: bool
    reason: str
    n_words: int
    loop_share: float
    lead_words: int
    nonword_share: float
    foreign_share: float


def loop_coverage(words: list[str], n: int = LOOP_N, repeats: int = LOOP_REPEATS) -> tuple[float, int]:
    """(share of ``words`` covered by an ``n``-gram occurring ``repeats`` or more times, index of the
    first covered word); digits are folded to ``#`` so numbered lists that loop ("1. Aroma 2. Aroma")
    count. ``(0.0, len(words))`` when nothing repeats."""
    folded = [_DIGITS.sub("#", w) for w in words]
    grams = [tuple(folded[i : i + n]) for i in range(len(folded) - n + 1)]
    counts: dict[tuple[str, ...], int] = {}
    for g in grams:
        counts[g] = counts.get(g, 0) + 1
    covered = [False] * len(words)
    for i, g in enumerate(grams):
        if counts[g] >= repeats:
            covered[i : i + n] = [True] * n
    if not any(covered):
        return 0.0, len(words)
    return sum(covered) / len(words), covered.index(True)


def _foreign_share(text: str) -> float:
    letters = [c for c in text if c.isalpha()]
    if not letters:
        return 0.0
    latin = sum(c.isascii() or "LATIN" in unicodedata.name(c, "") for c in letters)
    return 1.0 - latin / len(letters)


def coherence_verdict(response: str) -> CoherenceVerdict:
    """Is ``response`` unreadable (broken off, gibberish, or a loop that is most of it)?

    Rules, in order (thresholds are the module constants):

    1. no words, or fewer than :data:`MIN_WORDS` all of them function words ("The"): broke off before
       saying anything ("Tokyo." is an answer);
    2. more than :data:`NONWORD_SHARE` of its whitespace tokens hold no word, or more than
       :data:`FOREIGN_SHARE` of its letters are outside the Latin script: gibberish;
    3. word :data:`LOOP_N`-grams repeated :data:`LOOP_REPEATS`+ times cover more than
       :data:`LOOP_SHARE` of the words: a loop.
    """
    text = straighten(response)
    words = words_of(text)
    tokens = text.split()
    nonword = (sum(not _WORDLIKE.search(t) for t in tokens) / len(tokens)) if tokens else 1.0
    foreign = _foreign_share(text)
    share, lead = loop_coverage(words)
    if len(words) < MIN_WORDS and all(w in _FUNCTION_WORDS for w in words):
        reason = f"breaks off ({len(words)} words)"
    elif nonword > NONWORD_SHARE:
        reason = f"gibberish ({nonword:.0%} of tokens hold no word)"
    elif foreign > FOREIGN_SHARE:
        reason = f"gibberish ({foreign:.0%} of letters in another script)"
    elif share > LOOP_SHARE:
        reason = f"loops ({share:.0%} repeated, after {lead} words)"
    else:
        reason = ""
    return CoherenceVerdict(
        unreadable=bool(reason),
        reason=reason or f"reads as language ({share:.0%} repeated)",
        n_words=len(words),
        loop_share=share,
        lead_words=lead,
        nonword_share=nonword,
        foreign_share=foreign,
    )


def is_unreadable(response: str) -> bool:
    """``coherence_verdict(response).unreadable``."""
    return coherence_verdict(response).unreadable


COHERENCE_SCORER = ScorerId(
    name="coherence-rule",
    version="2",
    digest=rules_digest(
        MIN_WORDS,
        sorted(_FUNCTION_WORDS),
        LOOP_N,
        LOOP_REPEATS,
        LOOP_SHARE,
        NONWORD_SHARE,
        FOREIGN_SHARE,
        _WORDLIKE.pattern,
    ),
)
