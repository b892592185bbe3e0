"""Batched activation collection through TransformerLens hook points.

``collect_activations`` tokenizes prompts with their chat template, sorts them by length into
left-padded batches with an attention mask, hooks only the requested ``blocks.{L}.hook_{site}``
points, stops the forward pass after the deepest requested layer, and keeps only the selected
token positions: memory stays O(n_prompts x n_layers x d_model), never a full cache.

Position selectors (relative to each unpadded prompt):

* ``"last"``: the last token (for a bare chat prompt, the newline after ``assistant``);
* ``"post_instruction"``: every chat-template token after the user message (a position axis);
* ``"instruction_mean"`` / ``"response_mean"``: mean over the user-message / response tokens;
* an ``int`` or a sequence of ints: explicit indices (negative counts from the end).
"""

from collections.abc import Sequence
from typing import Any

import torch
from jaxtyping import Float
from tqdm.auto import tqdm

from lensteer._types import Tokens
from lensteer.core.bridge import Bridge
from lensteer.core.chat import (
    ChatPrompt,
    TokenizedPrompt,
    length_sorted_batches,
    pad_id_of,
    tokenize_prompt,
)
from lensteer.core.sites import HookSite, resolve_sites
from lensteer.errors import ConfigError, DataError, HookSiteError

NAMED_POSITIONS = ("last", "post_instruction", "instruction_mean", "response_mean")
Position = str | int | Sequence[int]


def as_tokenized(
    model: Bridge, prompts: "Sequence[str | ChatPrompt | TokenizedPrompt] | Tokens", chat: bool
) -> list[TokenizedPrompt]:
    if isinstance(prompts, torch.Tensor):
        if prompts.ndim != 2 or prompts.shape[0] == 0:
            raise DataError(
                f"token input must be [n_prompts, pos] with n_prompts > 0, got shape {tuple(prompts.shape)}"
            )
        n = int(prompts.shape[1])
        return [
            TokenizedPrompt(tokens=row.long(), instruction=(0, n), post_instruction=(n, n), response=(n, n))
            for row in prompts
        ]
    if isinstance(prompts, str):
        raise DataError("pass a list of prompts, not a single string")
    if len(prompts) == 0:
        raise DataError("the prompt list is empty; pass at least one prompt")
    return [p if isinstance(p, TokenizedPrompt) else tokenize_prompt(model, p, chat=chat) for p in prompts]


def position_weights(prompt: TokenizedPrompt, position: Position, prompt_idx: int = 0) -> torch.Tensor:
    """Read weights ``[n_out, n_tokens]`` for one unpadded prompt: one-hot rows or a mean row.

    Raises:
        HookSiteError: The selector names a position this prompt lacks.
    """
    n = prompt.n_tokens
    if isinstance(position, str):
        if position not in NAMED_POSITIONS:
            raise HookSiteError(
                f"unknown position {position!r}; allowed: {', '.join(NAMED_POSITIONS)}, an int or a list of ints"
            )
        if position == "last":
            indices = [n - 1]
        else:
            part = position.removesuffix("_mean")
            start, end = getattr(prompt, part)
            if end <= start:
                hint = (
                    " (prompts need a response: use ChatPrompt(response=...))" if part == "response" else ""
                )
                raise HookSiteError(
                    f"prompt {prompt_idx} has no {part} tokens for position {position!r}{hint}"
                )
            if position == "post_instruction":
                indices = list(range(start, end))
            else:
                weights = torch.zeros(1, n)
                weights[0, start:end] = 1.0 / (end - start)
                return weights
    else:
        indices = [position] if isinstance(position, int) else list(position)
        if not indices or any(isinstance(i, bool) or not isinstance(i, int) for i in indices):
            raise HookSiteError(f"explicit positions must be a non-empty list of ints, got {position!r}")
        bad = [i for i in indices if not -n <= i < n]
        if bad:
            raise HookSiteError(
                f"position {bad[0]} does not exist in prompt {prompt_idx} ({n} tokens; valid: 0..{n - 1} or -{n}..-1)"
            )
        indices = [i % n for i in indices]
    weights = torch.zeros(len(indices), n)
    weights[torch.arange(len(indices)), torch.tensor(indices)] = 1.0
    return weights


