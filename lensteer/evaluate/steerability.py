"""Causal layer choice: how far does steering at each layer move behaviour, per unit of coherence?

Probe accuracy says where a concept is *readable*; it saturates on many layers and says little
about where adding the direction *changes what the model says*. :func:`steering_effect` measures
the latter without sampling: the change, under a steering, of the teacher-forced log-odds of the
aligned over the misaligned response (mean log-probability per response token). Comparing layers
at a fixed coherence cost is what matters for injection, so :func:`layer_steerability` calibrates
a SwFC steering at each candidate layer to the same KL budget and measures its effect there.
:func:`~lensteer.study.recommend_site` takes the result as its causal criterion (``steerability=``).
"""

from collections.abc import Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field, replace
from typing import Any, TypedDict, Unpack

import torch
from jaxtyping import Float
from tqdm.auto import tqdm

from lensteer.core.bridge import Bridge
from lensteer.core.chat import ChatPrompt, TokenizedPrompt, tokenize_prompt
from lensteer.core.forward import response_logprob
from lensteer.core.options import settings_from
from lensteer.errors import ConfigError, DataError
from lensteer.evaluate.decision import opening_log_odds
from lensteer.steering.calibration import KLProbe, calibrate
from lensteer.steering.hooks import steer
from lensteer.steering.spec import Steering


def preference_margin(
    model: Bridge,
    aligned: Sequence[ChatPrompt],
    misaligned: Sequence[ChatPrompt],
    *,
    steering: Steering | None = None,
    batch_size: int = 16,
) -> Float[torch.Tensor, " n_prompts"]:
    """Per prompt: mean log-prob per token of the aligned response minus that of the misaligned one.

    ``aligned[i]`` and ``misaligned[i]`` are the same conversation ending in the two responses.
    With ``steering``, the margin is measured under it, teacher-forced: every position is steered
    (the response tokens stand in for generated ones; the steering's own positions and gate are
    not used here).
    """
    if len(aligned) != len(misaligned) or not aligned:
        raise DataError(
            f"need equally many aligned and misaligned prompts (> 0), got {len(aligned)} and "
            f"{len(misaligned)}"
        )
    forced = replace(steering.placed(positions="all"), gate=None) if steering is not None else None
    with torch.inference_mode(), steer(model, forced) if forced is not None else nullcontext():
        both = response_logprob(model, [*aligned, *misaligned], batch_size=batch_size)
    return both[: len(aligned)] - both[len(aligned) :]


def decision_log_odds(
    model: Bridge,
    aligned: Sequence[ChatPrompt],
    misaligned: Sequence[ChatPrompt],
    *,
    steering: Steering | None = None,
    batch_size: int = 16,
) -> Float[torch.Tensor, " n_prompts"]:
    """Per prompt: log p(aligned token) - log p(misaligned token) where the two responses first differ.

    Where the decision is made: ``"The capital of Japan is Tokyo."`` vs ``"... Osaka."`` share every token
    up to the answer, so this is the log-odds of the true over the false answer's first token, given the
    shared stem (a continuous honesty metric that needs no generation and no scorer). Under ``steering``
    every position is steered, as in :func:`preference_margin`.
    """
    if len(aligned) != len(misaligned) or not aligned:
        raise DataError(
            f"need equally many aligned and misaligned prompts (> 0), got {len(aligned)} and "
            f"{len(misaligned)}"
        )
    stems, pairs = [], []
    for a, m in zip(aligned, misaligned, strict=True):
        ta, tm = tokenize_prompt(model, a).tokens, tokenize_prompt(model, m).tokens
        width = min(len(ta), len(tm))
        differ = (ta[:width] != tm[:width]).nonzero()
        if len(differ) == 0:
            raise DataError(
                f"the two responses to {a.user[:40]!r} never differ in a token: {a.response!r}, {m.response!r}"
            )
        k = int(differ[0])
        stems.append(
            TokenizedPrompt(tokens=ta[:k], instruction=(0, 0), post_instruction=(0, 0), response=(k, k))
        )
        pairs.append((int(ta[k]), int(tm[k])))
    forced = replace(steering.placed(positions="all"), gate=None) if steering is not None else None
    return opening_log_odds(
        model, stems, [[a] for a, _ in pairs], [[m] for _, m in pairs], steering=forced, batch_size=batch_size
    )


