"""How a :class:`~lensteer.steering.spec.Steering` changes a steered token: one small frozen type per mode.

A steering is its direction, its :class:`Placement` (layers, hook site, token positions, the
massive-activation limit) and one edit. Each edit carries only what its mode reads (``threshold`` and
``target`` for StTP, ``reference`` for ACE, ...), checks it on construction and does its maths in
:meth:`SteeringEdit.apply` (the maths table is in :mod:`lensteer.steering.spec`). Every edit has a
``scale`` and ``preserve_norm`` (rescale each steered activation back to its norm).

:func:`edit_for` builds the edit of a mode from the flat keywords ``Steering(mode=..., threshold=...)``
takes, refusing a keyword the mode does not read.
"""

import math
from dataclasses import dataclass, fields
from typing import Any, ClassVar, Literal, get_args

import torch

from lensteer._types import Resid
from lensteer.core.sites import validate_site_kind
from lensteer.errors import ConfigError, HookSiteError
from lensteer.steering.positions import check_positions

Mode = Literal["add", "swfc", "ablate", "ace", "angular", "sttp", "stmp"]
StmpVariant = Literal["mirror", "push"]
STMP_VARIANTS: tuple[str, ...] = get_args(StmpVariant)
MODES: tuple[str, ...] = get_args(Mode)
SELECTIVE_MODES = ("sttp", "stmp")
SIGNED_MODES = ("add", "swfc", "ace")  # a negative coefficient is meaningful (steer away)

# Each flat keyword of Steering(...) that an edit reads, by the name of the edit's field.
FLAT_NAMES = {"stmp_variant": "variant"}


def _finite(value: float | None) -> bool:
    return value is not None and math.isfinite(value)


@dataclass(frozen=True, kw_only=True)
class SteeringEdit:
    """What every edit has: a strength and whether the edit keeps each activation's norm."""

    mode: ClassVar[str]
    scale: float = 1.0
    preserve_norm: bool = False

    def __post_init__(self) -> None:
        if (
            isinstance(self.scale, bool)
            or not isinstance(self.scale, (int, float))
            or not math.isfinite(self.scale)
        ):
            raise ConfigError(f"scale must be a finite number, got {self.scale!r}")
        if self.scale < 0 and self.mode not in SIGNED_MODES:
            raise ConfigError(
                f"scale {self.scale} is negative; mode {self.mode!r} needs scale >= 0 "
                f"(negative scales are allowed for {SIGNED_MODES})"
            )

    @property
    def coefficient(self) -> float:
        """The strength in the units the maths uses."""
        return self.scale

    @property
    def is_identity(self) -> bool:
        """True when the edit cannot change any activation (strength 0)."""
        return self.scale == 0

    def apply(self, resid: Resid, v: torch.Tensor, s: torch.Tensor) -> tuple[Resid, torch.Tensor | None]:
        """The edited residual of every token (``v``: the unit direction, ``s``: each token's projection
        on it) and, for a selective edit, which tokens it applies to (``None``: all)."""
        raise NotImplementedError

    def record(self) -> dict[str, Any]:
        """The edit as JSON: its mode and its fields."""
        return {"mode": self.mode, **{f.name: getattr(self, f.name) for f in fields(self)}}


@dataclass(frozen=True, kw_only=True)
class _Additive(SteeringEdit):
    """An edit whose strength may be relative: ``scale`` x ``reference_norm`` (the mean residual norm at
    the site on a calibration set) when ``relative``."""

    relative: bool = False
    reference_norm: float | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.relative and (not _finite(self.reference_norm) or (self.reference_norm or 0.0) <= 0):
            raise ConfigError(
                "relative=True needs a positive reference_norm; measure it with "
                f"lensteer.steering.reference_norm(model, prompts, layer), got {self.reference_norm!r}"
            )

    @property
    def coefficient(self) -> float:
        """``scale * reference_norm`` when relative, else ``scale``."""
        return self.scale * (self.reference_norm or 1.0) if self.relative else self.scale


@dataclass(frozen=True, kw_only=True)
class Add(_Additive):
    """``h + a v`` (ActAdd, CAA)."""

    mode: ClassVar[str] = "add"

    def apply(self, resid: Resid, v: torch.Tensor, s: torch.Tensor) -> tuple[Resid, torch.Tensor | None]:  # noqa: ARG002
        return resid + self.coefficient * v, None


@dataclass(frozen=True, kw_only=True)
class SwFC(Add):
    """``h + a v``, by default on generated tokens (the seed paper's Steer-With-Fixed-Coefficient)."""

    mode: ClassVar[str] = "swfc"