def collect_activations(
    model: Bridge,
    prompts: "Sequence[str | ChatPrompt | TokenizedPrompt] | Tokens",
    *,
    layers: int | Sequence[int] | None = None,
    site: str = "resid_post",
    position: Position = "last",
    batch_size: int = 16,
    chat: bool = True,
    progress: bool = False,
) -> Float[torch.Tensor, "n_prompts n_layers *n_pos d_model"]:
    """Collect residual-stream activations at chosen layers and token positions.

    Args:
        model: A ``TransformerBridge`` in eval mode.
        prompts: User messages (chat-formatted), :class:`~lensteer.ChatPrompt` objects, or a
            ``[n_prompts, pos]`` token tensor (no padding; then ``position`` must be ``"last"`` or
            explicit indices).
        layers: Layer indices (negative count from the end), in the order wanted; ``None`` for all.
        site: ``"resid_pre"``, ``"resid_mid"``, ``"resid_post"``, ``"attn_out"`` or ``"mlp_out"``.
        position: ``"last"``, ``"post_instruction"``, ``"instruction_mean"``, ``"response_mean"``,
            an int, or a list of ints.
        batch_size: Prompts per forward pass.
        chat: Format strings with the chat template (``False``: raw text).
        progress: Show a progress bar.

    Returns:
        CPU float32 ``[n_prompts, n_layers, d_model]``, or ``[n_prompts, n_layers, n_pos, d_model]``
        when the selector yields several positions (``"post_instruction"``, a list of ints).

    Raises:
        HookSiteError: Unknown site, layer out of range, position missing from a prompt.
        DataError: Empty prompt list, or ``post_instruction`` spans of different lengths.

    Example:
        >>> acts = lensteer.collect_activations(model, ["Hi!", "How do I bake bread?"], layers=[5, 10])  # doctest: +SKIP
        >>> acts.shape  # doctest: +SKIP
        torch.Size([2, 2, 576])
    """
    if getattr(model, "training", False):
        raise ConfigError("the model is in training mode (dropout on); call model.eval() first")
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    sites = resolve_sites(model, layers, site)
    tokenized = as_tokenized(model, prompts, chat)
    weights = [position_weights(p, position, i) for i, p in enumerate(tokenized)]
    n_out = {w.shape[0] for w in weights}
    if len(n_out) != 1:
        raise DataError(
            f"position {position!r} selects different numbers of tokens across prompts {sorted(n_out)}; "
            "use 'last', a mean, or explicit indices"
        )
    has_pos_axis = not (
        isinstance(position, int) or position in ("last", "instruction_mean", "response_mean")
    )
    out = _weighted_reads(model, tokenized, weights, sites, batch_size, progress=progress)
    return out if has_pos_axis else out[:, :, 0]


def _weighted_reads(
    model: Bridge,
    tokenized: Sequence[TokenizedPrompt],
    weights: Sequence[torch.Tensor],
    sites: Sequence[HookSite],
    batch_size: int,
    *,
    progress: bool,
) -> Float[torch.Tensor, "n_prompts n_sites n_reads d_model"]:
    """``weights[i]`` (``[n_reads, n_tokens]``) applied to prompt ``i``'s residual at each site, in one
    forward pass per length-sorted batch that stops after the deepest site's layer."""
    n_reads = int(weights[0].shape[0])
    out = torch.empty(len(tokenized), len(sites), n_reads, int(model.cfg.d_model), dtype=torch.float32)
    max_layer = max(s.layer for s in sites)
    stop_at = max_layer + 1 if max_layer + 1 < int(model.cfg.n_layers) else None
    device = next(iter(model.parameters())).device
    batches = length_sorted_batches(list(tokenized), batch_size, pad_id_of(model))
    for rows, batch in tqdm(batches, desc=f"collect {sites[0].kind}", disable=not progress, unit="batch"):
        width = batch.tokens.shape[1]
        read = torch.zeros(len(rows), n_reads, width)
        for j, i in enumerate(rows):
            read[j, :, width - tokenized[i].n_tokens :] = weights[i]
        row_idx = torch.tensor(rows)

        def make_hook(col: int, read: torch.Tensor = read, row_idx: torch.Tensor = row_idx) -> Any:
            def hook(resid: torch.Tensor, hook: Any) -> torch.Tensor:  # noqa: ARG001 - TL signature
                picked = torch.einsum("bop,bpd->bod", read.to(resid.device, resid.dtype), resid)
                out[row_idx, col] = picked.float().cpu()
                return resid

            return hook

        fwd_hooks = [(s.name, make_hook(col)) for col, s in enumerate(sites)]
        with torch.inference_mode(), model.hooks(fwd_hooks=fwd_hooks):
            model(
                batch.tokens.to(device), attention_mask=batch.attention_mask.to(device), stop_at_layer=stop_at
            )
    return out


def read_pooled(
    model: Bridge,
    prompts: Sequence[TokenizedPrompt],
    weights: Sequence[torch.Tensor],
    layers: Sequence[int],
    *,
    site: str = "resid_post",
    batch_size: int = 16,
) -> Float[torch.Tensor, "n_prompts n_layers n_reads d_model"]:
    """Weighted reads of the residual stream: per prompt, ``weights[i]`` (``[n_reads, n_tokens]``, e.g. a mean
    over some tokens, one-hot rows) applied at each of ``layers``, in one forward pass per batch that stops
    after the deepest layer. The general form of :func:`collect_activations`' position selectors, for reads
    that differ per prompt (an answer's first tokens, a follow-up question's last token).

    Returns:
        CPU float32 ``[n_prompts, len(layers), n_reads, d_model]``.

    Raises:
        DataError: No prompts, or weights that do not match their prompt or each other.
        HookSiteError: Unknown site or layer out of range.
    """
    if getattr(model, "training", False):
        raise ConfigError("the model is in training mode (dropout on); call model.eval() first")
    if not prompts or len(weights) != len(prompts):
        raise DataError(
            f"need one read-weight matrix per prompt (> 0), got {len(weights)} for {len(prompts)}"
        )
    n_reads = {int(w.shape[0]) for w in weights}
    if len(n_reads) != 1 or any(w.shape[1] != p.n_tokens for w, p in zip(weights, prompts, strict=True)):
        raise DataError("read weights must be [n_reads, n_tokens] for their prompt, n_reads the same for all")
    sites = resolve_sites(model, layers, site)
    return _weighted_reads(model, list(prompts), weights, sites, batch_size, progress=False)
