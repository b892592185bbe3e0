"""Forward-pass helpers that avoid computing logits nobody reads.

The unembedding is the most expensive matmul of a small model (49k x 576 per token for SmolLM2):
scoring a response needs logits at a few positions only. ``final_normalized`` runs the model up to
the unembedding's input (the final-norm output) and stops; ``unembed`` maps selected rows to logits.
"""

from typing import Any

import torch

from lensteer.core.sites import UNEMBED_INPUT


class _StopBeforeUnembed(Exception):
    def __init__(self, tensor: torch.Tensor) -> None:
        super().__init__()
        self.tensor = tensor


def final_normalized(model: Any, tokens: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """``[batch, pos, d_model]`` input of the unembedding (after the final norm), without computing logits."""

    def stop(x: torch.Tensor, hook: Any) -> torch.Tensor:  # noqa: ARG001 - TL signature
        raise _StopBeforeUnembed(x)

    try:
        with model.hooks(fwd_hooks=[(UNEMBED_INPUT, stop)]):
            model(tokens, attention_mask=attention_mask)
    except _StopBeforeUnembed as caught:
        return caught.tensor
    raise RuntimeError(f"the model never reached {UNEMBED_INPUT}")


def last_logits(model: Any, tokens: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """``[batch, d_vocab]`` logits at the last position only (left padding keeps it a real token)."""
    return unembed(model, final_normalized(model, tokens, attention_mask)[:, -1])


def unembed(model: Any, x: torch.Tensor) -> torch.Tensor:
    """Logits ``x @ W_U + b_U`` for ``[..., d_model]`` final-normalized residuals."""
    logits = x @ model.W_U.to(x.device, x.dtype)
    b_u = getattr(model, "b_U", None)
    return logits + b_u.to(x.device, x.dtype) if b_u is not None else logits


def last_position_logits(model: Any) -> Any:
    """Hooks (a ``with`` block) that feed the unembedding only the last position: for forwards whose
    caller reads the last logits only (decoding, patching metrics), the rest of the unembedding is waste."""

    def keep_last(x: torch.Tensor, hook: Any) -> torch.Tensor:  # noqa: ARG001 - TL signature
        return x[:, -1:]

    return model.hooks(fwd_hooks=[(UNEMBED_INPUT, keep_last)])