@dataclass(frozen=True, kw_only=True)
class ACE(_Additive):
    """``h - (s - s_ref) v + a v`` (ACE): ``reference`` is ``s_ref``, the misaligned class's mean projection."""

    mode: ClassVar[str] = "ace"
    reference: float | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if not _finite(self.reference):
            raise ConfigError(
                "mode 'ace' needs reference= (the misaligned class's mean projection); "
                "build it with Steering.from_direction(direction, mode='ace', reference=...)"
            )

    @property
    def is_identity(self) -> bool:
        return False  # at strength 0 it still sets every projection to the reference

    def apply(self, resid: Resid, v: torch.Tensor, s: torch.Tensor) -> tuple[Resid, torch.Tensor | None]:
        assert self.reference is not None
        return resid + ((self.reference - s) + self.coefficient)[..., None] * v, None


@dataclass(frozen=True, kw_only=True)
class Ablate(SteeringEdit):
    """``h - a s v`` (``a = 1``: project ``v`` out; Arditi et al. 2024)."""

    mode: ClassVar[str] = "ablate"

    def apply(self, resid: Resid, v: torch.Tensor, s: torch.Tensor) -> tuple[Resid, torch.Tensor | None]:
        return resid - (self.scale * s)[..., None] * v, None


@dataclass(frozen=True, kw_only=True)
class Angular(SteeringEdit):
    """Rotate ``h`` toward ``v`` by ``scale`` degrees in the plane of ``v`` and ``h`` (norm kept)."""

    mode: ClassVar[str] = "angular"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.scale > 180:
            raise ConfigError(f"angular scale is an angle in degrees, 0..180; got {self.scale}")

    def apply(self, resid: Resid, v: torch.Tensor, s: torch.Tensor) -> tuple[Resid, torch.Tensor | None]:
        return _rotate_toward(resid, v, s, math.radians(self.scale)), None


@dataclass(frozen=True, kw_only=True)
class _Selective(SteeringEdit):
    """A selective edit: only tokens below ``threshold`` (``tau``, in projection units) are steered.
    ``target`` is the aligned class's mean projection (StTP moves tokens to it; StMP only records it)."""

    threshold: float | None = None
    target: float | None = None

    def _needs(self) -> list[str]:
        return ["threshold"]

    def __post_init__(self) -> None:
        super().__post_init__()
        missing = [k for k in self._needs() if not _finite(getattr(self, k))]
        if missing:
            raise ConfigError(
                f"mode {self.mode!r} needs a probe threshold ({', '.join(missing)} missing or "
                "not finite); build it with Steering.from_probe(probe, aligned_acts, ...)"
            )


@dataclass(frozen=True, kw_only=True)
class StTP(_Selective):
    """If ``s < tau``: ``h + a (target - s) v`` (``target``: the aligned class's mean projection)."""

    mode: ClassVar[str] = "sttp"

    def _needs(self) -> list[str]:
        return ["threshold", "target"]

    def apply(self, resid: Resid, v: torch.Tensor, s: torch.Tensor) -> tuple[Resid, torch.Tensor | None]:
        assert self.threshold is not None and self.target is not None
        return resid + (self.scale * (self.target - s))[..., None] * v, s < self.threshold


@dataclass(frozen=True, kw_only=True)
class StMP(_Selective):
    """If ``s < tau``: ``h + 2 a (tau - s) v`` (``variant="mirror"``: ``s -> 2 tau - s``) or
    ``h + a (tau - s) v`` (``"push"``: ``s -> tau``, to the boundary)."""

    mode: ClassVar[str] = "stmp"
    variant: str = "mirror"  # StmpVariant; checked with a message naming the bad value

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.variant not in STMP_VARIANTS:
            raise ConfigError(f"stmp_variant {self.variant!r} is not allowed; use one of {STMP_VARIANTS}")

    def apply(self, resid: Resid, v: torch.Tensor, s: torch.Tensor) -> tuple[Resid, torch.Tensor | None]:
        assert self.threshold is not None
        delta = (2.0 if self.variant == "mirror" else 1.0) * self.scale * (self.threshold - s)
        return resid + delta[..., None] * v, s < self.threshold


EDITS: dict[str, type[SteeringEdit]] = {
    cls.mode: cls for cls in (Add, SwFC, Ablate, ACE, Angular, StTP, StMP)
}
assert tuple(EDITS) == MODES

# A flat keyword's "not given" value: a keyword at this value is not an error for a mode that lacks it.
_UNSET: dict[str, Any] = {
    "relative": False,
    "reference_norm": None,
    "reference": None,
    "threshold": None,
    "target": None,
    "variant": "mirror",
}


