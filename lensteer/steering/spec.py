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
stmp       if ``s < tau``: ``h + 2 a (tau - s) v``                  seed paper, our reconstruction
=========  ======================================================  ====================================

StTP and StMP are selective: tokens already on the aligned side of the threshold ``tau`` are left
exactly as they are, and the share of tokens they steer is reported. SCIENCE.md marks their exact
form as a reconstruction; ``tau``, the target and the scale ``a`` are all explicit in the spec.

Positions count tokens of each row from its first real (non-pad) token: prompt tokens first, then
generated ones. Negative indices count back from the end of the prompt (``-1`` = last prompt token).
Inside :func:`lensteer.generate` the engine is told the prompt lengths and how many tokens came
before each forward (the KV cache feeds one token at a time), so positions are tracked, not guessed.
In a plain forward pass every token is a prompt token.
"""

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any, Literal, get_args

import torch
from jaxtyping import Bool, Float

from lensteer._types import DirectionVec, Resid
from lensteer.core.sites import SITE_KINDS, normalize_layers, validate_site_kind
from lensteer.errors import ArtifactMismatchError, ConfigError, HookSiteError
from lensteer.locate.directions import Direction, LinearProbe

Mode = Literal["add", "swfc", "ablate", "ace", "angular", "sttp", "stmp"]
MODES: tuple[str, ...] = get_args(Mode)
SELECTIVE_MODES = ("sttp", "stmp")
_SIGNED_MODES = ("add", "swfc", "ace")  # a negative coefficient is meaningful (steer away)
NAMED_POSITIONS = ("all", "prompt", "generated")


@dataclass(frozen=True)
class Window:
    """Token positions ``start <= i < stop`` (``stop=None``: to the end, generated tokens included).

    Negative bounds count back from the end of the prompt, so ``Window(-3, None)`` is the last three
    prompt tokens and everything generated after them.
    """

    start: int
    stop: int | None = None


@dataclass(frozen=True)
class LastK:
    """The last ``k`` tokens of the prompt (e.g. the post-instruction template tokens)."""

    k: int

    def __post_init__(self) -> None:
        if isinstance(self.k, bool) or not isinstance(self.k, int) or self.k < 1:
            raise ConfigError(f"LastK.k must be an int >= 1, got {self.k!r}")


Positions = str | tuple[int, ...] | Window | LastK


def _check_positions(positions: Any) -> Positions:
    if isinstance(positions, str):
        if positions not in NAMED_POSITIONS:
            raise ConfigError(
                f"positions {positions!r} is not allowed; use one of {NAMED_POSITIONS}, a tuple of token "
                "indices, Window(start, stop) or LastK(k)"
            )
        return positions
    if isinstance(positions, (Window, LastK)):
        return positions
    if isinstance(positions, (list, tuple)) and positions and all(
        isinstance(i, int) and not isinstance(i, bool) for i in positions
    ):
        return tuple(positions)
    raise ConfigError(
        f"positions {positions!r} is not allowed; use one of {NAMED_POSITIONS}, a non-empty tuple of int token "
        "indices, Window(start, stop) or LastK(k)"
    )


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
        object.__setattr__(self, "unit", _unit_vector(self.unit, "gate"))
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


def _unit_vector(vector: Any, what: str) -> torch.Tensor:
    v = torch.as_tensor(vector).detach().to(torch.float32).cpu().flatten().clone()
    norm = float(v.norm())
    if v.numel() == 0 or not math.isfinite(norm) or norm == 0.0:
        raise ConfigError(f"the {what} vector must be finite and non-zero (norm {norm}, {v.numel()} entries)")
    return v / norm


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
        gate: Optional prompt-level :class:`Gate`.
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
    gate: Gate | None = None
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "unit", _unit_vector(self.unit, "steering"))
        layers = (self.layers,) if isinstance(self.layers, int) else tuple(self.layers)
        if not layers or any(isinstance(x, bool) or not isinstance(x, int) for x in layers):
            raise HookSiteError(f"layers must be a non-empty list of ints, got {self.layers!r}")
        object.__setattr__(self, "layers", layers)
        validate_site_kind(self.site)
        object.__setattr__(self, "positions", _check_positions(self.positions))
        if self.mode not in MODES:
            raise ConfigError(f"mode {self.mode!r} is not allowed; use one of {MODES}")
        if isinstance(self.scale, bool) or not isinstance(self.scale, (int, float)) or not math.isfinite(self.scale):
            raise ConfigError(f"scale must be a finite number, got {self.scale!r}")
        if self.scale < 0 and self.mode not in _SIGNED_MODES:
            raise ConfigError(f"scale {self.scale} is negative; mode {self.mode!r} needs scale >= 0 "
                              f"(negative scales are allowed for {_SIGNED_MODES})")
        if self.mode == "angular" and self.scale > 180:
            raise ConfigError(f"angular scale is an angle in degrees, 0..180; got {self.scale}")
        if self.relative:
            if self.mode not in _SIGNED_MODES:
                raise ConfigError(f"relative=True applies to modes {_SIGNED_MODES}, not {self.mode!r}")
            if self.reference_norm is None or not math.isfinite(self.reference_norm) or self.reference_norm <= 0:
                raise ConfigError("relative=True needs a positive reference_norm; measure it with "
                                  f"lensteer.reference_norm(model, prompts, layer), got {self.reference_norm!r}")
        if self.mode in SELECTIVE_MODES:
            need = ["threshold"] + (["target"] if self.mode == "sttp" else [])
            missing = [k for k in need if getattr(self, k) is None or not math.isfinite(getattr(self, k))]
            if missing:
                raise ConfigError(f"mode {self.mode!r} needs a probe threshold ({', '.join(missing)} missing or "
                                  "not finite); build it with Steering.from_probe(probe, aligned_acts, ...)")
        if self.mode == "ace" and (self.reference is None or not math.isfinite(self.reference)):
            raise ConfigError("mode 'ace' needs reference= (the misaligned class's mean projection); "
                              "build it with Steering.from_direction(direction, mode='ace', reference=...)")

    # -- construction -----------------------------------------------------------------------------

    @classmethod
    def from_direction(cls, direction: "Direction | torch.Tensor", *, layers: "int | Sequence[int] | None" = None,
                       mode: Mode = "add", scale: float = 1.0, **kwargs: Any) -> "Steering":
        """A steering along a :class:`~lensteer.Direction` (at its own layer and site unless given)."""
        if isinstance(direction, Direction):
            layer_list = (direction.layer,) if layers is None else layers
            kwargs.setdefault("site", direction.site)
            info = {"direction_method": direction.method, "direction_layer": direction.layer,
                    "direction_source": direction.source, **kwargs.pop("info", {})}
            if direction.model is not None:
                info["model"] = direction.model
            unit = direction.unit
        else:
            if layers is None:
                raise ConfigError("give layers= when steering along a raw tensor")
            layer_list, unit, info = layers, direction, kwargs.pop("info", {})
        if mode == "swfc":
            kwargs.setdefault("positions", "generated")
        return cls(unit=unit, layers=tuple([layer_list] if isinstance(layer_list, int) else layer_list),
                   mode=mode, scale=scale, info=info, **kwargs)

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
        if mode not in SELECTIVE_MODES:
            raise ConfigError(f"from_probe builds modes {SELECTIVE_MODES}, got {mode!r}")
        if aligned.ndim != 2 or aligned.shape[0] == 0 or aligned.shape[1] != probe.weight.shape[0]:
            raise ArtifactMismatchError(f"aligned activations must be [n > 0, {probe.weight.shape[0]}], "
                                        f"got {tuple(aligned.shape)}")
        proj = aligned.float() @ probe.unit
        if threshold == "boundary":
            tau, rule = probe.boundary, "boundary"
        elif isinstance(threshold, float) and 0.0 < threshold < 1.0:
            tau, rule = float(torch.quantile(proj, threshold)), f"aligned_quantile_{threshold:g}"
        else:
            raise ConfigError(f"threshold {threshold!r} is not allowed; use 'boundary' or a quantile in (0, 1)")
        info = {"direction_method": "probe", "probe_layer": probe.layer, "threshold_rule": rule,
                "probe_l2": probe.l2, **kwargs.pop("info", {})}
        return cls(unit=probe.unit, layers=tuple([probe.layer] if layers is None else
                                                 ([layers] if isinstance(layers, int) else layers)),
                   site=kwargs.pop("site", probe.site), positions=positions, mode=mode, scale=scale,
                   threshold=float(tau), target=float(proj.mean()), info=info, **kwargs)

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

        The two classes are projected on the direction and a one-feature logistic regression is fitted
        to the projections: its decision boundary is ``tau`` (``threshold="boundary"``); a quantile
        ``q`` of the aligned projections may be used instead. The target is the aligned mean
        projection. This keeps the seed paper's boundary-relative rule while steering along a
        direction that is better estimated than a high-dimensional probe normal from few examples.

        Positions: keep the first token out of a steering that covers the prompt (``Window(1, None)``
        rather than ``"all"``). On chat models it is usually an attention sink with a massive
        residual (on the embedded model ``<|im_start|>`` at layer 13 has norm ~25,000 against ~157
        for the other tokens and projects at about -3,500 on the refusal direction), so it always
        lies below the threshold and moving it to the target costs most of a KL budget for nothing.
        """
        from lensteer.locate.directions import fit_probe

        unit = direction.unit if isinstance(direction, Direction) else _unit_vector(direction, "steering")
        layer_list = layers if layers is not None else (direction.layer if isinstance(direction, Direction) else None)
        if layer_list is None:
            raise ConfigError("give layers= when steering along a raw tensor")
        for name, acts in (("aligned", aligned), ("misaligned", misaligned)):
            if acts.ndim != 2 or acts.shape[0] == 0 or acts.shape[1] != unit.shape[0]:
                raise ArtifactMismatchError(f"{name} activations must be [n > 0, {unit.shape[0]}], got {tuple(acts.shape)}")
        pos, neg = aligned.float() @ unit, misaligned.float() @ unit
        if not float(pos.mean()) > float(neg.mean()):
            raise ConfigError("the aligned class does not project higher than the misaligned one on this direction; "
                              "the direction should point from misaligned to aligned")
        if threshold == "boundary":
            probe1d = fit_probe(pos[:, None], neg[:, None], layer=0, l2_grid=(1e-3,))
            tau, rule = probe1d.boundary * (1.0 if float(probe1d.weight[0]) > 0 else -1.0), "boundary_1d"
        elif isinstance(threshold, float) and 0.0 < threshold < 1.0:
            tau, rule = float(torch.quantile(pos, threshold)), f"aligned_quantile_{threshold:g}"
        else:
            raise ConfigError(f"threshold {threshold!r} is not allowed; use 'boundary' or a quantile in (0, 1)")
        info = {"direction_method": direction.method if isinstance(direction, Direction) else "tensor",
                "threshold_rule": rule, **kwargs.pop("info", {})}
        if isinstance(direction, Direction) and direction.model is not None:
            info["model"] = direction.model
        kwargs.setdefault("site", direction.site if isinstance(direction, Direction) else "resid_post")
        return cls(unit=unit, layers=tuple([layer_list] if isinstance(layer_list, int) else layer_list),
                   positions=positions, mode=mode, scale=scale, threshold=float(tau), target=float(pos.mean()),
                   info=info, **kwargs)

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

    def hook_names(self, model: Any) -> list[str]:
        """Validate against ``model`` and return the hook names, one per layer."""
        if self.d_model != int(model.cfg.d_model):
            raise ArtifactMismatchError(f"steering vector has width {self.d_model} but the model's d_model is "
                                        f"{model.cfg.d_model}; was it made for another model?")
        names = [f"blocks.{layer}.hook_{self.site}" for layer in normalize_layers(model, list(self.layers))]
        for name in names:
            if name not in model.hook_dict:
                raise HookSiteError(f"{name!r} is not a hook point of this model; allowed sites: {', '.join(SITE_KINDS)}")
        return names

    def describe(self) -> str:
        """One line for logs and figure legends."""
        unit = " x ref-norm" if self.relative else ("°" if self.mode == "angular" else "")
        extra = f", tau={self.threshold:.3g}" if self.threshold is not None else ""
        return f"{self.mode} @ layers {list(self.layers)} {self.site} [{self.positions}] scale={self.scale:g}{unit}{extra}"