def steering_effect(
    model: Bridge,
    steering: Steering,
    aligned: Sequence[ChatPrompt],
    misaligned: Sequence[ChatPrompt],
    *,
    baseline: torch.Tensor | None = None,
    batch_size: int = 16,
) -> float:
    """Mean change of :func:`preference_margin` under ``steering`` (nats per token; > 0: towards aligned)."""
    base = (
        baseline
        if baseline is not None
        else preference_margin(model, aligned, misaligned, batch_size=batch_size)
    )
    steered = preference_margin(model, aligned, misaligned, steering=steering, batch_size=batch_size)
    return float((steered - base).mean())


@dataclass(frozen=True, kw_only=True)
class Steerability:
    """Per layer: the SwFC scale that costs ``kl_budget`` and the preference shift it buys.

    Attributes:
        kl_budget: The coherence budget every layer was calibrated to (nats per token).
        layers: The layers measured.
        effect: ``{layer: mean change of the aligned-over-misaligned log-odds}`` (nats per token).
        kl: ``{layer: the KL actually reached}``.
        scale: ``{layer: the calibrated relative scale}``.
        baseline_margin: The unsteered mean preference margin.
    """

    kl_budget: float
    layers: tuple[int, ...]
    effect: Mapping[int, float]
    kl: Mapping[int, float]
    scale: Mapping[int, float]
    baseline_margin: float
    info: Mapping[str, Any] = field(default_factory=dict)

    def best_layer(self) -> int:
        return max(self.layers, key=lambda layer: self.effect[layer])

    def to_dict(self) -> dict[str, Any]:
        return {
            "kl_budget": self.kl_budget,
            "layers": list(self.layers),
            "effect": {str(k): v for k, v in self.effect.items()},
            "kl": {str(k): v for k, v in self.kl.items()},
            "scale": {str(k): v for k, v in self.scale.items()},
            "baseline_margin": self.baseline_margin,
            "info": dict(self.info),
        }


class SteerabilityOptions(TypedDict, total=False):
    """The keyword options of :func:`layer_steerability`."""

    tolerance: float
    batch_size: int
    progress: bool


@dataclass(frozen=True, kw_only=True)
class SteerabilitySettings:
    """:class:`SteerabilityOptions` with their defaults (see :func:`layer_steerability`)."""

    tolerance: float = 0.25
    batch_size: int = 16
    progress: bool = False


def layer_steerability(
    model: Bridge,
    steerings: Mapping[int, Steering],
    aligned: Sequence[ChatPrompt],
    misaligned: Sequence[ChatPrompt],
    probe: KLProbe,
    *,
    kl_budget: float = 0.5,
    **options: Unpack[SteerabilityOptions],
) -> Steerability:
    """Calibrate each layer's steering to ``kl_budget`` and measure its :func:`steering_effect`.

    Args:
        steerings: ``{layer: steering}``, e.g. SwFC along each layer's difference of means (gate off:
            the gate is a separate choice).
        aligned: Held-out conversations ending in the aligned response, in the context the steering
            must work in (e.g. with the misaligning few-shot turns).
        misaligned: The same conversations ending in the misaligned response.
        probe: The KL calibration set (harmless prompts), as for :func:`~lensteer.calibrate`.
        kl_budget: Coherence budget (nats per token) every layer is held to.
        **options: ``tolerance`` (0.25): relative KL tolerance of the (screening) calibration;
            ``batch_size`` (16); ``progress`` (``False``).
    """
    settings = settings_from(SteerabilitySettings, options, what="layer_steerability")
    tolerance, batch_size, progress = settings.tolerance, settings.batch_size, settings.progress
    if not steerings:
        raise ConfigError("layer_steerability needs at least one {layer: steering}")
    base = preference_margin(model, aligned, misaligned, batch_size=batch_size)
    effect, kl, scale = {}, {}, {}
    for layer, s in tqdm(sorted(steerings.items()), desc="steerability", disable=not progress, unit="layer"):
        if s.gate is not None:
            raise ConfigError(f"layer {layer}: remove the gate before measuring steerability (gate=None)")
        cal = calibrate(model, s, probe, kl_budget, tolerance=tolerance, max_evals=8)
        effect[layer] = steering_effect(
            model, cal.steering, aligned, misaligned, baseline=base, batch_size=batch_size
        )
        kl[layer], scale[layer] = cal.kl, cal.scale
    return Steerability(
        kl_budget=kl_budget,
        layers=tuple(sorted(steerings)),
        effect=effect,
        kl=kl,
        scale=scale,
        baseline_margin=float(base.mean()),
        info={"n_prompts": len(aligned)},
    )
