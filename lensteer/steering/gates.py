"""Prompt-level gates (CAST, Lee et al. 2024): steer a row only when its prompt is in scope.

A :class:`Gate` thresholds one projection of the prompt's activation; :class:`AllOf` (logical and)
and :class:`AnyOf` (logical or) combine gates and nest (``all_of(harmful, any_of(weapons, drugs))``).
:func:`gate_rows` decides every row with one prompt pass per distinct (site, position) of the leaves.
:func:`gate_to_record` / :func:`gate_from_record` turn a gate into JSON + named tensors and back (what
steering files store); an FPR-controlled search for a gate is in :mod:`lensteer.steering.gate_search`.
"""

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypeAlias

import torch
from jaxtyping import Bool

from lensteer._types import DirectionVec
from lensteer.core.activations import collect_activations
from lensteer.core.bridge import Bridge
from lensteer.core.sites import normalize_layers, validate_site_kind
from lensteer.core.vectors import unit_vector
from lensteer.errors import ConfigError, DataError
from lensteer.locate.directions import LinearProbe

Rows: TypeAlias = Bool[torch.Tensor, " n_prompts"]


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
        return cls(
            unit=probe.unit,
            layer=probe.layer,
            threshold=probe.boundary,
            site=probe.site,
            position=probe.position,
            when=when,
        )

    def opens(self, projection: torch.Tensor) -> torch.Tensor:
        """Which rows the gate lets through, from their prompt projections."""
        return projection > self.threshold if self.when == "above" else projection < self.threshold

    def leaves(self) -> tuple["Gate", ...]:
        return (self,)

    def decide(self, projections: Mapping["Gate", torch.Tensor]) -> torch.Tensor:
        """Which rows open, from each leaf's prompt projections (keyed by the leaf itself)."""
        return self.opens(projections[self])


def _members(kind: str, gates: Any) -> tuple["GateLike", ...]:
    if isinstance(gates, (Gate, AllOf, AnyOf)) or not isinstance(gates, (tuple, list)):
        raise ConfigError(
            f"{kind}.gates must be a tuple of gates, got {type(gates).__name__}; "
            f"use {kind.lower().replace('of', '_of')}(gate_a, gate_b, ...)"
        )
    if not gates:
        raise ConfigError(
            f"{kind} has no gates: an empty composite decides nothing; give at least one Gate, AllOf or AnyOf"
        )
    bad = [type(g).__name__ for g in gates if not isinstance(g, (Gate, AllOf, AnyOf))]
    if bad:
        raise ConfigError(f"{kind} members must be Gate, AllOf or AnyOf, got {', '.join(bad)}")
    return tuple(gates)


def _leaves(gates: Sequence["GateLike"]) -> tuple[Gate, ...]:
    seen: dict[int, Gate] = {}
    for g in gates:
        for leaf in g.leaves():
            seen.setdefault(id(leaf), leaf)
    return tuple(seen.values())


@dataclass(frozen=True, eq=False)
class AllOf:
    """Open only when every member gate opens (logical and). Members: :class:`Gate`, :class:`AllOf`, :class:`AnyOf`."""

    gates: tuple["GateLike", ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "gates", _members("AllOf", self.gates))

    def leaves(self) -> tuple[Gate, ...]:
        """The distinct leaf gates, depth first."""
        return _leaves(self.gates)

    def decide(self, projections: Mapping[Gate, torch.Tensor]) -> torch.Tensor:
        out = self.gates[0].decide(projections)
        for g in self.gates[1:]:
            out = out & g.decide(projections)
        return out


@dataclass(frozen=True, eq=False)
class AnyOf:
    """Open when at least one member gate opens (logical or). Members: :class:`Gate`, :class:`AllOf`, :class:`AnyOf`."""

    gates: tuple["GateLike", ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "gates", _members("AnyOf", self.gates))

    def leaves(self) -> tuple[Gate, ...]:
        """The distinct leaf gates, depth first."""
        return _leaves(self.gates)

    def decide(self, projections: Mapping[Gate, torch.Tensor]) -> torch.Tensor:
        out = self.gates[0].decide(projections)
        for g in self.gates[1:]:
            out = out | g.decide(projections)
        return out


GateLike: TypeAlias = Gate | AllOf | AnyOf
GATE_TYPES = (Gate, AllOf, AnyOf)


def all_of(*gates: GateLike) -> AllOf:
    """A gate that opens when every one of ``gates`` opens."""
    return AllOf(gates)


def any_of(*gates: GateLike) -> AnyOf:
    """A gate that opens when any one of ``gates`` opens."""
    return AnyOf(gates)


