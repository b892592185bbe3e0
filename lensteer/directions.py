"""Candidate directions from collected activations.

Difference of means (Arditi et al. 2024; Rimsky et al. 2024): ``r = mean(positive) - mean(negative)``
read at one layer and position, normalised to a unit vector. Its sign convention is fixed: the
positive class (by lensteer's convention the aligned behaviour, e.g. refusing harmful requests)
projects higher. ``raw_norm`` keeps ``||r||`` so a direction can be re-scaled to the data.
"""

import math
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float

from lensteer._types import DirectionVec
from lensteer.errors import ArtifactMismatchError, DataError


@dataclass(frozen=True, kw_only=True, eq=False)
class Direction:
    """A unit vector in the residual stream at one (layer, site, position), with provenance.

    Attributes:
        unit: The unit vector, CPU float32.
        layer: Layer it was read at.
        site: Hook site kind (``"resid_post"``, ...).
        position: Position selector it was read at.
        method: How it was found (``"diff_of_means"``, ...).
        raw_norm: Norm of the un-normalised vector (e.g. ``||mu+ - mu-||``).
        model: The model fingerprint as a dict, if known.
    """

    unit: DirectionVec
    layer: int
    site: str = "resid_post"
    position: str = "last"
    method: str = "diff_of_means"
    raw_norm: float = 1.0
    model: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        norm = float(self.unit.norm())
        if not math.isfinite(norm) or abs(norm - 1.0) > 1e-4:
            raise DataError(f"Direction.unit must be a finite unit vector, got norm {norm}")
        object.__setattr__(self, "unit", self.unit.detach().to(torch.float32).cpu().clone())

    @property
    def d_model(self) -> int:
        return int(self.unit.shape[0])

    def cosine(self, other: "Direction") -> float:
        """Cosine similarity with another direction of the same width."""
        if other.d_model != self.d_model:
            raise ArtifactMismatchError(f"cannot compare directions of width {self.d_model} and {other.d_model}")
        return float(self.unit @ other.unit)

    def project(self, acts: torch.Tensor) -> torch.Tensor:
        """Scalar projection of ``[..., d_model]`` activations onto the unit vector."""
        if acts.shape[-1] != self.d_model:
            raise ArtifactMismatchError(f"activations have width {acts.shape[-1]}, the direction {self.d_model}")
        return acts.float() @ self.unit.to(acts.device)

    def allclose(self, other: "Direction", atol: float = 1e-6) -> bool:
        return (self.layer, self.site, self.position, self.method) == (
            other.layer, other.site, other.position, other.method
        ) and torch.allclose(self.unit, other.unit, atol=atol)


def _check_acts(name: str, acts: torch.Tensor) -> None:
    if acts.ndim != 2 or acts.shape[0] == 0:
        raise DataError(f"{name} activations must be [n_prompts > 0, d_model], got shape {tuple(acts.shape)}")
    if not torch.isfinite(acts).all():
        raise DataError(f"{name} activations contain NaN or Inf")


def diff_of_means(
    positive: Float[torch.Tensor, "n_pos d_model"],
    negative: Float[torch.Tensor, "n_neg d_model"],
    *,
    layer: int,
    site: str = "resid_post",
    position: str = "last",
    model: dict[str, Any] | None = None,
) -> Direction:
    """Difference-of-means direction ``mean(positive) - mean(negative)``, normalised.

    Raises:
        DataError: Empty, mismatched or non-finite activations, or coinciding class means.
    """
    _check_acts("positive", positive)
    _check_acts("negative", negative)
    if positive.shape[1] != negative.shape[1]:
        raise DataError(f"positive width {positive.shape[1]} != negative width {negative.shape[1]}")
    diff = positive.float().mean(0) - negative.float().mean(0)
    norm = float(diff.norm())
    if norm == 0.0:
        raise DataError("positive and negative means coincide: no direction to extract")
    return Direction(unit=diff / norm, layer=layer, site=site, position=position,
                     method="diff_of_means", raw_norm=norm, model=model)
