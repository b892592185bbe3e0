"""From localisation to injection: recommend where to steer, and say why.

Selection rules (after Arditi et al. 2024; ``docs/methods.md``), applied in order:

1. Skip the last ``skip_last_fraction`` (default 20%) of layers: directions there mostly write the
   output and steering them breaks text.
2. Require the held-out probe to separate the classes: the lower 95% bound of its AUROC must exceed
   ``min_auroc_lo``.
3. If a residual patching result is given, require causal evidence: the largest normalised
   denoising effect at that layer (over positions) must reach ``min_patch_effect``.
4. If a steerability is given for a layer, require that steering there helps (a log-odds shift > 0).
5. If an ablation KL is given for a layer, require ``KL(base || ablated) <= max_ablation_kl`` on
   harmless prompts (Arditi's 0.1 nats): ablating the direction must not wreck unrelated text.
6. If a :class:`~lensteer.evaluate.Steerability` is given (the causal criterion for injection), take the
   passing layer where steering at a fixed KL budget moves the aligned-over-misaligned log-odds
   the most: readability saturates on many layers, steerability does not.
7. Otherwise take the highest probe-AUROC lower bound; break near-ties (within ``tie_margin``) by
   the larger patching effect, then by the larger difference-of-means d' (when AUROC saturates at 1,
   d' still measures the margin between the classes), then the earlier layer.

Every rule's outcome is recorded per layer, so the choice can be audited.

``lensteer run`` no longer chooses its site here: :mod:`lensteer.study.site_choice` scores calibrated
candidates by the first-token decision on validation prompts, with intervals, a random control and the
lower bootstrap bound (a teacher-forced steerability is a point estimate, and the written reply's later
tokens can raise it where the model does not decide any differently). This stays the rule set of
:func:`~lensteer.study.site_search.search_site` and of a study whose site is not chosen (no calibration set).
"""

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypedDict, Unpack

from lensteer.core.options import settings_from
from lensteer.errors import ConfigError


@dataclass(frozen=True, kw_only=True)
class SiteRecommendation:
    """Where to steer: layer, hook site, the direction method and read position, and why."""

    layer: int
    site: str
    method: str
    read_position: str
    inject_positions: str
    reasons: tuple[str, ...]
    table: tuple[dict[str, Any], ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "layer": self.layer,
            "site": self.site,
            "method": self.method,
            "read_position": self.read_position,
            "inject_positions": self.inject_positions,
            "reasons": list(self.reasons),
            "table": list(self.table),
        }

    def __str__(self) -> str:
        return f"steer at layer {self.layer} ({self.site}, {self.method} direction): " + "; ".join(
            self.reasons
        )


class RecommendOptions(TypedDict, total=False):
    """The keyword options of :func:`recommend_site`: the selection rules' thresholds."""

    skip_last_fraction: float
    min_auroc_lo: float
    min_patch_effect: float
    max_ablation_kl: float
    tie_margin: float


@dataclass(frozen=True, kw_only=True)
class RecommendRules:
    """:class:`RecommendOptions` with their defaults (the rules of this module's docstring)."""

    skip_last_fraction: float = 0.2
    min_auroc_lo: float = 0.6
    min_patch_effect: float = 0.1
    max_ablation_kl: float = 0.1
    tie_margin: float = 0.01


@dataclass(frozen=True, kw_only=True)
class _Evidence:
    """What the rules read besides the probing study, per layer."""

    cutoff: int  # the first layer of the skipped last fraction
    patch_effect: Mapping[int, float]  # largest normalised residual patching effect (empty: no patching)
    ablation_kl: Mapping[int, float]
    steer_effect: Mapping[int, float]


def _patch_effects(patching: Any) -> dict[int, float]:
    """The largest normalised denoising effect per layer of a residual patching result (by position)."""
    if patching is None:
        return {}
    if patching.kind != "position":
        raise ConfigError(f"recommend_site needs residual patching by position, got kind={patching.kind!r}")
    norm = patching.normalized()
    return {layer: float(norm[i].max()) for i, layer in enumerate(patching.layers)}


