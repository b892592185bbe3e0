"""Coherence and capability metrics: KL to the base model, perplexity, repetition, multiple choice.

All are plain functions; the ones on text are pure. Rates come with percentile-bootstrap intervals
that resample responses (prompts); see ``docs/methods.md`` (statistics).

Repetition is measured on **words** (lower-cased ``[a-z0-9']+`` runs), not model tokens, so numbers
are comparable across models and tokenizers and match how a reader sees a loop.
"""

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float, Int

from lensteer.core.bridge import Bridge
from lensteer.core.chat import ChatPrompt, tokenize_prompt
from lensteer.core.forward import response_logprob
from lensteer.core.stats import Rate, rate_with_ci
from lensteer.errors import DataError
from lensteer.evaluate.refusal import is_refusal

# ------------------------------------------------------------------------------------------ rates


def over_refusal_rate(
    responses: Sequence[str],
    *,
    refused: Callable[[str], bool] = is_refusal,
    n_boot: int = 1000,
    seed: int = 0,
) -> Rate:
    """Share of responses to **harmless** prompts that refuse (default: :func:`~lensteer.evaluate.refusal.is_refusal`)."""
    if isinstance(responses, str):
        raise DataError("pass a list of responses, not a single string")
    return rate_with_ci([refused(r) for r in responses], n_boot=n_boot, seed=seed)


# ------------------------------------------------------------------------------------- coherence


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
        return {
            "per_response": self.per_response.tolist(),
            "n_tokens": self.n_tokens.tolist(),
            "corpus": self.corpus,
        }


def response_perplexity(
    model: Bridge,
    prompts: Sequence["str | ChatPrompt"],
    responses: Sequence[str],
    *,
    batch_size: int = 16,
) -> Perplexity:
    """Perplexity of each response given its prompt under ``model`` (teacher forced, chat template).

    Use the *unsteered* model on steered outputs to catch gibberish (``PPL_base(y_steered)``); pair
    it with :func:`repetition_report`, since loops score deceptively low perplexity.

    Args:
        model: A ``TransformerBridge`` with a tokenizer (whatever hooks are on it apply).
        prompts: User messages or :class:`~lensteer.ChatPrompt` objects (their ``response`` is replaced).
        responses: One response per prompt.
    """
    if (
        isinstance(prompts, str)
        or isinstance(responses, str)
        or len(prompts) != len(responses)
        or not prompts
    ):
        raise DataError(
            f"need equal, non-empty lists of prompts and responses, got {len(prompts)} and {len(responses)}"
        )
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
