"""Coherence and capability metrics: KL to the base model, perplexity, repetition, multiple choice.

All are plain functions; the ones on text are pure. Rates come with percentile-bootstrap intervals
that resample responses (prompts), as ``../shared/docs/SCIENCE.md`` §4.5 asks.

Repetition is measured on **words** (lower-cased ``[a-z0-9']+`` runs), not model tokens, so numbers
are comparable across models and tokenizers and match how a reader sees a loop.
"""

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Bool, Float, Int

from lensteer.core.bundled import bundled_dir, read_jsonl
from lensteer.core.chat import ChatPrompt, tokenize_prompt
from lensteer.core.likelihood import response_logprob
from lensteer.core.stats import bootstrap_ci
from lensteer.errors import ConfigError, DataError
from lensteer.evaluate.scoring import is_refusal

# ------------------------------------------------------------------------------------------ rates


@dataclass(frozen=True, kw_only=True)
class Rate:
    """A share of ``n`` items with a percentile-bootstrap interval ``[low, high]``."""

    value: float
    low: float
    high: float
    n: int

    def to_dict(self) -> dict[str, float | int]:
        """Plain-JSON form."""
        return {"value": self.value, "low": self.low, "high": self.high, "n": self.n}


def rate_with_ci(flags: Sequence[bool], *, n_boot: int = 1000, level: float = 0.95, seed: int = 0) -> Rate:
    """Share of ``True`` in ``flags`` with a bootstrap CI (resampling the items, via :func:`~lensteer.core.stats.bootstrap_ci`)."""
    if isinstance(flags, str) or len(flags) == 0:
        raise DataError("rate_with_ci needs a non-empty list of booleans")
    x = torch.tensor([float(bool(f)) for f in flags])
    low, high = bootstrap_ci(lambda a, _b: float(a.mean()), x, x[:1], n_boot=n_boot, level=level, seed=seed)
    return Rate(value=float(x.mean()), low=low, high=high, n=len(x))


def over_refusal_rate(
    responses: Sequence[str], *, refused: Callable[[str], bool] = is_refusal, n_boot: int = 1000, seed: int = 0,
) -> Rate:
    """Share of responses to **harmless** prompts that refuse (default: :func:`~lensteer.evaluate.scoring.is_refusal`)."""
    if isinstance(responses, str):
        raise DataError("pass a list of responses, not a single string")
    return rate_with_ci([refused(r) for r in responses], n_boot=n_boot, seed=seed)


# ------------------------------------------------------------------------------------- coherence


def mean_token_kl(
    steered_logits: Float[torch.Tensor, "batch pos d_vocab"],
    base_logits: Float[torch.Tensor, "batch pos d_vocab"],
    mask: Bool[torch.Tensor, "batch pos"] | Int[torch.Tensor, "batch pos"],
) -> float:
    """Mean over masked positions of ``KL(p_base || p_steered)`` in nats.

    ``KL(p_b || p_s) = sum_v p_b(v) (log p_b(v) - log p_s(v))`` per position (the direction used by
    Arditi et al. and iso-KL calibration: how surprised the steered model is by what the base model
    would say), averaged with equal weight over every position where ``mask`` is true. Computed in
    float64 from log-softmax, so it is exact to rounding and never negative.
    """
    if steered_logits.shape != base_logits.shape or steered_logits.ndim != 3:
        raise ConfigError(f"logits must both be [batch, pos, d_vocab] of one shape, got {tuple(steered_logits.shape)} "
                          f"and {tuple(base_logits.shape)}")
    if tuple(mask.shape) != tuple(base_logits.shape[:2]):
        raise ConfigError(f"mask must be [batch, pos] = {tuple(base_logits.shape[:2])}, got {tuple(mask.shape)}")
    keep = mask.bool().to(base_logits.device)
    if not keep.any():
        raise DataError("mask selects no position; nothing to average")
    log_b = torch.log_softmax(base_logits[keep].double(), dim=-1)
    log_s = torch.log_softmax(steered_logits[keep].double(), dim=-1)
    kl = (log_b.exp() * (log_b - log_s)).sum(-1)
    return float(kl.mean())


