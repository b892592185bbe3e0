"""Repetition: rep-n within a response, distinct-n across responses, and both per turn of a conversation.

Steering that is too strong makes text loop before it becomes ungrammatical; these catch the loop.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from lensteer.errors import ConfigError, DataError
from lensteer.evaluate.text import words_of


def _grams(words: Sequence[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]


def _check_n(n: int) -> None:
    if n < 1:
        raise ConfigError(f"n-gram size must be >= 1, got {n}")


def rep_n(text: str, n: int) -> float:
    """``1 - |unique n-grams| / |n-grams|`` within one text (Welleck et al. 2019); 0 if it has no n-gram."""
    _check_n(n)
    grams = _grams(words_of(text), n)
    return 1.0 - len(set(grams)) / len(grams) if grams else 0.0


def distinct_n(texts: Sequence[str], n: int) -> float:
    """``|unique n-grams| / |n-grams|`` pooled over texts (Li et al. 2016); 0 if none has an n-gram."""
    _check_n(n)
    if isinstance(texts, str):
        raise DataError("distinct_n takes a list of texts, not one string")
    grams = [g for t in texts for g in _grams(words_of(t), n)]
    return len(set(grams)) / len(grams) if grams else 0.0


@dataclass(frozen=True, kw_only=True)
class RepetitionReport:
    """Repetition of a set of responses (word level).

    Attributes:
        rep2: Mean rep-2 over responses.
        rep4: Mean rep-4 over responses.
        distinct2: distinct-2 pooled over responses.
        loop_share: Share of responses with rep-4 above ``loop_threshold`` (0.2 by default).
        n: Number of responses.
    """

    rep2: float
    rep4: float
    distinct2: float
    loop_share: float
    n: int

    def to_dict(self) -> dict[str, float | int]:
        """Plain-JSON form."""
        return {
            "rep2": self.rep2,
            "rep4": self.rep4,
            "distinct2": self.distinct2,
            "loop_share": self.loop_share,
            "n": self.n,
        }


def repetition_report(texts: Sequence[str], *, loop_threshold: float = 0.2) -> RepetitionReport:
    """rep-2, rep-4, distinct-2 and the share of responses with more than 20% repeated 4-grams."""
    if isinstance(texts, str) or len(texts) == 0:
        raise DataError("repetition_report needs a non-empty list of texts")
    rep4 = [rep_n(t, 4) for t in texts]
    return RepetitionReport(
        rep2=sum(rep_n(t, 2) for t in texts) / len(texts),
        rep4=sum(rep4) / len(texts),
        distinct2=distinct_n(texts, 2),
        loop_share=sum(r > loop_threshold for r in rep4) / len(texts),
        n=len(texts),
    )


@dataclass(frozen=True, kw_only=True)
class TurnRepetition:
    """Repetition at one turn index of several conversations.

    Attributes:
        turn: 0-based turn index.
        report: :class:`RepetitionReport` of that turn's texts across conversations.
        rep4_history: Mean share of the turn's 4-grams already said in the same conversation's
            earlier turns (0 at turn 0): drift into repeating oneself across turns.
    """

    turn: int
    report: RepetitionReport
    rep4_history: float

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form."""
        return {"turn": self.turn, **self.report.to_dict(), "rep4_history": self.rep4_history}


def conversation_repetition(
    conversations: Sequence[Sequence[str]], *, loop_threshold: float = 0.2
) -> list[TurnRepetition]:
    """Repetition per turn over multi-turn conversations.

    Args:
        conversations: Each a list of the texts of one speaker's turns (usually the model's
            replies), in order. Conversations may have different lengths; turn ``t`` is reported
            over those that reach it.
        loop_threshold: rep-4 above which a turn counts as a loop.
    """
    if isinstance(conversations, str) or not conversations or any(isinstance(c, str) for c in conversations):
        raise DataError("pass a list of conversations, each a list of turn texts")
    n_turns = max(len(c) for c in conversations)
    if n_turns == 0:
        raise DataError("every conversation is empty")
    out = []
    for t in range(n_turns):
        texts, history = [], []
        for conv in conversations:
            if len(conv) <= t:
                continue
            texts.append(conv[t])
            grams = _grams(words_of(conv[t]), 4)
            seen = {g for earlier in conv[:t] for g in _grams(words_of(earlier), 4)}
            history.append(sum(g in seen for g in grams) / len(grams) if grams else 0.0)
        out.append(
            TurnRepetition(
                turn=t,
                report=repetition_report(texts, loop_threshold=loop_threshold),
                rep4_history=sum(history) / len(history),
            )
        )
    return out