# -- the maths (pure) -------------------------------------------------------------------------------
def add_direction(resid: Resid, unit: DirectionVec, scale: float) -> Resid:
    """``h + scale * u`` at every position (activation addition, Turner et al. 2023)."""
    return resid + scale * unit.to(resid.device, resid.dtype)


def ablate_direction(resid: Resid, unit: DirectionVec) -> Resid:
    """``h - (h.u) u``: project the direction out (directional ablation, Arditi et al. 2024)."""
    u = unit.to(resid.device, resid.dtype)
    return resid - (resid @ u)[..., None] * u



def position_mask(
    positions: Positions,
    *,
    prompt_lens: torch.Tensor,
    pads: torch.Tensor,
    offset: int,
    seq_len: int,
    prefix: int = 0,
) -> Bool[torch.Tensor, "batch pos"]:
    """Which (row, column) of a forward's residual the positions select.

    Args:
        positions: The position spec.
        prompt_lens: Real (unpadded) prompt length of each row.
        pads: Pad count of each row: left padding, or (with ``prefix``) padding after a shared prefix.
        offset: How many columns came before this forward (KV-cache steps).
        seq_len: Columns in this forward.
        prefix: Length of a prefix shared by every row and placed before the padding
            (``[prefix][pads][rest]``, see :func:`lensteer.generate`); 0 for plain left padding.
    """
    col = torch.arange(offset, offset + seq_len)[None, :]
    after = col >= prefix
    t = torch.where(after, col - pads[:, None], col)  # token index within the row
    real = (t >= 0) & (~after | (col >= prefix + pads[:, None]))
    in_prompt = t < prompt_lens[:, None]
    if positions == "all":
        sel = real
    elif positions == "prompt":
        sel = real & in_prompt
    elif positions == "generated":
        sel = real & ~in_prompt
    elif isinstance(positions, LastK):
        sel = real & in_prompt & (t >= prompt_lens[:, None] - positions.k)
    elif isinstance(positions, Window):
        start = positions.start + (prompt_lens[:, None] if positions.start < 0 else 0)
        sel = real & (t >= start)
        if positions.stop is not None:
            stop = positions.stop + (prompt_lens[:, None] if positions.stop < 0 else 0)
            sel = sel & (t < stop)
    else:
        idx = torch.tensor(positions)[None, :]
        absolute = torch.where(idx < 0, idx + prompt_lens[:, None], idx)  # [batch, k]
        if bool(((absolute < 0) | (absolute >= prompt_lens[:, None])).any()):
            raise HookSiteError(f"position indices {list(positions)} fall outside a prompt of "
                                f"{int(prompt_lens.min())} tokens; explicit indices must lie in the prompt "
                                f"(0..n-1, or -n..-1 from its end)")
        sel = real & (t[:, :, None] == absolute[:, None, :]).any(-1)
    return sel


