"""The first-token decision: how much more likely does the model open its answer the aligned way?

Where a behaviour is *decided*, not how a written reply scores once it is supplied: at the last prompt
token (the assistant start, or after a prefilled stem such as ``"The capital of France is"``), the
log-odds of the aligned opening tokens (``"I"``, ``"Sorry"`` for refusal; the true answer's token for
honesty) over the misaligned ones (``"Sure"``, ``"Here"``; the false answer's token). A steering that
raises it makes the model more likely to *start* the aligned answer; a teacher-forced margin over a
whole written reply can rise without it (the reply's later tokens supply the behaviour).
"""

from collections.abc import Sequence
from typing import Any

import torch
from jaxtyping import Float

from lensteer.core.bridge import Bridge
from lensteer.core.chat import (
    ChatPrompt,
    TokenizedPrompt,
    first_token_id,
    length_sorted_batches,
    pad_id_of,
    tokenize_prompt,
)
from lensteer.core.forward import unembed
from lensteer.core.plain import plain_view
from lensteer.errors import DataError
from lensteer.steering.hooks import SteeringContext
from lensteer.steering.prefix import teacher_forced_states
from lensteer.steering.spec import Steering

TokenIds = Sequence[int] | Sequence[Sequence[int]]


def _per_prompt(ids: TokenIds, n: int, name: str) -> list[list[int]]:
    """One list of token ids per prompt: the same list for all, or one given per prompt."""
    if isinstance(ids, (str, bytes)) or len(ids) == 0:
        raise DataError(
            f"{name} must be a non-empty list of token ids (or one such list per prompt), got {ids!r}"
        )
    items: list[Any] = list(ids)
    if all(isinstance(i, int) and not isinstance(i, bool) for i in items):
        return [[int(i) for i in items]] * n
    if len(items) != n:
        raise DataError(
            f"{name} gives {len(items)} lists of token ids for {n} prompts; give one list, or one per prompt"
        )
    out = []
    for k, row in enumerate(items):
        if (
            isinstance(row, (int, str))
            or len(row) == 0
            or not all(isinstance(i, int) and not isinstance(i, bool) for i in row)
        ):
            raise DataError(f"{name}[{k}] must be a non-empty list of token ids, got {row!r}")
        out.append([int(i) for i in row])
    return out


def opening_log_odds(
    model: Bridge,
    prompts: Sequence["str | ChatPrompt | TokenizedPrompt"],
    aligned_ids: TokenIds,
    misaligned_ids: TokenIds,
    *,
    steering: Steering | Sequence[Steering] | None = None,
    batch_size: int = 16,
) -> Float[torch.Tensor, " n_prompts"]:
    """Per prompt: ``log sum p(aligned ids) - log sum p(misaligned ids)`` of the next token after the prompt.

    Args:
        prompts: Chat prompts (a ``response`` is a prefill: the decision is read right after it), or
            already tokenized prompts.
        aligned_ids: Token ids of the aligned openings, one list for every prompt or one list per prompt
            (e.g. each question's true answer token).
        misaligned_ids: The same for the misaligned openings (disjoint from the aligned ones).
        steering: Applied as deployed: its own positions and gate (``"generated"`` steers the last prompt
            token, the one whose output picks the first generated token), on one teacher-forced forward.

    Raises:
        DataError: Empty prompts or token lists, or a token on both sides.
    """
    if isinstance(prompts, str) or len(prompts) == 0:
        raise DataError("opening_log_odds needs a non-empty list of prompts")
    good, bad = (
        _per_prompt(aligned_ids, len(prompts), "aligned_ids"),
        _per_prompt(misaligned_ids, len(prompts), "misaligned_ids"),
    )
    for k, (g, b) in enumerate(zip(good, bad, strict=True)):
        if set(g) & set(b):
            raise DataError(
                f"prompt {k}: token ids {sorted(set(g) & set(b))} are both aligned and misaligned openings"
            )
    steerings: tuple[Steering, ...] = (
        () if steering is None else (steering,) if isinstance(steering, Steering) else tuple(steering)
    )
    tokenized = [p if isinstance(p, TokenizedPrompt) else tokenize_prompt(model, p) for p in prompts]
    out = torch.empty(len(tokenized))
    view, device = plain_view(model), next(iter(model.parameters())).device
    with torch.inference_mode():
        for rows, batch in length_sorted_batches(tokenized, batch_size, pad_id_of(model)):
            lens = batch.attention_mask.sum(1)
            where = torch.zeros(batch.tokens.shape, dtype=torch.bool)
            where[:, -1] = True
            ctx = SteeringContext(prompt_lens=lens, pads=batch.tokens.shape[1] - lens, record=False)
            states = teacher_forced_states(
                model,
                steerings,
                batch.tokens.to(device),
                batch.attention_mask.to(device),
                where,
                ctx,
                view=view,
            )
            logp = torch.log_softmax(unembed(model, states).float(), dim=-1).cpu()
            for j, i in enumerate(rows):
                out[i] = logp[j, good[i]].logsumexp(-1) - logp[j, bad[i]].logsumexp(-1)
    return out


