"""Capability: multiple-choice accuracy on our own items, and language-modelling cross-entropy on our paragraphs.

Each option is scored as the assistant's reply to the question (chat template) by its mean
log-probability per token; the argmax is the model's answer (items: ``data/capability/mc.jsonl``,
120 in five subjects). :func:`text_cross_entropy` is the mean next-token loss in nats per token on
plain text (``data/capability/paragraphs.jsonl``, 72 paragraphs in 12 topics); a steering's
capability cost is the change in it.
"""

from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from lensteer.core.bridge import Bridge
from lensteer.core.bundled import bundled_dir, read_jsonl
from lensteer.core.chat import (
    ChatPrompt,
    left_pad,
    length_sorted_batches,
    pad_id_of,
    tokenize_prompt,
)
from lensteer.core.forward import response_logprob, unembed
from lensteer.core.plain import plain_view
from lensteer.core.splits import in_turn
from lensteer.core.stats import rate_with_ci
from lensteer.errors import DataError
from lensteer.steering.hooks import SteeringContext, plain_steerable, steer
from lensteer.steering.prefix import teacher_forced_states
from lensteer.steering.spec import Steering


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
            item = MCItem(
                id=row["id"],
                category=row.get("category", "uncategorised"),
                question=row["question"],
                options=options,
                answer=int(row["answer"]),
            )
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
        return {
            "accuracy": self.accuracy,
            "ci": list(self.ci),
            "by_category": self.by_category,
            "chance": self.chance,
            "n": len(self.correct),
        }


def mc_accuracy(
    model: Bridge,
    items: Sequence[MCItem],
    *,
    batch_size: int = 16,
    seed: int = 0,
    system: str | None = None,
    steering: Steering | None = None,
) -> MCResult:
    """Multiple-choice accuracy by log-likelihood (no generation).

    Each option is scored as the assistant's reply to the question, chat-formatted (the question is
    the user message, the option the response), by its **mean log-probability per token** given the
    question (length-normalised, so long options are not penalised for their length). The item is
    correct when the right option scores highest.

    The options of an item share the question (the chat-formatted prompt): when the model's plain
    view is usable (no hook on the model: pass ``steering`` here rather than wrapping the call in
    :func:`~lensteer.steering.hooks.steer`), the question runs once per item and the options branch
    from its keys and values (:func:`~lensteer.steering.prefix.teacher_forced_states`); otherwise
    every option runs with its question, ``batch_size`` rows at a time. Both give the same scores
    (tested, steered or not). ``steering`` is applied at every position, teacher-forced (no gate).
    """
    if isinstance(items, MCItem) or len(items) == 0:
        raise DataError("mc_accuracy needs a non-empty list of MCItem")
    chats = [ChatPrompt(user=it.question, response=opt, system=system) for it in items for opt in it.options]
    view = plain_view(model)
    steerings = () if steering is None else (steering,)
    if view is not None and plain_steerable(model, steerings):
        scores = _shared_question_scores(model, items, chats, steerings, view)
    else:
        with steer(model, *steerings) if steerings else nullcontext():
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
        accuracy=rate.value,
        ci=(rate.low, rate.high),
        by_category={c: sum(v) / len(v) for c, v in sorted(cats.items())},
        chance=sum(1 / len(it.options) for it in items) / len(items),
        correct=tuple(correct),
        option_logprobs=tuple(per_item),
    )


def _shared_question_scores(
    model: Bridge,
    items: Sequence[MCItem],
    chats: Sequence[ChatPrompt],
    steerings: tuple[Steering, ...],
    view: Any,
) -> list[float]:
    """Mean log-prob per token of each option (flattened in item order), one batch per item: its options
    left-padded together, the question they share computed once at batch 1 and its cache copied to
    every option (an item's rows are exactly the question plus one option each)."""
    tokenized = [tokenize_prompt(model, c) for c in chats]
    for i, tp in enumerate(tokenized):
        if tp.response[1] <= tp.response[0]:
            raise DataError(f"option {i} tokenizes to nothing; options must be non-empty text")
    device = next(iter(model.parameters())).device
    pad_id, scores, k = pad_id_of(model), [], 0
    for it in items:
        rows = tokenized[k : k + len(it.options)]
        k += len(it.options)
        batch = left_pad(rows, pad_id)
        pads = torch.tensor(batch.pad_lengths)
        where = torch.zeros(batch.tokens.shape, dtype=torch.bool)  # position t predicts token t + 1
        for j, tp in enumerate(rows):
            where[j, pads[j] + tp.response[0] - 1 : pads[j] + tp.response[1] - 1] = True
        ctx = SteeringContext(prompt_lens=torch.tensor([tp.n_tokens for tp in rows]), pads=pads, record=False)
        with torch.inference_mode():
            states = teacher_forced_states(
                model,
                steerings,
                batch.tokens.to(device),
                batch.attention_mask.to(device),
                where,
                ctx,
                view=view,
            )
            logprobs = torch.log_softmax(unembed(model, states).float(), dim=-1)
            targets = batch.tokens[:, 1:][where[:, :-1]].to(device)
            picked = logprobs.gather(-1, targets[:, None])[:, 0].cpu()
        start = 0
        for tp in rows:
            n = tp.response[1] - tp.response[0]
            scores.append(float(picked[start : start + n].mean()))
            start += n
    return scores


def load_paragraphs(path: "str | Path | None" = None) -> list[str]:
    """The bundled paragraph corpus (``data/capability/paragraphs.jsonl``) or a JSONL with a ``text`` field,
    ordered by taking one paragraph of each ``topic`` in turn (so the first ``n`` cover every topic)."""
    file = Path(path) if path is not None else bundled_dir("capability") / "paragraphs.jsonl"
    rows = read_jsonl(file)
    for i, row in enumerate(rows, start=1):
        if not isinstance(row.get("text"), str) or not row["text"].strip():
            raise DataError(f"{file.name} line {i}: needs a non-empty 'text' field")
    return [row["text"] for row in in_turn(rows, key=lambda row: str(row.get("topic", "")))]


def text_cross_entropy(model: Bridge, texts: Sequence[str], *, batch_size: int = 8) -> float:
    """Mean next-token cross-entropy (nats per token) of plain ``texts`` under ``model``, teacher-forced.

    Every token but the first is predicted; padding is masked. Wrap the call in
    :func:`lensteer.steer` to measure a steered model (the change is the steering's capability cost).
    """
    if isinstance(texts, str) or not texts:
        raise DataError("text_cross_entropy needs a non-empty list of texts")
    tokenized = [tokenize_prompt(model, t, chat=False) for t in texts]
    device = next(iter(model.parameters())).device
    total, count = 0.0, 0
    for _, batch in length_sorted_batches(tokenized, batch_size, pad_id_of(model)):
        tokens, attn = batch.tokens.to(device), batch.attention_mask.to(device)
        with torch.inference_mode():
            logits = model(tokens, attention_mask=attn)[:, :-1].float()
        targets, keep = tokens[:, 1:], attn[:, 1:].bool() & attn[:, :-1].bool()
        nll = torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="none"
        ).view(targets.shape)
        total += float(nll[keep].sum())
        count += int(keep.sum())
    return total / count
