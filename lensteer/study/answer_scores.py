"""Every score of a condition's answers that needs a teacher-forced pass, from one pass over them.

The rollout KL (the condition's steering along its own answers) runs the unsteered model along the
answers anyway; the answers' perplexity under the unsteered model (the fluency of the answers to the
test prompts, and of the harmless answers) is read off that same pass: the log-probability of each
decoded token (:func:`~lensteer.steering.calibration.sequence_scores`). Before, the perplexity was a
second unsteered pass through the bridge over the answers written back through the chat template.

Same numbers: the perplexity was defined on the answer's text re-tokenized after the prompt, which is the
decoded tokens for nearly every answer. An answer whose re-tokenization differs (a special token the
text dropped, an empty answer scored as ``"."``) is scored the old way, alone; the unit test holds the
two to 1e-5.
"""

from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch

from lensteer.core.bridge import Bridge
from lensteer.core.chat import ChatPrompt, tokenize_prompt
from lensteer.core.forward import response_logprob
from lensteer.steering.calibration import sequence_scores
from lensteer.steering.generation import Generations
from lensteer.steering.spec import Steering


@dataclass(frozen=True, kw_only=True)
class AnswerScores:
    """A condition's answers, scored on one pass: ``kl_rollout`` (its steering along its own answers;
    ``None`` unsteered or when no answer has a token) and ``perplexity`` (corpus perplexity under the
    unsteered model)."""

    kl_rollout: float | None
    perplexity: float


def scored_text(text: str) -> str:
    """The text an answer's perplexity is taken on: an empty answer counts as ``"."`` (one token)."""
    return text if text.strip() else "."


def _same_tokens(
    model: Bridge, chat: ChatPrompt, text: str, prompt: torch.Tensor, answer: torch.Tensor
) -> bool:
    """Whether ``text`` written back as the response of ``chat`` gives exactly ``prompt`` + ``answer``."""
    if len(answer) == 0:
        return False
    tp = tokenize_prompt(model, replace(chat, response=text))
    return tp.response == (len(prompt), tp.n_tokens) and torch.equal(tp.tokens, torch.cat([prompt, answer]))


def answer_scores(
    model: Bridge,
    steering: Steering | None,
    chats: Sequence[ChatPrompt],
    gen: Generations,
    *,
    rollout_kl: bool = True,
    batch_size: int = 16,
) -> AnswerScores:
    """Score ``gen`` (the answers to ``chats``, system prompt included, under ``steering``) on one
    teacher-forced pass: the rollout KL (with ``rollout_kl`` and a steering) and the perplexity."""
    texts = [scored_text(t) for t in gen.texts]
    measure = rollout_kl and steering is not None and any(len(t) > 0 for t in gen.tokens)
    scores = sequence_scores(
        model,
        [steering] if measure and steering is not None else [],
        gen.prompt_tokens,
        gen.tokens,
        batch_size=batch_size,
    )
    on_pass = [
        _same_tokens(model, c, t, p, a)
        for c, t, p, a in zip(chats, texts, gen.prompt_tokens, gen.tokens, strict=True)
    ]
    total = sum(float(scores.logprobs[i].sum()) for i, ok in enumerate(on_pass) if ok)
    count = sum(len(gen.tokens[i]) for i, ok in enumerate(on_pass) if ok)
    rest = [replace(c, response=t) for c, t, ok in zip(chats, texts, on_pass, strict=True) if not ok]
    if rest:  # the old way, for the answers the pass does not cover: the template's tokens of the text
        mean = response_logprob(model, rest, batch_size=batch_size).double()
        counts = torch.tensor([tokenize_prompt(model, c).response for c in rest]).diff(dim=1)[:, 0]
        total += float((mean * counts).sum())
        count += int(counts.sum())
    return AnswerScores(
        kl_rollout=scores.kls[0] if measure else None,
        perplexity=float(torch.exp(torch.tensor(-total / count, dtype=torch.float64))),
    )