def _rule_rows(probing: Any, evidence: _Evidence, rules: RecommendRules) -> list[dict[str, Any]]:
    """One row per probed layer: what the rules read there, whether it passes and why not."""
    rows = []
    for i, layer in enumerate(probing.layers):
        auroc, (lo, _) = probing.metrics["probe_auroc"][i], probing.ci["probe_auroc"][i]
        row: dict[str, Any] = {
            "layer": layer,
            "probe_auroc": auroc,
            "probe_auroc_lo": lo,
            "d_prime": probing.metrics["dom_d_prime"][i],
            "patch_effect": evidence.patch_effect.get(layer),
            "ablation_kl": evidence.ablation_kl.get(layer),
            "steer_effect": evidence.steer_effect.get(layer),
        }
        fails = []
        if layer >= evidence.cutoff:
            fails.append(f"in the last {rules.skip_last_fraction:.0%} of layers (>= {evidence.cutoff})")
        if lo <= rules.min_auroc_lo:
            fails.append(f"probe AUROC lower bound {lo:.2f} <= {rules.min_auroc_lo}")
        if row["patch_effect"] is not None and row["patch_effect"] < rules.min_patch_effect:
            fails.append(f"patching effect {row['patch_effect']:.2f} < {rules.min_patch_effect}")
        if row["ablation_kl"] is not None and row["ablation_kl"] > rules.max_ablation_kl:
            fails.append(f"ablation KL {row['ablation_kl']:.3f} > {rules.max_ablation_kl}")
        if row["steer_effect"] is not None and row["steer_effect"] <= 0:
            fails.append(f"steering here does not help (log-odds shift {row['steer_effect']:+.2f} <= 0)")
        row["passes"] = not fails
        row["why_not"] = "; ".join(fails)
        rows.append(row)
    return rows


def _most_steerable(measured: list[dict[str, Any]], kl_budget: float) -> tuple[dict[str, Any], list[str]]:
    """The passing layer whose steering moves the log-odds the most, and the reason."""
    chosen = max(measured, key=lambda r: (r["steer_effect"], -r["layer"]))
    runner_up = max((r for r in measured if r is not chosen), key=lambda r: r["steer_effect"], default=None)
    reason = (
        f"steering here at KL {kl_budget:g} nats/token shifts the aligned-over-misaligned "
        f"log-odds by {chosen['steer_effect']:+.2f} nats/token, the most of {len(measured)} layers that pass "
        "the rules"
        + (f" (next: layer {runner_up['layer']}, {runner_up['steer_effect']:+.2f})" if runner_up else "")
    )
    return chosen, [
        reason,
        f"probe AUROC {chosen['probe_auroc']:.2f} (95% CI lower bound {chosen['probe_auroc_lo']:.2f})",
    ]


def _best_probe(
    passing: list[dict[str, Any]], tie_margin: float
) -> tuple[dict[str, Any], list[str], list[dict[str, Any]]]:
    """The passing layer with the best probe AUROC lower bound (near-ties broken by patching effect, then
    d', then the earlier layer), its reason and the near-ties."""
    best_lo = max(r["probe_auroc_lo"] for r in passing)
    near = [r for r in passing if r["probe_auroc_lo"] >= best_lo - tie_margin]
    chosen = max(
        near,
        key=lambda r: (
            r["patch_effect"] if r["patch_effect"] is not None else 0.0,
            r["d_prime"],
            -r["layer"],
        ),
    )
    reason = (
        f"probe AUROC {chosen['probe_auroc']:.2f} (95% CI lower bound {chosen['probe_auroc_lo']:.2f}), the best "
        f"of {len(passing)} layers that pass the rules"
    )
    return chosen, [reason], near


