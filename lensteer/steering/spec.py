"""The injection engine: a :class:`Steering` value, its maths, and the hooks that apply it.

A :class:`Steering` says *what* (a unit direction, or a probe's normal with its thresholds), *where*
(layers, hook site, token positions) and *how* (mode and scale). ``with steer(model, s1, s2):`` puts
its hooks on the model for exactly the body of the block; they come off on any exit, error or not.

Modes (``s = h.v`` is the token's projection on the unit direction ``v``; ``a`` the coefficient):

=========  ======================================================  ====================================
mode       edit of a steered token                                 reference
=========  ======================================================  ====================================
add        ``h + a v``                                             ActAdd (Turner et al. 2023), CAA
swfc       ``h + a v`` on generated tokens (the default positions)  seed paper's Steer-With-Fixed-Coeff
ablate     ``h - a s v`` (``a = 1``: project ``v`` out)             Arditi et al. 2024
ace        ``h - (s - s_ref) v + a v``                              ACE (Marshall et al. 2024)
angular    rotate ``h`` toward ``v`` by ``a`` degrees, in the plane  angular steering (Vu & Nguyen 2025)
           of ``v`` and ``h`` (norm-preserving)
sttp       if ``s < tau``: ``h + a (target - s) v``                 seed paper, our reconstruction
stmp       if ``s < tau``: ``h + 2 a (tau - s) v``   (``mirror``)   seed paper, our reconstruction
           or ``h + a (tau - s) v``   (``push``, to the boundary)
=========  ======================================================  ====================================

StMP has two readings. ``stmp_variant="mirror"`` (the default; SCIENCE notes' reading of "mirror
projection") reflects the projection across the threshold, ``s -> 2 tau - s``; ``"push"`` is the
minimal edit that brings the token to the boundary, ``s -> tau``. Both are reported by the study.

Massive activations: tokens whose residual norm at the site exceeds ``max_norm`` (attention sinks
such as the first token; :func:`lensteer.locate.massive_tokens` finds the limit by a rule) are never
steered, in any mode.

StTP and StMP are selective: tokens already on the aligned side of the threshold ``tau`` are left
exactly as they are, and the share of tokens they steer is reported. ``docs/methods.md`` marks their exact
form as a reconstruction; ``tau``, the target and the scale ``a`` are all explicit in the spec.

Positions count tokens of each row from its first real (non-pad) token: prompt tokens first, then
generated ones. Negative indices count back from the end of the prompt (``-1`` = last prompt token).
Inside :func:`lensteer.generate` the engine is told the prompt lengths and how many tokens came
before each forward (the KV cache feeds one token at a time), so positions are tracked, not guessed.
In a plain forward pass every token is a prompt token.
"""

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal, get_args

import torch
from jaxtyping import Float

from lensteer._types import DirectionVec
from lensteer.core.bridge import Bridge
from lensteer.core.sites import SITE_KINDS, hook_name, normalize_layers, validate_site_kind
from lensteer.core.vectors import unit_vector
from lensteer.errors import ArtifactMismatchError, ConfigError, HookSiteError
from lensteer.locate.directions import Direction, LinearProbe, fit_probe
from lensteer.steering.gates import GATE_TYPES
from lensteer.steering.positions import Positions, check_positions

Mode = Literal["add", "swfc", "ablate", "ace", "angular", "sttp", "stmp"]
StmpVariant = Literal["mirror", "push"]
STMP_VARIANTS: tuple[str, ...] = get_args(StmpVariant)
MODES: tuple[str, ...] = get_args(Mode)
SELECTIVE_MODES = ("sttp", "stmp")
_SIGNED_MODES = ("add", "swfc", "ace")  # a negative coefficient is meaningful (steer away)


