"""Per-token activations of the model's own answers: what StTP / StMP thresholds are fitted on.

A selective method decides token by token whether to steer, so its threshold and target must come
from the distribution it is applied to: per-token residuals of *generated* text, read at the
steering layer, at the positions a steering sees while decoding (the last prompt token, which
chooses the first answer token, and every answer token after it). Means over hand-written replies
live on another scale: their threshold fires on aligned tokens too (seed paper, section 1.2 of
our method notes; ``docs/methods.md``).

Typical use (the study does this per threat model)::

    aligned = response_token_activations(model, prompts_with_aligned_system, layer=9)
    misaligned = response_token_activations(model, prompts_with_misaligning_context, layer=9)
    sttp = Steering.from_contrast(direction, aligned.acts, misaligned.acts, mode="sttp")
"""

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypedDict, Unpack

import torch
from jaxtyping import Float, Int

from lensteer.core.activations import collect_activations
from lensteer.core.bridge import Bridge
from lensteer.core.chat import ChatPrompt, TokenizedPrompt
from lensteer.core.options import settings_from
from lensteer.errors import ConfigError, DataError
from lensteer.steering.generation import Generations, generate


@dataclass(frozen=True, kw_only=True, eq=False)
class ResponseTokens:
    """Residuals of generated answers, one row per token a steering would see while decoding.

    Attributes:
        acts: ``[n_tokens, d_model]`` residuals at ``layer``/``site``.
        row: ``[n_tokens]`` which answer each token belongs to.
        texts: The answers.
        layer, site: Where they were read.
        skipped_massive: Tokens left out because their norm exceeded ``max_norm``.
    """

    acts: Float[torch.Tensor, "n_tokens d_model"]
    row: Int[torch.Tensor, " n_tokens"]
    texts: tuple[str, ...]
    layer: int
    site: str
    skipped_massive: int = 0

    @property
    def n_tokens(self) -> int:
        return int(self.acts.shape[0])

    def rows(self, keep: Sequence[int]) -> "ResponseTokens":
        """Only the tokens of the answers ``keep`` (e.g. those a scorer says show the class's behaviour)."""
        wanted = torch.zeros(len(self.texts), dtype=torch.bool)
        wanted[list(keep)] = True
        sel = wanted[self.row]
        return ResponseTokens(
            acts=self.acts[sel],
            row=self.row[sel],
            texts=self.texts,
            layer=self.layer,
            site=self.site,
            skipped_massive=self.skipped_massive,
        )


def answer_positions(prompt_len: int, n_generated: int) -> list[int]:
    """Positions a steering sees while decoding an answer: the last prompt token, then each answer token."""
    if prompt_len < 1 or n_generated < 0:
        raise DataError(f"a prompt needs >= 1 token and an answer >= 0 (got {prompt_len}, {n_generated})")
    return list(range(prompt_len - 1, prompt_len + n_generated))


class AnswerOptions(TypedDict, total=False):
    """The keyword options of :func:`response_token_activations` (how the answers are decoded)."""

    max_new_tokens: int
    batch_size: int
    progress: bool


@dataclass(frozen=True, kw_only=True)
class AnswerDecoding:
    """:class:`AnswerOptions` with their defaults: answer length, prompts per batch, progress bar."""

    max_new_tokens: int = 32
    batch_size: int = 16
    progress: bool = False


def response_token_activations(
    model: Bridge,
    prompts: "Sequence[str | ChatPrompt]",
    *,
    layer: int,
    site: str = "resid_post",
    max_norm: float | None = None,
    generations: Generations | None = None,
    **options: Unpack[AnswerOptions],
) -> ResponseTokens:
    """Generate unsteered (greedy) answers and read each answer token's residual at ``layer``/``site``.

    Args:
        prompts: Chat prompts in the setting whose behaviour is wanted (aligned system prompt,
            misaligning context, ...).
        layer, site: Where to read (the steering's layer and site).
        max_norm: Leave out tokens whose norm exceeds it (massive activations; see
            :func:`lensteer.locate.massive_tokens`), as the steering itself will.
        generations: Answers already generated for these prompts (skips decoding).
        **options: ``max_new_tokens`` (32, the answer length), ``batch_size`` (16) and ``progress``
            (``False``): an :class:`AnswerDecoding`.
    """
    decoding = settings_from(AnswerDecoding, options, what="response_token_activations")
    max_new_tokens, batch_size, progress = decoding.max_new_tokens, decoding.batch_size, decoding.progress
    if isinstance(prompts, str) or len(prompts) == 0:
        raise DataError("pass a non-empty list of prompts")
    gens = (
        generations
        if generations is not None
        else generate(
            model, list(prompts), max_new_tokens=max_new_tokens, batch_size=batch_size, progress=progress
        )
    )
    if len(gens) != len(prompts):
        raise ConfigError(f"generations has {len(gens)} answers for {len(prompts)} prompts")
    fulls: list[TokenizedPrompt] = []
    by_count: dict[int, list[int]] = {}  # answers with as many tokens are read together: each row's last k
    for i, (prompt_ids, answer_ids) in enumerate(zip(gens.prompt_tokens, gens.tokens, strict=True)):
        ids = torch.cat([prompt_ids.cpu(), answer_ids.cpu()]).long()
        fulls.append(
            TokenizedPrompt(
                tokens=ids,
                instruction=(0, 0),
                post_instruction=(0, 0),
                response=(int(prompt_ids.shape[0]), int(ids.shape[0])),
            )
        )
        k = len(answer_positions(int(prompt_ids.shape[0]), int(answer_ids.shape[0])))
        by_count.setdefault(k, []).append(i)
    read: dict[int, torch.Tensor] = {}
    for k, members in by_count.items():
        got = collect_activations(
            model,
            [fulls[i] for i in members],
            layers=[layer],
            site=site,
            position=list(range(-k, 0)),
            batch_size=batch_size,
        )
        read |= {i: got[j, 0] for j, i in enumerate(members)}
    acts, rows, skipped = [], [], 0
    for i in range(len(fulls)):
        x = read[i]
        if max_norm is not None:
            keep = x.norm(dim=-1) <= max_norm
            skipped += int((~keep).sum())
            x = x[keep]
        acts.append(x)
        rows.append(torch.full((x.shape[0],), i, dtype=torch.long))
    out = torch.cat(acts)
    if out.shape[0] == 0:
        raise DataError("no answer tokens to read (every token was skipped or no answer was generated)")
    return ResponseTokens(
        acts=out,
        row=torch.cat(rows),
        texts=gens.texts,
        layer=layer % int(model.cfg.n_layers),
        site=site,
        skipped_massive=skipped,
    )