@dataclass(frozen=True, kw_only=True)
class Edit:
    """The result of steering one residual tensor: the new values and per-token bookkeeping."""

    resid: Resid
    fired: Bool[torch.Tensor, "batch pos"]
    shift: Float[torch.Tensor, "batch pos"]


def steer_resid(resid: Resid, steering: Steering, mask: Bool[torch.Tensor, "batch pos"]) -> Edit:
    """Apply ``steering``'s mode to the tokens ``mask`` selects (pure; other tokens stay bit-identical)."""
    v = steering.unit.to(resid.device, resid.dtype)
    s = resid @ v
    a = steering.coefficient
    mode = steering.mode
    fired = mask
    if mode in ("add", "swfc"):
        new = resid + a * v
    elif mode == "ablate":
        new = resid - (a * s)[..., None] * v
    elif mode == "ace":
        assert steering.reference is not None
        new = resid + ((steering.reference - s) + a)[..., None] * v
    elif mode == "angular":
        new = _rotate_toward(resid, v, s, math.radians(a))
    else:
        assert steering.threshold is not None
        below = s < steering.threshold
        fired = mask & below
        if mode == "sttp":
            assert steering.target is not None
            delta = a * (steering.target - s)
        else:
            delta = 2.0 * a * (steering.threshold - s)
        new = resid + delta[..., None] * v
    if steering.preserve_norm:
        new = new * (resid.norm(dim=-1, keepdim=True) / new.norm(dim=-1, keepdim=True).clamp_min(1e-12))
    out = torch.where(fired[..., None], new, resid)
    return Edit(resid=out, fired=fired, shift=(out - resid).norm(dim=-1))


