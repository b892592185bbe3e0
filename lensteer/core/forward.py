"""Forward-pass helpers: logits only where someone reads them, one KL, one response log-probability.

The unembedding is the most expensive matmul of a small model (49k x 576 per token for SmolLM2):
scoring a response needs logits at a few positions only. ``final_normalized`` runs the model up to
the unembedding's input (the final-norm output) and stops; ``unembed`` maps selected rows to logits.
"""

import warnings
from collections.abc import Sequence
from typing import Any

import torch
from jaxtyping import Bool, Float, Int
from tqdm.auto import tqdm

from lensteer.core.bridge import Bridge
from lensteer.core.chat import ChatPrompt, length_sorted_batches, pad_id_of, tokenize_prompt
from lensteer.core.plain import (
    MIN_SHARED_PREFIX,
    PlainView,
    common_prefix,
    plain_view,
    relay_after_prefix,
    share_cache,
)
from lensteer.core.sites import UNEMBED_INPUT
from lensteer.errors import ConfigError, DataError


class _StopBeforeUnembed(Exception):
    def __init__(self, tensor: torch.Tensor) -> None:
        super().__init__()
        self.tensor = tensor


def final_normalized(
    model: Bridge, tokens: torch.Tensor, attention_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """``[batch, pos, d_model]`` input of the unembedding (after the final norm), without computing logits."""

    def stop(x: torch.Tensor, hook: Any) -> torch.Tensor:  # noqa: ARG001 - TL signature
        raise _StopBeforeUnembed(x)

    try:
        with model.hooks(fwd_hooks=[(UNEMBED_INPUT, stop)]):
            model(tokens, attention_mask=attention_mask)
    except _StopBeforeUnembed as caught:
        return caught.tensor
    raise RuntimeError(f"the model never reached {UNEMBED_INPUT}")


def last_logits(
    model: Bridge, tokens: torch.Tensor, attention_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """``[batch, d_vocab]`` logits at the last position only (left padding keeps it a real token)."""
    return unembed(model, final_normalized(model, tokens, attention_mask)[:, -1])


def unembed(model: Bridge, x: torch.Tensor) -> torch.Tensor:
    """Logits ``x @ W_U + b_U`` for ``[..., d_model]`` final-normalized residuals."""
    logits = x @ model.W_U.to(x.device, x.dtype)
    b_u = getattr(model, "b_U", None)
    return logits + b_u.to(x.device, x.dtype) if b_u is not None else logits


def last_position_logits(model: Bridge) -> Any:
    """Hooks (a ``with`` block) that feed the unembedding only the last position: for forwards whose
    caller reads the last logits only (decoding, patching metrics), the rest of the unembedding is waste."""

    def keep_last(x: torch.Tensor, hook: Any) -> torch.Tensor:  # noqa: ARG001 - TL signature
        return x[:, -1:]

    return model.hooks(fwd_hooks=[(UNEMBED_INPUT, keep_last)])


def kl_divergence(
    log_p: Float[torch.Tensor, "*rows d_vocab"],
    log_q: Float[torch.Tensor, "*rows d_vocab"],
) -> Float[torch.Tensor, "*rows"]:
    """``KL(p || q) = sum_v p(v) (log p(v) - log q(v))`` per row, from log-probabilities.

    The one KL of lensteer: calibration, the ablation screen and the coherence metrics all call it
    with ``p`` the unsteered (base) model and ``q`` the steered one: how surprised the steered model
    is by what the base model would say (the direction Arditi et al. and iso-KL calibration use).
    """
    return (log_p.exp() * (log_p - log_q)).sum(-1)


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
        raise ConfigError(
            f"logits must both be [batch, pos, d_vocab] of one shape, got {tuple(steered_logits.shape)} "
            f"and {tuple(base_logits.shape)}"
        )
    if tuple(mask.shape) != tuple(base_logits.shape[:2]):
        raise ConfigError(
            f"mask must be [batch, pos] = {tuple(base_logits.shape[:2])}, got {tuple(mask.shape)}"
        )
    keep = mask.bool().to(base_logits.device)
    if not keep.any():
        raise DataError("mask selects no position; nothing to average")
    log_b = torch.log_softmax(base_logits[keep].double(), dim=-1)
    log_s = torch.log_softmax(steered_logits[keep].double(), dim=-1)
    return float(kl_divergence(log_b, log_s).mean())


def _states(
    model: Bridge,
    view: PlainView | None,
    tokens: Int[torch.Tensor, "batch pos"],
    attn: Int[torch.Tensor, "batch pos"],
    first: int,
) -> Float[torch.Tensor, "batch pos d_model"]:
    """:func:`final_normalized` of a left-padded batch, valid from each row's token ``first`` on: a prefix
    every row shares before it (a system prompt, few-shot turns) runs once at batch 1 through the plain
    view when there is one (the columns of the prefix are then zeros; nobody reads them)."""
    prefix = min(common_prefix(tokens, attn), first) if view is not None and tokens.shape[0] > 1 else 0
    if prefix < MIN_SHARED_PREFIX or view is None:
        return final_normalized(model, tokens, attn)
    seq, mask = relay_after_prefix(tokens, attn, prefix)
    with warnings.catch_warnings():  # transformers 5.24 renames past_key_values to cache
        warnings.filterwarnings("ignore", message=".*past_key_values.*deprecated", category=FutureWarning)
        _, cache = view.forward(seq[:1, :prefix], mask[:1, :prefix], None, last_only=True)
        if not share_cache(cache, tokens.shape[0]):
            return final_normalized(model, tokens, attn)
        rest = view.final_normalized(seq[:, prefix:], mask, cache)
    return torch.cat([rest.new_zeros(tokens.shape[0], prefix, rest.shape[-1]), rest], dim=1)


def response_logprob(
    model: Bridge,
    prompts: Sequence[ChatPrompt],
    *,
    batch_size: int = 16,
    progress: bool = False,
) -> Float[torch.Tensor, " n_prompts"]:
    """Mean log-probability per token of each prompt's ``response`` given everything before it.

    Raises:
        DataError: A prompt has no response.
    """
    tokenized = [tokenize_prompt(model, p) for p in prompts]
    for i, tp in enumerate(tokenized):
        if tp.response[1] <= tp.response[0]:
            raise DataError(f"prompt {i} has no response to score; set ChatPrompt(response=...)")
    out = torch.empty(len(tokenized))
    device = next(iter(model.parameters())).device
    view = plain_view(model)
    batches = length_sorted_batches(tokenized, batch_size, pad_id_of(model))
    for rows, batch in tqdm(batches, disable=not progress, desc="score"):
        with torch.inference_mode():
            first = min(tokenized[i].response[0] for i in rows) - 1  # the first position read, per row
            hidden = _states(model, view, batch.tokens.to(device), batch.attention_mask.to(device), first)
            width = batch.tokens.shape[1]
            for j, i in enumerate(rows):
                pad = width - tokenized[i].n_tokens
                r0, r1 = tokenized[i].response
                targets = batch.tokens[j, pad + r0 : pad + r1].to(device)
                # position t predicts token t+1: logits only where a response token is predicted
                logprobs = torch.log_softmax(
                    unembed(model, hidden[j, pad + r0 - 1 : pad + r1 - 1]).float(), dim=-1
                )
                out[i] = logprobs.gather(-1, targets[:, None]).mean().cpu()
    return out
