"""Which token positions a steering edits: named scopes, explicit indices, windows, the last k prompt tokens.

Positions count tokens of each row from its first real (non-pad) token: prompt tokens first, then
generated ones. ``"generated"`` means the positions whose output chooses a generated token: the last
prompt token (it picks the first generated token) and every generated token after it. Negative indices count back from the end of the prompt (``-1`` = last prompt token).
Inside :func:`lensteer.generate` the engine is told the prompt lengths and how many tokens came
before each forward (the KV cache feeds one token at a time), so positions are tracked, not guessed.
"""

from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Bool

from lensteer.errors import ConfigError, HookSiteError

NAMED_POSITIONS = ("all", "prompt", "generated")


@dataclass(frozen=True)
class Window:
    """Token positions ``start <= i < stop`` (``stop=None``: to the end, generated tokens included).

    Negative bounds count back from the end of the prompt, so ``Window(-3, None)`` is the last three
    prompt tokens and everything generated after them.
    """

    start: int
    stop: int | None = None


@dataclass(frozen=True)
class LastK:
    """The last ``k`` tokens of the prompt (e.g. the post-instruction template tokens)."""

    k: int

    def __post_init__(self) -> None:
        if isinstance(self.k, bool) or not isinstance(self.k, int) or self.k < 1:
            raise ConfigError(f"LastK.k must be an int >= 1, got {self.k!r}")


Positions = str | tuple[int, ...] | Window | LastK


def check_positions(positions: Any) -> Positions:
    if isinstance(positions, str):
        if positions not in NAMED_POSITIONS:
            raise ConfigError(
                f"positions {positions!r} is not allowed; use one of {NAMED_POSITIONS}, a tuple of token "
                "indices, Window(start, stop) or LastK(k)"
            )
        return positions
    if isinstance(positions, (Window, LastK)):
        return positions
    if (
        isinstance(positions, (list, tuple))
        and positions
        and all(isinstance(i, int) and not isinstance(i, bool) for i in positions)
    ):
        return tuple(positions)
    raise ConfigError(
        f"positions {positions!r} is not allowed; use one of {NAMED_POSITIONS}, a non-empty tuple of int token "
        "indices, Window(start, stop) or LastK(k)"
    )


def position_mask(
    positions: Positions,
    *,
    prompt_lens: torch.Tensor,
    pads: torch.Tensor,
    offset: int,
    seq_len: int,
    prefix: int = 0,
) -> Bool[torch.Tensor, "batch pos"]:
    """Which (row, column) of a forward's residual the positions select.

    Args:
        positions: The position spec.
        prompt_lens: Real (unpadded) prompt length of each row.
        pads: Pad count of each row: left padding, or (with ``prefix``) padding after a shared prefix.
        offset: How many columns came before this forward (KV-cache steps).
        seq_len: Columns in this forward.
        prefix: Length of a prefix shared by every row and placed before the padding
            (``[prefix][pads][rest]``, see :func:`lensteer.generate`); 0 for plain left padding.
    """
    col = torch.arange(offset, offset + seq_len)[None, :]
    after = col >= prefix
    t = torch.where(after, col - pads[:, None], col)  # token index within the row
    real = (t >= 0) & (~after | (col >= prefix + pads[:, None]))
    in_prompt = t < prompt_lens[:, None]
    if positions == "all":
        sel = real
    elif positions == "prompt":
        sel = real & in_prompt
    elif positions == "generated":
        # the positions that choose generated tokens: the last prompt token chooses the first one
        # (skipping it is CAA's known off-by-one, nrimsky/CAA#3), then every generated token
        sel = real & (t >= prompt_lens[:, None] - 1)
    elif isinstance(positions, LastK):
        sel = real & in_prompt & (t >= prompt_lens[:, None] - positions.k)
    elif isinstance(positions, Window):
        start = positions.start + (prompt_lens[:, None] if positions.start < 0 else 0)
        sel = real & (t >= start)
        if positions.stop is not None:
            stop = positions.stop + (prompt_lens[:, None] if positions.stop < 0 else 0)
            sel = sel & (t < stop)
    else:
        idx = torch.tensor(positions)[None, :]
        absolute = torch.where(idx < 0, idx + prompt_lens[:, None], idx)  # [batch, k]
        if bool(((absolute < 0) | (absolute >= prompt_lens[:, None])).any()):
            raise HookSiteError(
                f"position indices {list(positions)} fall outside a prompt of "
                f"{int(prompt_lens.min())} tokens; explicit indices must lie in the prompt "
                f"(0..n-1, or -n..-1 from its end)"
            )
        sel = real & (t[:, :, None] == absolute[:, None, :]).any(-1)
    return sel


def selects_nothing(positions: Positions, prompt_lens: list[int], total_lens: list[int]) -> list[int]:
    """The rows where ``positions`` selects no token among the first ``total_lens[i]`` tokens (the prompt's
    ``prompt_lens[i]`` and what follows it): a window that starts past the text fires on nothing."""
    if not isinstance(positions, Window):  # named scopes and LastK always select; indices outside raise
        return []
    width = max(total_lens)
    lens = torch.tensor(prompt_lens)
    sel = position_mask(positions, prompt_lens=lens, pads=torch.zeros_like(lens), offset=0, seq_len=width)
    within = torch.arange(width)[None, :] < torch.tensor(total_lens)[:, None]
    return [i for i in range(len(prompt_lens)) if not bool((sel[i] & within[i]).any())]
