"""Choosing the next token: greedy, or sampled (temperature, top-k, top-p) from a seeded generator."""

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from jaxtyping import Float, Int

from lensteer.errors import ConfigError


@dataclass(frozen=True, kw_only=True)
class Sampling:
    """How :func:`~lensteer.generate` chooses each token (validated on construction).

    Attributes:
        do_sample: Sample instead of greedy decoding (the other fields apply only then).
        temperature: Sampling temperature (> 0).
        top_k: Sample among the ``top_k`` most likely tokens (``None``: all).
        top_p: Sample within the top-``p`` probability mass (nucleus), in ``(0, 1]``.
        seed: Prompt ``i`` draws from its own generator seeded ``seed + i``, so sampling does not
            depend on how prompts are batched.
    """

    do_sample: bool = False
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        check_sampling(self.do_sample, self.temperature, self.top_k, self.top_p)

    def generators(self, rows: Sequence[int]) -> list[torch.Generator]:
        """One generator per prompt index in ``rows`` (none when decoding greedily)."""
        return [torch.Generator().manual_seed(self.seed + i) for i in rows] if self.do_sample else []

    def next_tokens(
        self, logits: Float[torch.Tensor, "batch d_vocab"], gens: Sequence[torch.Generator]
    ) -> Int[torch.Tensor, " batch"]:
        """The chosen token of each row: the argmax, or a draw from row ``b``'s generator ``gens[b]``."""
        if not self.do_sample:
            return logits.argmax(-1)
        return torch.tensor(
            [
                sample_token(logits[b], gens[b], self.temperature, self.top_k, self.top_p)
                for b in range(logits.shape[0])
            ]
        )


def check_sampling(do_sample: bool, temperature: float, top_k: int | None, top_p: float) -> None:
    if not do_sample:
        return
    if not temperature > 0:
        raise ConfigError(f"temperature must be > 0 when sampling, got {temperature}")
    if top_k is not None and top_k < 1:
        raise ConfigError(f"top_k must be >= 1 or None, got {top_k}")
    if not 0 < top_p <= 1:
        raise ConfigError(f"top_p must be in (0, 1], got {top_p}")


def sample_token(
    logits: torch.Tensor, gen: torch.Generator, temperature: float, top_k: int | None, top_p: float
) -> int:
    logits = logits.float() / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, -1)
    if top_p < 1.0:
        sorted_p, order = probs.sort(descending=True)
        keep = sorted_p.cumsum(-1) - sorted_p < top_p
        probs = torch.zeros_like(probs).scatter(0, order[keep], sorted_p[keep])
    return int(torch.multinomial(probs.cpu(), 1, generator=gen))
