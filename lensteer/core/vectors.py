"""Vector maths on the residual stream shared by every stage: normalise, add, ablate.

Pure functions, no hooks: locating (direction patching), steering and layer selection all use them.
"""

import math
from typing import Any

import torch

from lensteer._types import DirectionVec, Resid
from lensteer.errors import ConfigError


def unit_vector(vector: Any, what: str) -> DirectionVec:
    """``vector`` as a CPU float32 unit vector; a zero, empty or non-finite vector is a :class:`ConfigError`."""
    v = torch.as_tensor(vector).detach().to(torch.float32).cpu().flatten().clone()
    norm = float(v.norm())
    if v.numel() == 0 or not math.isfinite(norm) or norm == 0.0:
        raise ConfigError(f"the {what} vector must be finite and non-zero (norm {norm}, {v.numel()} entries)")
    return v / norm


def add_direction(resid: Resid, unit: DirectionVec, scale: float) -> Resid:
    """``h + scale * u`` at every position (activation addition, Turner et al. 2023)."""
    return resid + scale * unit.to(resid.device, resid.dtype)


def ablate_direction(resid: Resid, unit: DirectionVec) -> Resid:
    """``h - (h.u) u``: project the direction out (directional ablation, Arditi et al. 2024)."""
    u = unit.to(resid.device, resid.dtype)
    return resid - (resid @ u)[..., None] * u