@dataclass(frozen=True, kw_only=True, eq=False)
class Perplexity:
    """Teacher-forced perplexity of responses.

    Attributes:
        per_response: ``exp(mean NLL per token)`` of each response.
        n_tokens: Response tokens scored per response.
        corpus: ``exp`` of the token-weighted mean NLL over all responses.
    """

    per_response: Float[torch.Tensor, " n"]
    n_tokens: Int[torch.Tensor, " n"]
    corpus: float

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form."""
        return {"per_response": self.per_response.tolist(), "n_tokens": self.n_tokens.tolist(), "corpus": self.corpus}


def response_perplexity(
    model: Any, prompts: Sequence["str | ChatPrompt"], responses: Sequence[str], *, batch_size: int = 16,
) -> Perplexity:
    """Perplexity of each response given its prompt under ``model`` (teacher forced, chat template).

    Use the *unsteered* model on steered outputs to catch gibberish (``PPL_base(y_steered)``); pair
    it with :func:`repetition_report`, since loops score deceptively low perplexity.

    Args:
        model: A ``TransformerBridge`` with a tokenizer (whatever hooks are on it apply).
        prompts: User messages or :class:`~lensteer.ChatPrompt` objects (their ``response`` is replaced).
        responses: One response per prompt.
    """
    if isinstance(prompts, str) or isinstance(responses, str) or len(prompts) != len(responses) or not prompts:
        raise DataError(f"need equal, non-empty lists of prompts and responses, got {len(prompts)} and {len(responses)}")
    chats = []
    for i, (p, r) in enumerate(zip(prompts, responses, strict=True)):
        if not r.strip():
            raise DataError(f"response {i} is empty; perplexity needs at least one token")
        base = p if isinstance(p, ChatPrompt) else ChatPrompt(user=p)
        chats.append(ChatPrompt(user=base.user, system=base.system, history=base.history, response=r))
    mean_lp = response_logprob(model, chats, batch_size=batch_size)
    counts = torch.tensor([tokenize_prompt(model, c).response for c in chats]).diff(dim=1)[:, 0]
    corpus = float(torch.exp(-(mean_lp.double() * counts).sum() / counts.sum()))
    return Perplexity(per_response=torch.exp(-mean_lp), n_tokens=counts, corpus=corpus)


# ------------------------------------------------------------------------------------- repetition

_WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")


def words_of(text: str) -> list[str]:
    """The words repetition is measured on: lower-cased ``[a-z0-9]+('[a-z]+)?`` runs."""
    return _WORD.findall(text.replace("\u2019", "'").lower())


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
        return {"rep2": self.rep2, "rep4": self.rep4, "distinct2": self.distinct2, "loop_share": self.loop_share, "n": self.n}


def repetition_report(texts: Sequence[str], *, loop_threshold: float = 0.2) -> RepetitionReport:
    """rep-2, rep-4, distinct-2 and the share of responses with more than 20% repeated 4-grams."""
    if isinstance(texts, str) or len(texts) == 0:
        raise DataError("repetition_report needs a non-empty list of texts")
    rep4 = [rep_n(t, 4) for t in texts]
    return RepetitionReport(
        rep2=sum(rep_n(t, 2) for t in texts) / len(texts), rep4=sum(rep4) / len(texts),
        distinct2=distinct_n(texts, 2), loop_share=sum(r > loop_threshold for r in rep4) / len(texts), n=len(texts),
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


def conversation_repetition(conversations: Sequence[Sequence[str]], *, loop_threshold: float = 0.2) -> list[TurnRepetition]:
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
        out.append(TurnRepetition(turn=t, report=repetition_report(texts, loop_threshold=loop_threshold),
                                  rep4_history=sum(history) / len(history)))
    return out


# ------------------------------------------------------------------------------------- capability


@dataclass(frozen=True, kw_only=True)
class MCItem:
    """A multiple-choice question: options and the index of the correct one."""

    id: str
    category: str
    question: str
    options: tuple[str, ...]
    answer: int


def load_mc_items(path: "str | Path | None" = None) -> list[MCItem]:
    """The bundled multiple-choice capability set (``data/capability/mc.jsonl``) or a JSONL in its schema."""
    file = Path(path) if path is not None else bundled_dir("capability") / "mc.jsonl"
    items = []
    for i, row in enumerate(read_jsonl(file), start=1):
        where = f"{file.name} line {i}"
        try:
            options = tuple(row["options"])
            item = MCItem(id=row["id"], category=row.get("category", "uncategorised"), question=row["question"],
                          options=options, answer=int(row["answer"]))
        except (KeyError, TypeError, ValueError) as err:
            raise DataError(f"{where}: needs id, question, options (list) and answer (int): {err!r}") from err
        if len(options) < 2 or not all(isinstance(o, str) and o.strip() for o in options):
            raise DataError(f"{where}: options must be >= 2 non-empty strings, got {options!r}")
        if not 0 <= item.answer < len(options):
            raise DataError(f"{where}: answer {item.answer} is not an index into {len(options)} options")
        items.append(item)
    return items


@dataclass(frozen=True, kw_only=True, eq=False)
class MCResult:
    """Log-likelihood multiple-choice accuracy.

    Attributes:
        accuracy: Share of items whose correct option has the highest mean log-prob per token.
        ci: Bootstrap interval of the accuracy.
        by_category: Accuracy per category.
        chance: Expected accuracy of guessing (mean of 1 / n_options).
        correct: Per item, whether it was answered correctly.
        option_logprobs: Per item, the mean log-prob per token of each option.
    """

    accuracy: float
    ci: tuple[float, float]
    by_category: dict[str, float]
    chance: float
    correct: tuple[bool, ...]
    option_logprobs: tuple[tuple[float, ...], ...]

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form."""
        return {"accuracy": self.accuracy, "ci": list(self.ci), "by_category": self.by_category, "chance": self.chance,
                "n": len(self.correct)}


def mc_accuracy(model: Any, items: Sequence[MCItem], *, batch_size: int = 16, seed: int = 0) -> MCResult:
    """Multiple-choice accuracy by log-likelihood (no generation).

    Each option is scored as the assistant's reply to the question, chat-formatted (the question is
    the user message, the option the response), by its **mean log-probability per token** given the
    question (length-normalised, so long options are not penalised for their length). The item is
    correct when the right option scores highest.
    """
    if isinstance(items, MCItem) or len(items) == 0:
        raise DataError("mc_accuracy needs a non-empty list of MCItem")
    chats = [ChatPrompt(user=it.question, response=opt) for it in items for opt in it.options]
    scores = response_logprob(model, chats, batch_size=batch_size).tolist()
    correct, per_item, k = [], [], 0
    for it in items:
        s = tuple(scores[k : k + len(it.options)])
        k += len(it.options)
        per_item.append(s)
        correct.append(max(range(len(s)), key=s.__getitem__) == it.answer)
    cats: dict[str, list[bool]] = {}
    for it, c in zip(items, correct, strict=True):
        cats.setdefault(it.category, []).append(c)
    rate = rate_with_ci(correct, seed=seed)
    return MCResult(
        accuracy=rate.value, ci=(rate.low, rate.high), by_category={c: sum(v) / len(v) for c, v in sorted(cats.items())},
        chance=sum(1 / len(it.options) for it in items) / len(items), correct=tuple(correct),
        option_logprobs=tuple(per_item),
    )

