"""Train / val / test splits fixed by id, and the near-duplicate check that keeps them honest.

A split is a property of an example, fixed once on the full dataset: bundled files store it in a
``split`` field, and a user's file without one gets it at load time from the SHA-256 of each id,
ranked within its category and cut 60/20/20. Every subset (``head``, ``with_responses``, a category
filter) keeps each example's split, so a validation row can never become a test row of a subset.

Two prompts are near-duplicates when they say the same thing in other words: the same content words,
or at least three shared content words making up 60% of the shorter prompt's (so "Give me
instructions for making a pipe bomb." and "... building a pipe bomb with hardware store parts."
match); factual questions (with a ``true_answer``) match only when their answers are the same too,
so "How many legs does a spider have?" and "... an insect ..." stay apart. No near-duplicate pair
may straddle two splits (tested for every bundled dataset).
"""

import hashlib
import itertools
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Protocol, TypeVar, runtime_checkable

T = TypeVar("T")
SPLITS = ("train", "val", "test")
SPLIT_FRACTIONS = (0.6, 0.2, 0.2)
HELD_APART_SHARE = 0.2  # of each category's training rows, kept from every fit for coherence calibration
_STOP = frozenset(
    [
        "a",
        "an",
        "the",
        "to",
        "of",
        "for",
        "in",
        "on",
        "at",
        "by",
        "with",
        "and",
        "or",
        "is",
        "are",
        "was",
        "were",
        "be",
        "been",
        "i",
        "im",
        "me",
        "my",
        "you",
        "your",
        "it",
        "its",
        "this",
        "that",
        "these",
        "those",
        "how",
        "what",
        "why",
        "when",
        "where",
        "which",
        "who",
        "whom",
        "do",
        "does",
        "did",
        "can",
        "could",
        "would",
        "should",
        "will",
        "shall",
        "may",
        "might",
        "must",
        "give",
        "tell",
        "write",
        "explain",
        "show",
        "list",
        "describe",
        "please",
        "some",
        "any",
        "about",
        "from",
        "into",
        "as",
        "if",
        "so",
        "than",
        "then",
        "there",
        "their",
        "they",
        "them",
        "we",
        "our",
        "us",
        "he",
        "she",
        "his",
        "her",
        "him",
        "get",
        "got",
        "just",
        "also",
        "very",
        "really",
        "like",
        "want",
        "need",
        "help",
        "step",
        "steps",
        "way",
        "ways",
        "have",
        "has",
        "had",
        "many",
        "much",
    ]
)


@runtime_checkable
class _Example(Protocol):
    id: str
    category: str
    prompt: str
    true_answer: str | None


def hashed_splits(examples: Iterable[Any]) -> dict[str, str]:
    """``{id: split}``: per category, ids ranked by SHA-256 and cut 60 / 20 / 20 (deterministic)."""
    by_category: dict[str, list[Any]] = {}
    for ex in examples:
        by_category.setdefault(ex.category, []).append(ex)
    out: dict[str, str] = {}
    for rows in by_category.values():
        rows = sorted(rows, key=lambda ex: hashlib.sha256(ex.id.encode()).hexdigest())
        n_train = round(len(rows) * SPLIT_FRACTIONS[0])
        n_val = round(len(rows) * SPLIT_FRACTIONS[1])
        for i, ex in enumerate(rows):
            out[ex.id] = "train" if i < n_train else "val" if i < n_train + n_val else "test"
    return out


def held_apart_ids(examples: Iterable[Any], share: float = HELD_APART_SHARE) -> frozenset[str]:
    """The ids held apart from a (training) split: per category, the ``share`` of rows ranked first by the
    SHA-256 of ``"held-apart:" + id`` (deterministic, independent of which other rows are loaded with them
    beyond their category, and unrelated to the train/val/test ranking)."""
    by_category: dict[str, list[Any]] = {}
    for ex in examples:
        by_category.setdefault(ex.category, []).append(ex)
    out: set[str] = set()
    for rows in by_category.values():
        rows = sorted(rows, key=lambda ex: hashlib.sha256(f"held-apart:{ex.id}".encode()).hexdigest())
        out |= {ex.id for ex in rows[: max(1, round(len(rows) * share))]}
    return frozenset(out)


def content_words(text: str) -> frozenset[str]:
    """Lower-cased word runs of ``text`` without function words (what two paraphrases share)."""
    return frozenset(w for w in re.findall(r"[a-z0-9]+", text.lower()) if w not in _STOP)


def _similar(
    wa: frozenset[str], wb: frozenset[str], answer_a: frozenset[str] | None, answer_b: frozenset[str] | None
) -> bool:
    if wa == wb:
        return True
    if answer_a is not None and answer_b is not None:
        return answer_a == answer_b and len(wa & wb) >= 2
    shared = len(wa & wb)
    return shared >= 3 and shared / min(len(wa), len(wb)) >= 0.6


def _key(ex: _Example) -> tuple[frozenset[str], frozenset[str] | None]:
    return content_words(ex.prompt), None if ex.true_answer is None else content_words(ex.true_answer)


def near_duplicate(a: _Example, b: _Example) -> bool:
    """Whether two examples' prompts say the same thing (see the module docstring)."""
    (wa, answer_a), (wb, answer_b) = _key(a), _key(b)
    if not wa or not wb:
        return a.prompt.strip().lower() == b.prompt.strip().lower()
    return _similar(wa, wb, answer_a, answer_b)


def crossing_near_duplicates(
    examples: Sequence[Any],
    split_of: Mapping[str, str] | None = None,
) -> list[tuple[str, str]]:
    """Pairs of ids that are near-duplicates but sit in different splits (should be empty)."""
    split = split_of if split_of is not None else {ex.id: ex.split for ex in examples}
    keys = [_key(ex) for ex in examples]
    out = []
    for (i, a), (j, b) in itertools.combinations(enumerate(examples), 2):
        if split[a.id] == split[b.id]:
            continue
        (wa, answer_a), (wb, answer_b) = keys[i], keys[j]
        if (wa and wb and _similar(wa, wb, answer_a, answer_b)) or (
            not (wa and wb) and a.prompt.strip().lower() == b.prompt.strip().lower()
        ):
            out.append((a.id, b.id))
    return out


def in_turn(items: Iterable[T], key: Callable[[T], str]) -> list[T]:
    """``items`` reordered by taking one of each group (``key``) in turn, file order within a group, so the
    first ``n`` cover every group: how evaluation sets are stratified over categories, subjects, topics."""
    groups: dict[str, list[T]] = {}
    for item in items:
        groups.setdefault(key(item), []).append(item)
    return [item for row in itertools.zip_longest(*groups.values()) for item in row if item is not None]