def leaf_projections(
    model: Bridge, leaves: Sequence[Gate], prompts: Sequence[Any]
) -> dict[Gate, torch.Tensor]:
    """Each leaf's ``[n_prompts]`` prompt projections: one prompt pass per distinct (site, position)."""
    groups: dict[tuple[str, str], list[tuple[Gate, int]]] = {}
    for leaf in leaves:
        layer = normalize_layers(model, [leaf.layer])[0]  # -1 and n_layers-1 share a read
        groups.setdefault((leaf.site, leaf.position), []).append((leaf, layer))
    out: dict[Gate, torch.Tensor] = {}
    for (site, position), members in groups.items():
        layers = list(dict.fromkeys(layer for _, layer in members))
        acts = collect_activations(model, list(prompts), layers=layers, site=site, position=position)
        for leaf, layer in members:
            out[leaf] = acts[:, layers.index(layer)] @ leaf.unit
    return out


def gate_rows(model: Bridge, gates: Sequence[GateLike | None], prompts: Sequence[Any]) -> Rows:
    """``[n_prompts]`` bool: the prompts every gate lets through (``None`` gates let everything through).

    Composite gates are decided from their leaves' projections, read in one prompt pass per distinct
    (site, position). ``prompts`` are chat prompts, strings or tokenized prompts.
    """
    active = [g for g in gates if g is not None]
    open_rows = torch.ones(len(prompts), dtype=torch.bool)
    if not active:
        return open_rows
    projections = leaf_projections(model, _leaves(active), prompts)
    for gate in active:
        open_rows &= gate.decide(projections)
    return open_rows


# -- records (steering files) -----------------------------------------------------------------------
# A leaf is {"kind": "gate", layer, threshold, site, position, when}, its unit the tensor ``key``;
# a composite is {"kind": "all_of" | "any_of", "gates": [...]}, member i's tensors under ``key.i``.
# A record without "kind" is a leaf: the single-gate format of earlier files reads unchanged.

_COMPOSITES: dict[str, type[AllOf] | type[AnyOf]] = {"all_of": AllOf, "any_of": AnyOf}


def gate_to_record(gate: GateLike, key: str = "gate_unit") -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """A gate as a JSON-able record and its unit tensors by name (see :func:`gate_from_record`)."""
    if isinstance(gate, Gate):
        record = {
            "kind": "gate",
            "layer": gate.layer,
            "threshold": float(gate.threshold),
            "site": gate.site,
            "position": gate.position,
            "when": gate.when,
        }
        return record, {key: gate.unit.contiguous()}
    if not isinstance(gate, (AllOf, AnyOf)):
        raise ConfigError(f"cannot save a gate of type {type(gate).__name__}; allowed: Gate, AllOf, AnyOf")
    members, tensors = [], {}
    for i, member in enumerate(gate.gates):
        rec, ten = gate_to_record(member, f"{key}.{i}")
        members.append(rec)
        tensors.update(ten)
    return {"kind": "all_of" if isinstance(gate, AllOf) else "any_of", "gates": members}, tensors


def _field(record: dict[str, Any], key: str, kinds: tuple[type, ...], label: str, file: str) -> Any:
    if key not in record:
        raise DataError(f"{file}: key {label + '.' + key!r} is missing")
    value = record[key]
    ok = isinstance(value, kinds) and not isinstance(value, bool)
    if ok and float in kinds:
        ok = math.isfinite(value)
    if not ok:
        raise DataError(
            f"{file}: key {label + '.' + key!r} = {value!r} is not allowed; expected "
            f"{' or '.join(k.__name__ for k in kinds)}"
        )
    return value


def gate_from_record(
    record: Any,
    unit_of: Callable[[str], torch.Tensor],
    *,
    key: str = "gate_unit",
    where: str = "gate",
    file: str = "",
) -> GateLike:
    """Rebuild a gate from :func:`gate_to_record`'s record; ``unit_of(name)`` returns the tensor ``name``.

    Raises:
        DataError: A record that is not an object, a missing key or a bad value (the message names
            ``file`` and the key's path ``where``), or an empty composite.
        ConfigError: Field values the gate itself refuses (e.g. ``when``, an unknown site).
    """
    if not isinstance(record, dict):
        raise DataError(f"{file}: {where} must be a JSON object, got {record!r}")
    kind = record.get("kind", "gate")
    if kind in _COMPOSITES:
        members = _field(record, "gates", (list,), where, file)
        if not members:
            raise DataError(f"{file}: key '{where}.gates' is empty; a {kind} gate needs at least one member")
        return _COMPOSITES[kind](
            tuple(
                gate_from_record(m, unit_of, key=f"{key}.{i}", where=f"{where}.gates[{i}]", file=file)
                for i, m in enumerate(members)
            )
        )
    if kind != "gate":
        raise DataError(
            f"{file}: key '{where}.kind' = {kind!r} is not allowed; expected 'gate', 'all_of' or 'any_of'"
        )
    return Gate(
        layer=_field(record, "layer", (int,), where, file),
        threshold=float(_field(record, "threshold", (int, float), where, file)),
        site=_field(record, "site", (str,), where, file),
        position=_field(record, "position", (str,), where, file),
        when=_field(record, "when", (str,), where, file),
        unit=unit_of(key),
    )
