"""A prompt prefix shared by every row of a batch (system prompt, few-shot turns), computed once.

Few-shot contexts are long and identical across a batch; running them once at batch 1 and copying
their keys and values to every row makes generation 1.5-1.7x faster with the same tokens (tested),
and the teacher-forced KL passes (calibration, held-out and rollout KL) likewise
(:func:`teacher_forced_states`).
"""

import warnings
from collections.abc import Sequence
from contextlib import nullcontext
from typing import Any, NamedTuple

import torch
from jaxtyping import Bool, Float, Int

from lensteer.core.bridge import Bridge
from lensteer.core.forward import final_normalized
from lensteer.core.plain import (
    MIN_SHARED_PREFIX,
    PlainView,
    common_prefix,
    relay_after_prefix,
    share_cache,
)
from lensteer.steering.hooks import SteeringContext, plain_steerable, steer, steer_plain
from lensteer.steering.positions import position_mask
from lensteer.steering.spec import Steering


def shared_prefix(
    tokens: torch.Tensor, attn: torch.Tensor, steerings: Sequence[Steering], ctx: SteeringContext
) -> int:
    """Length of the token prefix every row of a left-padded batch shares (a system prompt, few-shot
    turns), if it is worth computing once; 0 otherwise.

    The prefix is shared only if every steering treats it the same in every row (same position
    mask and gate), so that one batch-1 forward over it is exact for every row.
    """
    prefix = common_prefix(tokens, attn)
    if prefix < MIN_SHARED_PREFIX:
        return 0
    pads = tokens.shape[1] - attn.sum(1).cpu()
    assert ctx.prompt_lens is not None
    for i, s in enumerate(steerings):
        if s.is_identity:
            continue
        mask = position_mask(
            s.positions, prompt_lens=ctx.prompt_lens, pads=pads, offset=0, seq_len=prefix, prefix=prefix
        )
        if ctx.rows is not None:
            mask = mask & ctx.steered_rows(i)[:, None]
        if not bool((mask == mask[:1]).all()):
            return 0
    return prefix


class SharedPrefix(NamedTuple):
    """A batch re-laid as ``[prefix][pads][rest]`` after its shared prefix ran once (a named tuple, so
    ``seq, mask, cache, fired = shared`` still reads)."""

    tokens: Int[torch.Tensor, "batch pos"]
    mask: Int[torch.Tensor, "batch pos"]
    cache: Any  # the KV cache holding the prefix, copied to every row
    prefix_fired: Bool[torch.Tensor, "batch prefix"]  # which prefix tokens each row's steerings changed


def prefill_shared_prefix(
    forward: Any, tokens: torch.Tensor, attn: torch.Tensor, prefix: int, ctx: SteeringContext
) -> SharedPrefix | None:
    """Run the shared prefix once (batch 1) and lay the batch out as ``[prefix][pads][rest]``.

    Padding moves from the left to just after the prefix: masked out and with positions taken
    from the attention mask, the layout gives the same logits as left padding, while the prefix's
    keys and values are computed once and copied to every row. Returns the re-laid tokens and
    mask, the KV cache holding the prefix, and which prefix tokens each row's steerings changed;
    ``None`` if the model's cache cannot be shared across rows. ``forward`` is the decoder's cached
    forward (:meth:`lensteer.core.plain.PlainView.forward`'s signature), under the decoder's hooks.
    """
    batch = tokens.shape[0]
    seq, mask = relay_after_prefix(tokens, attn, prefix)
    saved = (ctx.prompt_lens, ctx.pads, ctx.rows)
    assert ctx.prompt_lens is not None and ctx.pads is not None
    ctx.clear()
    ctx.prompt_lens, ctx.pads, ctx.offset, ctx.prefix = (
        ctx.prompt_lens[:1],
        torch.zeros(1, dtype=torch.long),
        0,
        0,
    )
    ctx.rows = None if ctx.rows is None else ctx.rows[..., :1]
    try:
        _, cache = forward(seq[:1, :prefix], mask[:1, :prefix], None, last_only=True)
        fired = torch.zeros(1, prefix, dtype=torch.bool)
        for record in ctx.records:
            fired |= record.fired
    finally:
        ctx.prompt_lens, ctx.pads, ctx.rows = saved
        ctx.clear()
    if not share_cache(cache, batch):
        return None  # not a transformers cache we can copy across rows: decode without sharing
    ctx.prefix = prefix
    return SharedPrefix(seq, mask, cache, fired.expand(batch, prefix))


def teacher_forced_states(
    model: Bridge,
    steerings: Sequence[Steering],
    tokens: Int[torch.Tensor, "batch pos"],
    attn: Int[torch.Tensor, "batch pos"],
    where: Bool[torch.Tensor, "batch pos"],
    ctx: SteeringContext,
    *,
    view: PlainView | None = None,
) -> Float[torch.Tensor, "n d_model"]:
    """Final-normalized residuals (the unembedding's input) at the ``where`` positions of one
    teacher-forced forward of a left-padded batch under ``steerings`` (none: unsteered).

    A prefix every row shares (a few-shot context) is computed once at batch 1, as decoding does
    (:func:`prefill_shared_prefix`), when the model's plain view is usable (``view``, from
    :func:`~lensteer.core.plain.plain_view` before any hook was added) and every ``where`` position
    lies after it; otherwise the whole batch runs through the bridge. Both give the same states
    (tested). ``ctx`` carries the batch's ``prompt_lens`` / ``pads`` / ``rows``.
    """
    prefix = 0
    if view is not None and plain_steerable(model, steerings) and tokens.shape[0] > 1:
        prefix = shared_prefix(tokens, attn, steerings, ctx)
        pads = (tokens.shape[1] - attn.sum(1)).cpu()
        read = torch.arange(tokens.shape[1])[None, :] - pads[:, None]  # token index within each row
        first = int(read[where.cpu()].min()) if prefix and bool(where.any()) else prefix
        if (
            first < prefix
        ):  # a position to read lies inside the prefix (options that start alike): stop before it
            prefix = first if first >= MIN_SHARED_PREFIX else 0
    if prefix and view is not None:
        with steer_plain(model, view, *steerings, context=ctx), warnings.catch_warnings():
            # transformers 5.24 renames past_key_values to cache (as in generation._decode_batch)
            warnings.filterwarnings("ignore", message=".*past_key_values.*deprecated", category=FutureWarning)
            shared = prefill_shared_prefix(view.forward, tokens, attn, prefix, ctx)
            if shared is not None:
                ctx.clear()
                ctx.offset = prefix
                states = view.final_normalized(shared.tokens[:, prefix:], shared.mask, shared.cache)
                return states[where[:, prefix:].to(shared.tokens.device)]
    ctx.offset, ctx.prefix = 0, 0
    with steer(model, *steerings, context=ctx) if steerings else nullcontext():
        return final_normalized(model, tokens, attn)[where.to(tokens.device)]
