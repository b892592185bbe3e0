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
from typing import Any

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


def recommend_site(
    probing: Any,
    patching: Any = None,
    *,
    n_layers: int | None = None,
    ablation_kl: Mapping[int, float] | None = None,
    steerability: Any = None,
    method: str = "diff_of_means",
    skip_last_fraction: float = 0.2,
    min_auroc_lo: float = 0.6,
    min_patch_effect: float = 0.1,
    max_ablation_kl: float = 0.1,
    tie_margin: float = 0.01,
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

    Raises:
        ConfigError: No layer passes the rules (the message lists why each failed).
    """
    depth = n_layers if n_layers is not None else (probing.model or {}).get("n_layers")
    if depth is None:
        raise ConfigError("pass n_layers: the probing report carries no model fingerprint")
    if not 0 <= skip_last_fraction < 1:
        raise ConfigError(f"skip_last_fraction must be in [0, 1), got {skip_last_fraction}")
    if method not in probing.directions:
        raise ConfigError(f"unknown method {method!r}; available: {', '.join(probing.directions)}")
    cutoff = round(depth * (1 - skip_last_fraction))
    patch_effect: dict[int, float] = {}
    if patching is not None:
        if patching.kind != "position":
            raise ConfigError(
                f"recommend_site needs residual patching by position, got kind={patching.kind!r}"
            )
        norm = patching.normalized()
        patch_effect = {layer: float(norm[i].max()) for i, layer in enumerate(patching.layers)}
    effect: dict[int, float] = dict(steerability.effect) if steerability is not None else {}
    rows = []
    for i, layer in enumerate(probing.layers):
        auroc, (lo, _) = probing.metrics["probe_auroc"][i], probing.ci["probe_auroc"][i]
        row: dict[str, Any] = {
            "layer": layer,
            "probe_auroc": auroc,
            "probe_auroc_lo": lo,
            "d_prime": probing.metrics["dom_d_prime"][i],
            "patch_effect": patch_effect.get(layer),
            "ablation_kl": (ablation_kl or {}).get(layer),
            "steer_effect": effect.get(layer),
        }
        fails = []
        if layer >= cutoff:
            fails.append(f"in the last {skip_last_fraction:.0%} of layers (>= {cutoff})")
        if lo <= min_auroc_lo:
            fails.append(f"probe AUROC lower bound {lo:.2f} <= {min_auroc_lo}")
        if patching is not None and layer in patch_effect and patch_effect[layer] < min_patch_effect:
            fails.append(f"patching effect {patch_effect[layer]:.2f} < {min_patch_effect}")
        if row["ablation_kl"] is not None and row["ablation_kl"] > max_ablation_kl:
            fails.append(f"ablation KL {row['ablation_kl']:.3f} > {max_ablation_kl}")
        if row["steer_effect"] is not None and row["steer_effect"] <= 0:
            fails.append(f"steering here does not help (log-odds shift {row['steer_effect']:+.2f} <= 0)")
        row["passes"] = not fails
        row["why_not"] = "; ".join(fails)
        rows.append(row)
    passing = [r for r in rows if r["passes"]]
    if not passing:
        detail = "; ".join(f"layer {r['layer']}: {r['why_not']}" for r in rows)
        if effect and all(v <= 0 for v in effect.values()):
            raise ConfigError(
                f"no layer helps: steering at KL {steerability.kl_budget:g} does not raise the "
                f"aligned-over-misaligned log-odds at any candidate layer ({detail})"
            )
        raise ConfigError(f"no layer passes the selection rules ({detail})")
    measured = [r for r in passing if r["steer_effect"] is not None]
    if measured:
        chosen = max(measured, key=lambda r: (r["steer_effect"], -r["layer"]))
        runner_up = max(
            (r for r in measured if r is not chosen), key=lambda r: r["steer_effect"], default=None
        )
        reasons = [
            f"steering here at KL {steerability.kl_budget:g} nats/token shifts the aligned-over-misaligned "
            f"log-odds by {chosen['steer_effect']:+.2f} nats/token, the most of {len(measured)} layers that pass "
            "the rules"
            + (f" (next: layer {runner_up['layer']}, {runner_up['steer_effect']:+.2f})" if runner_up else ""),
            f"probe AUROC {chosen['probe_auroc']:.2f} (95% CI lower bound {chosen['probe_auroc_lo']:.2f})",
            f"outside the last {skip_last_fraction:.0%} of the {depth} layers",
        ]
        near = [chosen]
    else:
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
        reasons = [
            f"probe AUROC {chosen['probe_auroc']:.2f} (95% CI lower bound {chosen['probe_auroc_lo']:.2f}), the best "
            f"of {len(passing)} layers that pass the rules",
            f"outside the last {skip_last_fraction:.0%} of the {depth} layers",
        ]
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