def edit_for(
    mode: str, params: dict[str, Any], *, given: "set[str] | frozenset[str]" = frozenset()
) -> SteeringEdit:
    """The edit of ``mode`` from flat parameters (``stmp_variant`` is StMP's ``variant``). A parameter the
    mode does not read is dropped, unless it is in ``given`` (the caller's own keywords) with a value other
    than "not given" (``None``, ``False``, ``"mirror"``): then it is a :class:`ConfigError` naming it."""
    if mode not in EDITS:
        raise ConfigError(f"mode {mode!r} is not allowed; use one of {MODES}")
    cls = EDITS[mode]
    own = {f.name for f in fields(cls)}
    kwargs: dict[str, Any] = {}
    for flat, value in params.items():
        if flat == "mode":
            continue
        name = FLAT_NAMES.get(flat, flat)
        if name in own:
            kwargs[name] = value
        elif flat in given and value != _UNSET.get(name):
            readers = [m for m, c in EDITS.items() if name in {f.name for f in fields(c)}]
            hint = f" (relative=True applies to modes {SIGNED_MODES})" if name == "relative" else ""
            raise ConfigError(
                f"{flat}={value!r} does not apply to mode {mode!r}; it is read by {readers}{hint}"
            )
    return cls(**kwargs)


def edit_params(edit: SteeringEdit) -> dict[str, Any]:
    """The edit's fields under their flat keyword names (the inverse of :func:`edit_for`)."""
    back = {v: k for k, v in FLAT_NAMES.items()}
    return {back.get(f.name, f.name): getattr(edit, f.name) for f in fields(edit)}


@dataclass(frozen=True, kw_only=True)
class Placement:
    """Where a steering edits: layers (negative indices count from the end), the hook site kind, the token
    positions (``"all"``, ``"prompt"``, ``"generated"``, a tuple of indices, :class:`Window` or
    :class:`LastK`) and ``max_norm``: tokens whose residual norm at the site is above it are left alone
    (one value, or one per layer in ``layers`` order; ``None``: no limit)."""

    layers: tuple[int, ...]
    site: str = "resid_post"
    positions: Any = "all"  # Positions; checked with a message naming the bad value
    max_norm: float | tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        raw: Any = self.layers
        layers = (raw,) if isinstance(raw, int) else tuple(raw)
        if not layers or any(isinstance(x, bool) or not isinstance(x, int) for x in layers):
            raise HookSiteError(f"layers must be a non-empty list of ints, got {raw!r}")
        object.__setattr__(self, "layers", layers)
        validate_site_kind(self.site)
        object.__setattr__(self, "positions", check_positions(self.positions))
        object.__setattr__(self, "max_norm", _check_max_norm(self.max_norm, len(layers)))

    def norm_limit(self, layer_index: int) -> float | None:
        """The norm above which tokens are left alone at ``layers[layer_index]`` (``None``: no limit)."""
        if self.max_norm is None or isinstance(self.max_norm, float):
            return self.max_norm
        return self.max_norm[layer_index]


PLACEMENT_NAMES = ("layers", "site", "positions", "max_norm")


def _check_max_norm(value: Any, n_layers: int) -> float | tuple[float, ...] | None:
    """``max_norm`` as ``None``, one positive float, or one positive float per layer."""
    if value is None:
        return None
    many = isinstance(value, (list, tuple))
    values = list(value) if many else [value]
    if (
        not values
        or any(
            isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0
            for v in values
        )
        or (many and len(values) != n_layers)
    ):
        raise ConfigError(
            f"max_norm must be a positive number or one per layer ({n_layers}), got {value!r}; "
            "find it with lensteer.locate.massive_tokens(model, prompts, layer)"
        )
    return tuple(float(v) for v in values) if many else float(values[0])


def _rotate_toward(resid: Resid, v: torch.Tensor, s: torch.Tensor, angle: float) -> Resid:
    """Rotate each ``h`` by ``angle`` radians toward ``v`` in the plane of ``h`` and ``v`` (norm kept)."""
    ortho = resid - s[..., None] * v
    o_norm = ortho.norm(dim=-1)
    o_hat = ortho / o_norm.clamp_min(1e-12)[..., None]
    phi = torch.atan2(o_norm, s)  # angle between h and v, in [0, pi]
    new_phi = (phi - angle).clamp(min=0.0)
    r = resid.norm(dim=-1)
    return (r * torch.cos(new_phi))[..., None] * v + (r * torch.sin(new_phi))[..., None] * o_hat
