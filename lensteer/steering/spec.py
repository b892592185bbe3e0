"""The injection engine: a :class:`Steering` value, its maths, and the hooks that apply it.

A :class:`Steering` says *what* (a unit direction), *where* (a :class:`~lensteer.steering.edits.Placement`:
layers, hook site, token positions, the massive-activation limit) and *how* (one edit type per mode in
:mod:`lensteer.steering.edits`, carrying that mode's strength and parameters, e.g. StTP's threshold and
target). ``with steer(model, s1, s2):`` puts its hooks on the model for exactly the body of the block;
they come off on any exit, error or not.

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

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, TypedDict, Unpack

import torch
from jaxtyping import Float

from lensteer._types import DirectionVec
from lensteer.core.bridge import Bridge
from lensteer.core.sites import SITE_KINDS, hook_name, normalize_layers
from lensteer.core.vectors import unit_vector
from lensteer.errors import ArtifactMismatchError, ConfigError, HookSiteError
from lensteer.locate.directions import Direction, LinearProbe, fit_probe
from lensteer.steering.edits import (
    MODES,
    PLACEMENT_NAMES,
    SELECTIVE_MODES,
    STMP_VARIANTS,
    Mode,
    Placement,
    SteeringEdit,
    StmpVariant,
    edit_for,
    edit_params,
)
from lensteer.steering.gates import GATE_TYPES
from lensteer.steering.positions import Positions

__all__ = ["MODES", "SELECTIVE_MODES", "STMP_VARIANTS", "Mode", "Placement", "Steering", "StmpVariant"]


class SpecOptions(TypedDict, total=False):
    """The flat keywords ``Steering(...)`` takes beside its parts: the placement's (``layers``, ``site``,
    ``positions``, ``max_norm``) and the edit's (``mode`` and the parameters that mode reads)."""

    layers: "int | Sequence[int]"
    site: str
    positions: Any
    max_norm: "float | Sequence[float] | None"
    mode: str
    scale: float
    relative: bool
    reference_norm: float | None
    preserve_norm: bool
    threshold: float | None
    target: float | None
    reference: float | None
    stmp_variant: str


