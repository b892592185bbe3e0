"""Prompt-level gates (CAST, Lee et al. 2024): steer a row only when its prompt is in scope."""

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch

from lensteer._types import DirectionVec
from lensteer.core.activations import collect_activations
from lensteer.core.sites import validate_site_kind
from lensteer.core.vectors import unit_vector
from lensteer.errors import ConfigError
from lensteer.locate.directions import LinearProbe


@dataclass(frozen=True, kw_only=True, eq=False)
class Gate:
    """A prompt-level gate (CAST, Lee et al. 2024): steer a row only when its prompt is in scope.

    The prompt's activation at ``layer``/``site``/``position`` is projected on ``unit``; the row is
    steered when the projection is above ``threshold`` (``when="above"``) or below it.
    """

    unit: DirectionVec
    layer: int
    threshold: float
    site: str = "resid_post"
    position: str = "last"
    when: Literal["above", "below"] = "above"

    def __post_init__(self) -> None:
        object.__setattr__(self, "unit", unit_vector(self.unit, "gate"))
        if self.when not in ("above", "below"):
            raise ConfigError(f"gate when={self.when!r}; allowed: 'above', 'below'")
        if not math.isfinite(self.threshold):
            raise ConfigError(f"gate threshold must be finite, got {self.threshold}")
        validate_site_kind(self.site)

    @classmethod
    def from_probe(cls, probe: LinearProbe, *, when: Literal["above", "below"] = "above") -> "Gate":
        """Gate on a probe's decision boundary at the probe's own read site."""
        return cls(unit=probe.unit, layer=probe.layer, threshold=probe.boundary, site=probe.site,
                   position=probe.position, when=when)

    def opens(self, projection: torch.Tensor) -> torch.Tensor:
        """Which rows the gate lets through, from their prompt projections."""
        return projection > self.threshold if self.when == "above" else projection < self.threshold


def gate_rows(model: Any, gates: Sequence[Gate | None], prompts: Sequence[Any]) -> torch.Tensor:
    """``[n_prompts]`` bool: the prompts every gate lets through (one prompt pass per gate; ``None`` gates
    let everything through). ``prompts`` are chat prompts, strings or tokenized prompts."""
    open_rows = torch.ones(len(prompts), dtype=torch.bool)
    for gate in gates:
        if gate is None:
            continue
        acts = collect_activations(model, list(prompts), layers=[gate.layer], site=gate.site, position=gate.position)
        open_rows &= gate.opens(acts[:, 0] @ gate.unit)
    return open_rows
