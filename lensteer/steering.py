"""Steering maths: pure functions on residual-stream tensors (no hooks, no model).

The injection engine (context managers, positions, the seed paper's SwFC/StTP/StMP) builds on
these; direction-level patching uses them to test that a direction carries a behaviour.
"""


from lensteer._types import DirectionVec, Resid


def add_direction(resid: Resid, unit: DirectionVec, scale: float) -> Resid:
    """``h + scale * u`` at every position (activation addition, Turner et al. 2023)."""
    return resid + scale * unit.to(resid.device, resid.dtype)


def ablate_direction(resid: Resid, unit: DirectionVec) -> Resid:
    """``h - (h.u) u``: project the direction out (directional ablation, Arditi et al. 2024)."""
    u = unit.to(resid.device, resid.dtype)
    return resid - (resid @ u)[..., None] * u
