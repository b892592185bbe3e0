"""Which steering edits which prompt of a :func:`~lensteer.steering.generation.generate` call.

One steering (or several applied together) for every prompt, or one steering (or ``None``) per
prompt; gates then decide, prompt by prompt, whether a steering is let through. These helpers turn
either form into ``[n_steerings, n_prompts]`` masks the hooks use, and report back per prompt.
"""

import warnings
from collections.abc import Sequence

import torch
from jaxtyping import Bool, Int

from lensteer.core.bridge import Bridge
from lensteer.core.chat import TokenizedPrompt
from lensteer.errors import ConfigError
from lensteer.steering.gates import gate_rows
from lensteer.steering.positions import selects_nothing
from lensteer.steering.spec import Steering


def as_steerings(steering: "Steering | Sequence[Steering] | None") -> tuple[Steering, ...]:
    """``steering=`` as a tuple (empty for ``None``), each item checked."""
    if steering is None:
        return ()
    items = (steering,) if isinstance(steering, Steering) else tuple(steering)
    for s in items:
        if not isinstance(s, Steering):
            raise ConfigError(f"steering must be a Steering or a list of them, got {type(s).__name__}")
    return items


def by_prompt(
    prompt_steerings: "Sequence[Steering | None]", n_prompts: int
) -> tuple[tuple[Steering, ...], Bool[torch.Tensor, "n_steerings n_prompts"]]:
    """The distinct steerings of a per-prompt list, and ``[n_steerings, n_prompts]`` bool: whose prompt is whose."""
    if isinstance(prompt_steerings, Steering) or len(prompt_steerings) != n_prompts:
        got = (
            "a single Steering"
            if isinstance(prompt_steerings, Steering)
            else f"{len(prompt_steerings)} entries"
        )
        raise ConfigError(f"prompt_steerings needs one Steering or None per prompt ({n_prompts}), got {got}")
    distinct: list[Steering] = []
    index: list[int] = []
    for k, s in enumerate(prompt_steerings):
        if s is not None and not isinstance(s, Steering):
            raise ConfigError(f"prompt_steerings[{k}] must be a Steering or None, got {type(s).__name__}")
        if s is None:
            index.append(-1)
            continue
        j = next((j for j, d in enumerate(distinct) if d is s), len(distinct))
        if j == len(distinct):
            distinct.append(s)
        index.append(j)
    owner = torch.zeros(len(distinct), n_prompts, dtype=torch.bool)
    for i, j in enumerate(index):
        if j >= 0:
            owner[j, i] = True
    return tuple(distinct), owner


def owned_gate_rows(
    model: Bridge, steerings: Sequence[Steering], owner: torch.Tensor, tokenized: Sequence[TokenizedPrompt]
) -> torch.Tensor:
    """[n_steerings, n_prompts] bool: the rows each steering edits (its own prompts its gate opens)."""
    rows = owner.clone()
    for j, s in enumerate(steerings):
        mine = owner[j].nonzero().flatten().tolist()
        if s.gate is not None and mine:
            rows[j, mine] = gate_rows(model, [s.gate], [tokenized[i] for i in mine])
    return rows


def gated_flags(
    gates: torch.Tensor | None, owner: torch.Tensor | None, steerings: Sequence[Steering], n: int
) -> tuple[bool, ...]:
    """Per prompt: did its steerings' gates let it through (True where no gate applies)."""
    if gates is None:
        return (True,) * n
    if owner is None:
        return tuple(bool(g) for g in gates)
    out = [True] * n
    for j, s in enumerate(steerings):
        if s.gate is not None:
            for i in owner[j].nonzero().flatten().tolist():
                out[i] = bool(gates[j, i])
    return tuple(out)


def projection_owner(owner: torch.Tensor | None, n_steerings: int, n: int) -> Int[torch.Tensor, " n"]:
    """Per prompt, the steering whose projection it reports: its own steering (``prompt_steerings``),
    else the first one applied; ``-1`` where it has none."""
    if owner is None:
        return torch.full((n,), 0 if n_steerings else -1, dtype=torch.long)
    which = torch.full((n,), -1, dtype=torch.long)
    for j in range(owner.shape[0]):  # at most one owner per prompt
        which[owner[j]] = j
    return which


def warn_if_positions_select_nothing(
    steerings: Sequence[Steering],
    owner: torch.Tensor | None,
    tokenized: Sequence[TokenizedPrompt],
    max_new_tokens: int,
) -> None:
    """Warn when a steering's positions select no token of some prompt it applies to (a window past the
    prompt and the tokens generated after it): those prompts are answered unsteered."""
    for k, s in enumerate(steerings):
        rows = [i for i in range(len(tokenized)) if owner is None or bool(owner[k, i])]
        if not rows:
            continue
        # the last generated token is never fed back, so the forwards see prompt + max_new_tokens - 1 tokens
        empty = selects_nothing(
            s.positions,
            [tokenized[i].n_tokens for i in rows],
            [tokenized[i].n_tokens + max_new_tokens - 1 for i in rows],
        )
        if empty:
            hit = [rows[j] for j in empty]
            warnings.warn(
                f"steering positions {s.positions!r} select no token of prompt(s) {hit[:10]} "
                f"({tokenized[hit[0]].n_tokens} prompt tokens + {max_new_tokens} new at most): "
                "they are answered unsteered; use a window that starts inside the text",
                UserWarning,
                stacklevel=3,
            )