@dataclass(frozen=True, eq=False, init=False)
class Steering:
    """One steering intervention: a direction, where it applies (:class:`Placement`) and how it edits
    (one :class:`~lensteer.steering.edits.SteeringEdit` per mode), an optional gate and provenance.

    Build it with :meth:`from_direction`, :meth:`from_probe` or :meth:`from_contrast`; change its strength
    with :meth:`with_scale`. ``Steering(unit=..., layers=..., mode=..., scale=..., ...)`` takes the parts as
    flat keywords (:class:`SpecOptions`): the placement's, and the edit's for its mode (a keyword the mode
    does not read is refused); ``placement=`` / ``edit=`` give the parts whole, and flat keywords beside
    them change those parts (so ``dataclasses.replace(s, positions="all")`` works).

    Attributes:
        unit: Unit direction (CPU float32), pointing from misaligned to aligned.
        placement: Layers, hook site, positions and the massive-activation limit (:class:`Placement`).
        edit: The mode's edit and strength: :class:`~lensteer.steering.edits.Add`, ``SwFC``, ``Ablate``,
            ``ACE``, ``Angular``, ``StTP`` or ``StMP`` (see the module docstring for the maths).
        gate: Optional prompt-level gate: a :class:`Gate`, or an :class:`AllOf` / :class:`AnyOf` of gates.
        info: Provenance (direction method, dataset, threshold rule, calibration, model fingerprint).

    Read-only views: ``layers``, ``site``, ``positions``, ``max_norm`` (the placement's); ``mode``,
    ``scale``, ``coefficient``, ``preserve_norm`` (the edit's); and the mode-specific ``relative``,
    ``reference_norm``, ``threshold``, ``target``, ``reference``, ``stmp_variant`` (``None``, ``False`` or
    ``"mirror"`` where the mode has no such parameter).
    """

    unit: DirectionVec
    placement: Placement
    edit: SteeringEdit
    gate: Any = None  # GateLike | None; checked with a message naming the bad value
    info: dict[str, Any] = field(default_factory=dict)

    def __init__(
        self,
        *,
        unit: DirectionVec,
        placement: Placement | None = None,
        edit: SteeringEdit | None = None,
        gate: Any = None,
        info: dict[str, Any] | None = None,
        **flat: Unpack[SpecOptions],
    ) -> None:
        unknown = sorted(set(flat) - set(SpecOptions.__annotations__))
        if unknown:
            raise ConfigError(
                f"unknown Steering keywords {unknown}; allowed: {sorted(SpecOptions.__annotations__)} "
                "(or placement=, edit=, gate=, info=)"
            )
        where = {k: v for k, v in flat.items() if k in PLACEMENT_NAMES}
        how = {k: v for k, v in flat.items() if k not in PLACEMENT_NAMES}
        object.__setattr__(self, "unit", unit_vector(unit, "steering"))
        object.__setattr__(self, "placement", _placement(placement, where))
        object.__setattr__(self, "edit", _edit(edit, how))
        object.__setattr__(self, "gate", gate)
        object.__setattr__(self, "info", {} if info is None else info)
        if self.gate is not None:
            self._check_gate()

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
        return self.placement.norm_limit(layer_index)

    def with_scale(self, scale: float) -> "Steering":
        """The same steering at another strength."""
        return self.with_edit(scale=scale)

    def with_edit(self, **params: Any) -> "Steering":
        """The same steering with its edit's parameters changed (flat names, as ``Steering(...)`` takes)."""
        return Steering(
            unit=self.unit, placement=self.placement, edit=self.edit, gate=self.gate, info=self.info, **params
        )

    def placed(self, **where: Any) -> "Steering":
        """The same steering with its placement changed (``layers``, ``site``, ``positions``, ``max_norm``)."""
        return Steering(
            unit=self.unit, placement=self.placement, edit=self.edit, gate=self.gate, info=self.info, **where
        )

    # -- read-only views of the parts -------------------------------------------------------------

    @property
    def layers(self) -> tuple[int, ...]:
        return self.placement.layers

    @property
    def site(self) -> str:
        return self.placement.site

    @property
    def positions(self) -> Any:
        return self.placement.positions

    @property
    def max_norm(self) -> float | tuple[float, ...] | None:
        return self.placement.max_norm

    @property
    def mode(self) -> str:
        return self.edit.mode

    @property
    def scale(self) -> float:
        return self.edit.scale

    @property
    def preserve_norm(self) -> bool:
        return self.edit.preserve_norm

    @property
    def relative(self) -> bool:
        return bool(getattr(self.edit, "relative", False))

    @property
    def reference_norm(self) -> float | None:
        return getattr(self.edit, "reference_norm", None)

    @property
    def threshold(self) -> float | None:
        return getattr(self.edit, "threshold", None)

    @property
    def target(self) -> float | None:
        return getattr(self.edit, "target", None)

    @property
    def reference(self) -> float | None:
        return getattr(self.edit, "reference", None)

    @property
    def stmp_variant(self) -> str:
        return str(getattr(self.edit, "variant", "mirror"))

    @property
    def coefficient(self) -> float:
        """The strength in the units the maths uses (``scale * reference_norm`` when relative)."""
        return self.edit.coefficient

    @property
    def d_model(self) -> int:
        return int(self.unit.shape[0])

    @property
    def is_identity(self) -> bool:
        """True when the steering cannot change any activation (strength 0, outside ``ace``)."""
        return self.edit.is_identity

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


def _placement(placement: Placement | None, where: dict[str, Any]) -> Placement:
    """``placement`` with the flat keywords ``where`` changed, or a new one from them (``layers`` needed;
    one layer may be an int, lists become tuples)."""
    where = {k: (v,) if k == "layers" and isinstance(v, int) else _tupled(v) for k, v in where.items()}
    if placement is None:
        if "layers" not in where:
            raise ConfigError("a Steering needs layers= (or placement=)")
        return Placement(**where)
    if not where:
        return placement
    return Placement(**{**{n: getattr(placement, n) for n in PLACEMENT_NAMES}, **where})


def _tupled(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


def _edit(edit: SteeringEdit | None, how: dict[str, Any]) -> SteeringEdit:
    """``edit`` with the flat keywords ``how`` changed (another ``mode`` keeps the parameters the new mode
    reads), or a new edit from them (default mode ``"add"``)."""
    if edit is None:
        return edit_for(str(how.get("mode", "add")), how, given=set(how))
    if not how:
        return edit
    return edit_for(str(how.get("mode", edit.mode)), {**edit_params(edit), **how}, given=set(how))


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
