"""Choosing the next token when sampling: temperature, top-k, top-p, from a seeded generator."""

import torch

from lensteer.errors import ConfigError


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