def _no_layer(rows: list[dict[str, Any]], steerability: Any) -> ConfigError:
    """The error when no layer passes: why each failed (and whether steering helps nowhere)."""
    detail = "; ".join(f"layer {r['layer']}: {r['why_not']}" for r in rows)
    if steerability is not None and steerability.effect and all(v <= 0 for v in steerability.effect.values()):
        return ConfigError(
            f"no layer helps: steering at KL {steerability.kl_budget:g} does not raise the "
            f"aligned-over-misaligned log-odds at any candidate layer ({detail})"
        )
    return ConfigError(f"no layer passes the selection rules ({detail})")


def recommend_site(
    probing: Any,
    patching: Any = None,
    *,
    n_layers: int | None = None,
    ablation_kl: Mapping[int, float] | None = None,
    steerability: Any = None,
    method: str = "diff_of_means",
    **rules: Unpack[RecommendOptions],
) -> SiteRecommendation:
    """Recommend the steering layer from a :class:`~lensteer.locate.ProbingReport` (and patching evidence).

    Args:
        probing: The probing study of the contrast.
        patching: Optional residual-stream :class:`~lensteer.locate.PatchResult` (``kind="position"``).
        n_layers: Model depth (default: read from ``probing.model``).
        ablation_kl: Optional ``{layer: KL(base || ablated)}`` on harmless prompts (see :func:`ablation_kl`).
        steerability: Optional :class:`~lensteer.evaluate.Steerability` (see :func:`~lensteer.evaluate.layer_steerability`);
            when given, it decides among the layers that pass the rules.
        method: Direction method to steer with (``"diff_of_means"``, ``"pca_of_diffs"``, ``"probe"``).
        **rules: The thresholds (:class:`RecommendRules`): ``skip_last_fraction`` (0.2),
            ``min_auroc_lo`` (0.6), ``min_patch_effect`` (0.1), ``max_ablation_kl`` (0.1), ``tie_margin``
            (0.01).

    Raises:
        ConfigError: No layer passes the rules (the message lists why each failed).
    """
    rule = settings_from(RecommendRules, rules, what="recommend_site")
    depth = n_layers if n_layers is not None else (probing.model or {}).get("n_layers")
    if depth is None:
        raise ConfigError("pass n_layers: the probing report carries no model fingerprint")
    if not 0 <= rule.skip_last_fraction < 1:
        raise ConfigError(f"skip_last_fraction must be in [0, 1), got {rule.skip_last_fraction}")
    if method not in probing.directions:
        raise ConfigError(f"unknown method {method!r}; available: {', '.join(probing.directions)}")
    evidence = _Evidence(
        cutoff=round(depth * (1 - rule.skip_last_fraction)),
        patch_effect=_patch_effects(patching),
        ablation_kl=ablation_kl or {},
        steer_effect=dict(steerability.effect) if steerability is not None else {},
    )
    rows = _rule_rows(probing, evidence, rule)
    passing = [r for r in rows if r["passes"]]
    if not passing:
        raise _no_layer(rows, steerability)
    measured = [r for r in passing if r["steer_effect"] is not None]
    if measured:
        chosen, reasons = _most_steerable(measured, steerability.kl_budget)
        near = [chosen]
    else:
        chosen, reasons, near = _best_probe(passing, rule.tie_margin)
    reasons.append(f"outside the last {rule.skip_last_fraction:.0%} of the {depth} layers")
    if chosen["patch_effect"] is not None:
        reasons.append(
            f"residual patching restores {chosen['patch_effect']:.0%} of the clean metric at this layer"
        )
    if chosen["ablation_kl"] is not None:
        reasons.append(
            f"ablating the direction costs KL {chosen['ablation_kl']:.3f} nats on harmless prompts"
        )
    if len(near) > 1:
        reasons.append(
            f"chosen among {len(near)} near-ties by patching effect, then d' ({chosen['d_prime']:.2f})"
        )
    return SiteRecommendation(
        layer=chosen["layer"],
        site=probing.site,
        method=method,
        read_position=probing.position,
        inject_positions="all",
        reasons=tuple(reasons),
        table=tuple(rows),
    )