def _rotate_toward(resid: Resid, v: torch.Tensor, s: torch.Tensor, angle: float) -> Resid:
    """Rotate each ``h`` by ``angle`` radians toward ``v`` in the plane of ``h`` and ``v`` (norm kept)."""
    ortho = resid - s[..., None] * v
    o_norm = ortho.norm(dim=-1)
    o_hat = ortho / o_norm.clamp_min(1e-12)[..., None]
    phi = torch.atan2(o_norm, s)  # angle between h and v, in [0, pi]
    new_phi = (phi - angle).clamp(min=0.0)
    r = resid.norm(dim=-1)
    return (r * torch.cos(new_phi))[..., None] * v + (r * torch.sin(new_phi))[..., None] * o_hat


# -- hooks ------------------------------------------------------------------------------------------


@dataclass
class SteeringContext:
    """What the hooks need to know about the current forward, and what they record.

    :func:`lensteer.generate` fills in ``prompt_lens``, ``pads``, ``offset`` and ``rows`` before
    every forward; in a plain forward pass they default to "every token is a prompt token".
    ``records`` holds, per hook call, the fired mask and the edit size (``shift``) per token.
    """

    prompt_lens: torch.Tensor | None = None
    pads: torch.Tensor | None = None
    offset: int = 0
    prefix: int = 0  # shared prefix before the padding (0: left padding)
    # rows the steerings may edit: [batch] bool (the same rows for every steering: the gates let them
    # through) or [n_steerings, batch] bool (each steering its own rows: several conditions in one batch)
    rows: torch.Tensor | None = None
    record: bool = True
    records: list[tuple[int, int, torch.Tensor, torch.Tensor]] = field(default_factory=list)

    def clear(self) -> None:
        self.records.clear()

    def steered_rows(self, index: int) -> torch.Tensor:
        """``[batch]`` bool: the rows steering number ``index`` may edit."""
        assert self.rows is not None
        return self.rows if self.rows.ndim == 1 else self.rows[index]

    def fired_share(self) -> float:
        """Share of steerable (row, position) cells where any steering fired, over all records."""
        if not self.records:
            return 0.0
        fired = sum(int(f.sum()) for _, _, f, _ in self.records)
        total = sum(f.numel() for _, _, f, _ in self.records)
        return fired / total