def opening_ids(
    model: Bridge, aligned: Sequence[str], misaligned: Sequence[str]
) -> tuple[list[int], list[int]]:
    """The first token ids of the aligned and the misaligned opening texts (``("I", "Sorry")`` vs
    ``("Sure", "Here")``), each side deduplicated; a token both sides start with is dropped from both
    (on a character-level tokenizer ``"Sorry"`` and ``"Sure"`` share ``"S"``).

    Raises:
        DataError: A side is empty, or left with no token of its own.
    """
    if isinstance(aligned, str) or isinstance(misaligned, str) or not aligned or not misaligned:
        raise DataError(
            f"give non-empty lists of opening texts for both sides, got {aligned!r} and {misaligned!r}"
        )
    good, bad = (
        list(dict.fromkeys(first_token_id(model, t) for t in side)) for side in (aligned, misaligned)
    )
    shared = set(good) & set(bad)
    good, bad = [i for i in good if i not in shared], [i for i in bad if i not in shared]
    if not good or not bad:
        raise DataError(
            f"the openings {list(aligned)} and {list(misaligned)} start with the same tokens on this tokenizer; "
            "give openings whose first tokens differ"
        )
    return good, bad


def first_difference(
    model: Bridge, aligned: Sequence[ChatPrompt], misaligned: Sequence[ChatPrompt]
) -> tuple[list[TokenizedPrompt], list[list[int]], list[list[int]]]:
    """Decision stems of prompts that end in two written replies: per pair, the tokens up to where the aligned
    and the misaligned conversation first differ, and the aligned and misaligned token there (e.g. the
    true vs the false answer after ``"The capital of France is"``), ready for :func:`opening_log_odds`.

    Raises:
        DataError: Unequal numbers of prompts, or a pair whose tokens never differ.
    """
    if len(aligned) != len(misaligned) or not aligned:
        raise DataError(
            f"need equally many aligned and misaligned prompts (> 0), got {len(aligned)} and {len(misaligned)}"
        )
    stems, good, bad = [], [], []
    for a, m in zip(aligned, misaligned, strict=True):
        ta, tm = tokenize_prompt(model, a).tokens, tokenize_prompt(model, m).tokens
        width = min(len(ta), len(tm))
        differ = (ta[:width] != tm[:width]).nonzero()
        if len(differ) == 0:
            raise DataError(
                f"the two replies to {a.user[:40]!r} never differ in a token: {a.response!r}, {m.response!r}"
            )
        k = int(differ[0])
        stems.append(
            TokenizedPrompt(tokens=ta[:k], instruction=(0, 0), post_instruction=(0, 0), response=(k, k))
        )
        good.append([int(ta[k])])
        bad.append([int(tm[k])])
    return stems, good, bad