@dataclass(frozen=True, kw_only=True, eq=False)
class Steering:
    """One steering intervention: direction, where, how, how much.

    Build it with :meth:`from_direction` or :meth:`from_probe`; change it with :meth:`with_scale`.

    Attributes:
        unit: Unit direction (CPU float32), pointing from misaligned to aligned.
        layers: Layers to steer (negative indices count from the end).
        site: Hook site kind (``"resid_post"``, ``"resid_pre"``, ...).
        positions: ``"all"``, ``"prompt"``, ``"generated"``, a tuple of token indices,
            :class:`Window` or :class:`LastK`.
        mode: One of :data:`MODES` (see the module docstring for the maths).
        scale: Strength: the coefficient ``a`` (absolute residual units, or a multiple of
            ``reference_norm`` when ``relative``); degrees for ``angular``; the fraction of the
            projection removed for ``ablate``; a multiplier of the edit for ``sttp``/``stmp``.
        relative: Read ``scale`` as a multiple of ``reference_norm`` (add / swfc / ace only).
        reference_norm: Mean residual norm at the site on a calibration set.
        preserve_norm: Rescale every steered activation back to its original norm.
        threshold: ``tau`` for sttp/stmp, in projection units along ``unit``.
        target: Target projection for sttp (the aligned class's mean projection).
        reference: Reference projection ``s_ref`` for ace (the misaligned class's mean projection).
        stmp_variant: ``"mirror"`` (``s -> 2 tau - s``, the default) or ``"push"`` (``s -> tau``).
        max_norm: Tokens whose residual norm at the site is above this are left alone (one value, or
            one per layer in ``layers`` order); ``None``: no limit.
        gate: Optional prompt-level gate: a :class:`Gate`, or an :class:`AllOf` / :class:`AnyOf` of gates.
        info: Provenance (direction method, dataset, threshold rule, calibration, model fingerprint).
    """

    unit: DirectionVec
    layers: tuple[int, ...]
    site: str = "resid_post"
    positions: Any = "all"  # Positions; validated in __post_init__ with a message naming the bad value
    mode: str = "add"  # Mode; validated likewise
    scale: float = 1.0
    relative: bool = False
    reference_norm: float | None = None
    preserve_norm: bool = False
    threshold: float | None = None
    target: float | None = None
    reference: float | None = None
    stmp_variant: str = "mirror"  # StmpVariant; validated in __post_init__
    max_norm: float | tuple[float, ...] | None = None
    gate: Any = None  # GateLike | None; validated in __post_init__ with a message naming the bad value
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "unit", unit_vector(self.unit, "steering"))
        layers = (self.layers,) if isinstance(self.layers, int) else tuple(self.layers)
        if not layers or any(isinstance(x, bool) or not isinstance(x, int) for x in layers):
            raise HookSiteError(f"layers must be a non-empty list of ints, got {self.layers!r}")
        object.__setattr__(self, "layers", layers)
        validate_site_kind(self.site)
        object.__setattr__(self, "positions", check_positions(self.positions))
        if self.mode not in MODES:
            raise ConfigError(f"mode {self.mode!r} is not allowed; use one of {MODES}")
        self._check_scale()
        self._check_mode_parameters()
        if self.stmp_variant not in STMP_VARIANTS:
            raise ConfigError(
                f"stmp_variant {self.stmp_variant!r} is not allowed; use one of {STMP_VARIANTS}"
            )
        object.__setattr__(self, "max_norm", _check_max_norm(self.max_norm, len(layers)))
        if self.mode == "ace" and (self.reference is None or not math.isfinite(self.reference)):
            raise ConfigError(
                "mode 'ace' needs reference= (the misaligned class's mean projection); "
                "build it with Steering.from_direction(direction, mode='ace', reference=...)"
            )
        if self.gate is not None:
            self._check_gate()

    def _check_scale(self) -> None:
        if (
            isinstance(self.scale, bool)
            or not isinstance(self.scale, (int, float))
            or not math.isfinite(self.scale)
        ):
            raise ConfigError(f"scale must be a finite number, got {self.scale!r}")
        if self.scale < 0 and self.mode not in _SIGNED_MODES:
            raise ConfigError(
                f"scale {self.scale} is negative; mode {self.mode!r} needs scale >= 0 "
                f"(negative scales are allowed for {_SIGNED_MODES})"
            )
        if self.mode == "angular" and self.scale > 180:
            raise ConfigError(f"angular scale is an angle in degrees, 0..180; got {self.scale}")

    def _check_mode_parameters(self) -> None:
        """``relative`` needs a reference norm; the selective modes need their probe threshold."""
        if self.relative:
            if self.mode not in _SIGNED_MODES:
                raise ConfigError(f"relative=True applies to modes {_SIGNED_MODES}, not {self.mode!r}")
            if (
                self.reference_norm is None
                or not math.isfinite(self.reference_norm)
                or self.reference_norm <= 0
            ):
                raise ConfigError(
                    "relative=True needs a positive reference_norm; measure it with "
                    f"lensteer.steering.reference_norm(model, prompts, layer), got {self.reference_norm!r}"
                )
        if self.mode in SELECTIVE_MODES:
            need = ["threshold"] + (["target"] if self.mode == "sttp" else [])
            missing = [k for k in need if getattr(self, k) is None or not math.isfinite(getattr(self, k))]
            if missing:
                raise ConfigError(
                    f"mode {self.mode!r} needs a probe threshold ({', '.join(missing)} missing or "
                    "not finite); build it with Steering.from_probe(probe, aligned_acts, ...)"
                )

    def _check_gate(self) -> None:
        if not isinstance(self.gate, GATE_TYPES):
            raise ConfigError(
                f"gate must be a Gate, AllOf or AnyOf (build composites with lensteer.steering."
                f"all_of / any_of) or None, got {type(self.gate).__name__}"
            )
        widths = sorted({int(g.unit.shape[0]) for g in self.gate.leaves()} - {self.d_model})
        if widths:
            raise ArtifactMismatchError(
                f"the gate's vectors have width {widths} but the steering's is {self.d_model}; "
                "gate and steering must come from the same model"
            )

    # -- construction -----------------------------------------------------------------------------

    @classmethod
    def from_direction(
        cls,
        direction: "Direction | torch.Tensor",
        *,
        layers: "int | Sequence[int] | None" = None,
        mode: Mode = "add",
        scale: float = 1.0,
        **kwargs: Any,
    ) -> "Steering":
        """A steering along a :class:`~lensteer.Direction` (at its own layer and site unless given)."""
        if isinstance(direction, Direction):
            layer_list = (direction.layer,) if layers is None else layers
            kwargs.setdefault("site", direction.site)
            info = {
                "direction_method": direction.method,
                "direction_layer": direction.layer,
                "direction_source": direction.source,
                **kwargs.pop("info", {}),
            }
            if direction.model is not None:
                info["model"] = direction.model
            unit = direction.unit
        else:
            if layers is None:
                raise ConfigError("give layers= when steering along a raw tensor")
            layer_list, unit, info = layers, direction, kwargs.pop("info", {})
        if mode == "swfc":
            kwargs.setdefault("positions", "generated")
        return cls(
            unit=unit,
            layers=tuple([layer_list] if isinstance(layer_list, int) else layer_list),
            mode=mode,
            scale=scale,
            info=info,
            **kwargs,
        )

    @classmethod
    def from_probe(
        cls,
        probe: LinearProbe,
        aligned: Float[torch.Tensor, "n_aligned d_model"],
        *,
        mode: Literal["sttp", "stmp"] = "sttp",
        threshold: "Literal['boundary'] | float" = "boundary",
        layers: "int | Sequence[int] | None" = None,
        positions: Positions = "generated",
        scale: float = 1.0,
        **kwargs: Any,
    ) -> "Steering":
        """StTP / StMP from a probe and the aligned class's training activations.

        Args:
            probe: The fitted probe (its unit normal is the direction).
            aligned: Aligned-class activations the probe was trained on (sets the target projection).
            mode: ``"sttp"`` or ``"stmp"``.
            threshold: ``"boundary"`` (the probe's decision boundary ``-b/||w||``) or a quantile
                ``q`` in (0, 1) of the aligned class's projections (``0.1``: steer tokens below
                the 10th percentile of aligned tokens).
            layers: Layers to steer (default: the probe's layer).
            positions: Which tokens (default: generated ones, as in the seed paper).
            scale: Multiplier of the edit (1 = reach the target / the mirror point exactly).
        """
        info = {
            "direction_method": "probe",
            "probe_layer": probe.layer,
            "threshold_rule": None,  # set by _selective
            "probe_l2": probe.l2,
            **kwargs.pop("info", {}),
        }
        return cls._selective(
            _Thresholds(unit=probe.unit, aligned=aligned, boundary=lambda _: (probe.boundary, "boundary")),
            mode=mode,
            threshold=threshold,
            layers=[probe.layer] if layers is None else layers,
            site=kwargs.pop("site", probe.site),
            positions=positions,
            scale=scale,
            info=info,
            **kwargs,
        )

    @classmethod
    def from_contrast(
        cls,
        direction: "Direction | torch.Tensor",
        aligned: Float[torch.Tensor, "n_aligned d_model"],
        misaligned: Float[torch.Tensor, "n_misaligned d_model"],
        *,
        mode: Literal["sttp", "stmp"] = "sttp",
        threshold: "Literal['boundary'] | float" = "boundary",
        layers: "int | Sequence[int] | None" = None,
        positions: Positions = "generated",
        scale: float = 1.0,
        **kwargs: Any,
    ) -> "Steering":
        """StTP / StMP along any direction (e.g. a difference of means), thresholds from the two classes.

        The two classes are projected on the direction and a one-feature, class-balanced logistic
        regression is fitted to the projections: its decision boundary is ``tau``
        (``threshold="boundary"``; balanced because per-token classes rarely have equal sizes, and an
        unweighted fit on overlapping classes puts the boundary below nearly every token); a quantile
        ``q`` of the aligned projections may be used instead. The target is the aligned mean
        projection. This keeps the seed paper's boundary-relative rule while steering along a
        direction that is better estimated than a high-dimensional probe normal from few examples.

        Positions: keep the first token out of a steering that covers the prompt (``Window(1, None)``
        rather than ``"all"``). On chat models it is usually an attention sink with a massive
        residual (on the embedded model ``<|im_start|>`` at layer 13 has norm ~25,000 against ~157
        for the other tokens and projects at about -3,500 on the refusal direction), so it always
        lies below the threshold and moving it to the target costs most of a KL budget for nothing.
        """
        unit = direction.unit if isinstance(direction, Direction) else unit_vector(direction, "steering")
        layer_list = (
            layers if layers is not None else (direction.layer if isinstance(direction, Direction) else None)
        )
        if layer_list is None:
            raise ConfigError("give layers= when steering along a raw tensor")
        for name, acts in (("aligned", aligned), ("misaligned", misaligned)):
            if acts.ndim != 2 or acts.shape[0] == 0 or acts.shape[1] != unit.shape[0]:
                raise ArtifactMismatchError(
                    f"{name} activations must be [n > 0, {unit.shape[0]}], got {tuple(acts.shape)}"
                )
        if not float((aligned.float() @ unit).mean()) > float((misaligned.float() @ unit).mean()):
            raise ConfigError(
                "the aligned class does not project higher than the misaligned one on this direction; "
                "the direction should point from misaligned to aligned"
            )
        info = {
            "direction_method": direction.method if isinstance(direction, Direction) else "tensor",
            "threshold_rule": None,  # set by _selective
            **kwargs.pop("info", {}),
        }
        if isinstance(direction, Direction) and direction.model is not None:
            info["model"] = direction.model
        kwargs.setdefault("site", direction.site if isinstance(direction, Direction) else "resid_post")
        neg = misaligned.float() @ unit
        return cls._selective(
            _Thresholds(unit=unit, aligned=aligned, boundary=lambda pos: _boundary_1d(pos, neg)),
            mode=mode,
            threshold=threshold,
            layers=layer_list,
            positions=positions,
            scale=scale,
            info=info,
            **kwargs,
        )

    @classmethod
    def _selective(
        cls,
        source: "_Thresholds",
        *,
        mode: str,
        threshold: "Literal['boundary'] | float",
        layers: "int | Sequence[int]",
        info: dict[str, Any],
        **kwargs: Any,
    ) -> "Steering":
        """The one path of :meth:`from_probe` and :meth:`from_contrast`: an StTP / StMP steering along
        ``source.unit`` whose ``tau`` is the boundary or an aligned quantile and whose target is the aligned
        class's mean projection; ``info["threshold_rule"]`` records which rule set ``tau``."""
        if mode not in SELECTIVE_MODES:
            raise ConfigError(f"from_probe / from_contrast build modes {SELECTIVE_MODES}, got {mode!r}")
        aligned, unit = source.aligned, source.unit
        if aligned.ndim != 2 or aligned.shape[0] == 0 or aligned.shape[1] != unit.shape[0]:
            raise ArtifactMismatchError(
                f"aligned activations must be [n > 0, {unit.shape[0]}], got {tuple(aligned.shape)}"
            )
        proj = aligned.float() @ unit
        if threshold == "boundary":
            tau, rule = source.boundary(proj)
        elif isinstance(threshold, float) and 0.0 < threshold < 1.0:
            tau, rule = float(torch.quantile(proj, threshold)), f"aligned_quantile_{threshold:g}"
        else:
            raise ConfigError(
                f"threshold {threshold!r} is not allowed; use 'boundary' or a quantile in (0, 1)"
            )
        if info.get("threshold_rule") is None:  # a caller's own info may name the rule
            info["threshold_rule"] = rule
        return cls(
            unit=unit,
            layers=tuple([layers] if isinstance(layers, int) else layers),
            mode=mode,
            threshold=float(tau),
            target=float(proj.mean()),
            info=info,
            **kwargs,
        )

    def norm_limit(self, layer_index: int) -> float | None:
        """The norm above which tokens are left alone at ``layers[layer_index]`` (``None``: no limit)."""
        if self.max_norm is None or isinstance(self.max_norm, float):
            return self.max_norm
        return self.max_norm[layer_index]

    def with_scale(self, scale: float) -> "Steering":
        """The same steering at another strength."""
        return replace(self, scale=scale)

    @property
    def coefficient(self) -> float:
        """The strength in the units the maths uses (``scale * reference_norm`` when relative)."""
        return self.scale * (self.reference_norm or 1.0) if self.relative else self.scale

    @property
    def d_model(self) -> int:
        return int(self.unit.shape[0])

    @property
    def is_identity(self) -> bool:
        """True when the steering cannot change any activation (strength 0, outside ``ace``)."""
        return self.scale == 0 and self.mode != "ace"

    def hook_names(self, model: Bridge) -> list[str]:
        """Validate against ``model`` and return the hook names, one per layer."""
        if self.d_model != int(model.cfg.d_model):
            raise ArtifactMismatchError(
                f"steering vector has width {self.d_model} but the model's d_model is "
                f"{model.cfg.d_model}; was it made for another model?"
            )
        names = [hook_name(layer, self.site) for layer in normalize_layers(model, list(self.layers))]
        for name in names:
            if name not in model.hook_dict:
                raise HookSiteError(
                    f"{name!r} is not a hook point of this model; allowed sites: {', '.join(SITE_KINDS)}"
                )
        return names

    def describe(self) -> str:
        """One line for logs and figure legends."""
        unit = " x ref-norm" if self.relative else ("°" if self.mode == "angular" else "")
        extra = f", tau={self.threshold:.3g}" if self.threshold is not None else ""
        extra += f", {self.stmp_variant}" if self.mode == "stmp" else ""
        extra += " (massive tokens skipped)" if self.max_norm is not None else ""
        return f"{self.mode} @ layers {list(self.layers)} {self.site} [{self.positions}] scale={self.scale:g}{unit}{extra}"


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


@dataclass(frozen=True, kw_only=True)
class _Thresholds:
    """What an StTP / StMP threshold is computed from: the direction, the aligned class's activations and
    the ``"boundary"`` rule (aligned projections -> ``(tau, rule name)``)."""

    unit: torch.Tensor
    aligned: torch.Tensor
    boundary: Callable[[torch.Tensor], tuple[float, str]]


def _boundary_1d(pos: torch.Tensor, neg: torch.Tensor) -> tuple[float, str]:
    """The decision boundary of a one-feature, class-balanced logistic regression on the projections."""
    probe1d = fit_probe(pos[:, None], neg[:, None], layer=0, l2_grid=(1e-3,), balanced=True)
    return probe1d.boundary * (1.0 if float(probe1d.weight[0]) > 0 else -1.0), "boundary_1d"