def _make_hook(steering: Steering, index: int, layer: int, ctx: SteeringContext) -> Any:
    def hook(resid: torch.Tensor, hook: Any) -> torch.Tensor:  # noqa: ARG001 - TL signature
        batch, seq = resid.shape[0], resid.shape[1]
        prompt_lens = ctx.prompt_lens if ctx.prompt_lens is not None else torch.full((batch,), ctx.offset + seq)
        pads = ctx.pads if ctx.pads is not None else torch.zeros(batch, dtype=torch.long)
        if prompt_lens.shape[0] != batch:
            raise ConfigError(f"steering context describes {prompt_lens.shape[0]} rows but the forward has {batch}")
        mask = position_mask(steering.positions, prompt_lens=prompt_lens, pads=pads, offset=ctx.offset, seq_len=seq,
                             prefix=ctx.prefix)
        if ctx.rows is not None:
            mask = mask & ctx.steered_rows(index)[:, None]
        mask = mask.to(resid.device)
        if steering.is_identity or not bool(mask.any()):
            mask = torch.zeros_like(mask)
            if ctx.record:
                ctx.records.append((index, layer, mask.cpu(), torch.zeros(batch, seq)))
            return resid
        edit = steer_resid(resid, steering, mask)
        if ctx.record:
            ctx.records.append((index, layer, edit.fired.cpu(), edit.shift.detach().float().cpu()))
        return edit.resid

    return hook


@contextmanager
def steer(model: Any, *steerings: Steering, context: SteeringContext | None = None) -> Iterator[SteeringContext]:
    """Apply steerings to ``model`` for the body of a ``with`` block; yields the :class:`SteeringContext`.

    Example::

        with lensteer.steer(model, steering) as ctx:
            logits = model(tokens)
        ctx.fired_share()

    Several steerings compose (their hooks run in the order given); contexts nest. Hooks are
    removed on exit, also when the body raises. Everything is validated before any hook is added.

    Raises:
        ArtifactMismatchError: A steering vector's width differs from the model's ``d_model``.
        HookSiteError: A layer or site the model lacks.
    """
    if not steerings:
        raise ConfigError("steer() needs at least one Steering")
    for s in steerings:
        if not isinstance(s, Steering):
            raise ConfigError(f"steer() takes Steering values, got {type(s).__name__}")
    ctx = context if context is not None else SteeringContext()
    hooks = []
    for i, s in enumerate(steerings):
        for name in s.hook_names(model):
            layer = int(name.split(".")[1])
            hooks.append((name, _make_hook(s, i, layer, ctx)))
    with model.hooks(fwd_hooks=hooks):
        yield ctx
