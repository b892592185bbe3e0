"""Direction-level patching: ablate or add one direction and measure the metric, against a random control.

Also the ablation screen of layer choice (:func:`ablation_kl`): what projecting a direction out costs
on harmless prompts, as KL to the unmodified model (Arditi et al. 2024 keep directions that cost little).
"""

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypedDict, Unpack

import torch
from jaxtyping import Float

from lensteer.core.bridge import Bridge
from lensteer.core.chat import ChatPrompt, length_sorted_batches, pad_id_of, tokenize_prompt
from lensteer.core.forward import kl_divergence, last_logits
from lensteer.core.options import settings_from
from lensteer.core.sites import resolve_sites
from lensteer.core.stats import bootstrap_mean_ci
from lensteer.core.vectors import ablate_direction, add_direction
from lensteer.errors import ConfigError, DataError
from lensteer.locate.patching_base import Metric, evaluate_metric


@dataclass(frozen=True, kw_only=True, eq=False)
class DirectionPatchResult:
    """Metric with and without a direction-level intervention, per prompt, plus a random control.

    Attributes:
        baseline: ``[n_prompts]`` metric of the unmodified runs.
        patched: ``[n_prompts]`` metric with the direction ablated or added.
        control: ``[n_prompts]`` metric with a random unit direction treated the same way.
        mode: ``"ablate"`` or ``"add"``; layers: where it was applied; scale: the added amount.
    """

    baseline: Float[torch.Tensor, " n_prompts"]
    patched: Float[torch.Tensor, " n_prompts"]
    control: Float[torch.Tensor, " n_prompts"]
    mode: str
    layers: tuple[int, ...]
    site: str
    scale: float

    @property
    def effect(self) -> float:
        """Mean change of the metric caused by the intervention."""
        return float((self.patched - self.baseline).mean())

    @property
    def control_effect(self) -> float:
        """Mean change caused by the same intervention on a random direction."""
        return float((self.control - self.baseline).mean())

    def effect_ci(self, *, n_boot: int = 1000, seed: int = 0) -> tuple[float, float]:
        """95% bootstrap interval of :attr:`effect`, resampling prompts."""
        return bootstrap_mean_ci(self.patched - self.baseline, n_boot=n_boot, seed=seed)

    def to_dict(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "layers": list(self.layers),
            "site": self.site,
            "scale": self.scale,
            "effect": self.effect,
            "effect_ci": list(self.effect_ci()),
            "control_effect": self.control_effect,
            "baseline_mean": float(self.baseline.mean()),
        }


class DirectionPatchOptions(TypedDict, total=False):
    """The keyword options of :func:`patch_direction`."""

    scale: float
    batch_size: int
    seed: int


@dataclass(frozen=True, kw_only=True)
class DirectionPatchSettings:
    """:class:`DirectionPatchOptions` with their defaults (see :func:`patch_direction`)."""

    scale: float = 1.0
    batch_size: int = 16
    seed: int = 0


def patch_direction(
    model: Bridge,
    prompts: "Sequence[str | ChatPrompt]",
    direction: Any,
    metric: Metric,
    *,
    mode: Literal["ablate", "add"] = "ablate",
    layers: Sequence[int] | Literal["all"] | None = None,
    **options: Unpack[DirectionPatchOptions],
) -> DirectionPatchResult:
    """Direction-level patching: ablate or add a :class:`~lensteer.Direction` and measure the metric.

    The causal test that a direction carries the behaviour: ablating it should move the metric,
    adding it should move it the other way, and a random direction of the same norm should not.

    Args:
        direction: The direction (its ``site`` is used; its ``layer`` unless ``layers`` is given).
        mode: ``"ablate"`` projects the direction out; ``"add"`` adds ``scale * raw_norm * unit``.
        layers: Layers to intervene at (default: the direction's layer); ``"all"`` for every layer,
            as in Arditi et al.'s directional ablation.
        **options: ``scale`` (1.0): for ``"add"``, multiples of the direction's ``raw_norm`` (its
            class-mean distance); ``batch_size`` (16); ``seed`` (0): seed of the random control direction.
    """
    settings = settings_from(DirectionPatchSettings, options, what="patch_direction")
    scale, batch_size, seed = settings.scale, settings.batch_size, settings.seed
    if mode not in ("ablate", "add"):
        raise ConfigError(f"mode must be 'ablate' or 'add', got {mode!r}")
    if not torch.isfinite(torch.tensor(scale)):
        raise ConfigError(f"scale must be finite, got {scale}")
    if direction.d_model != int(model.cfg.d_model):
        raise ConfigError(
            f"the direction has width {direction.d_model}, the model d_model {model.cfg.d_model}"
        )
    layer_arg = None if layers == "all" else ([direction.layer] if layers is None else layers)
    sites = resolve_sites(model, layer_arg, direction.site)
    if isinstance(prompts, str) or len(prompts) == 0:
        raise DataError("pass a non-empty list of prompts")
    batches = length_sorted_batches(
        [tokenize_prompt(model, p) for p in prompts], batch_size, pad_id_of(model)
    )
    gen = torch.Generator().manual_seed(seed)
    random_unit = torch.randn(direction.d_model, generator=gen)
    random_unit = random_unit / random_unit.norm()
    amount = scale * direction.raw_norm

    def run(unit: torch.Tensor | None) -> torch.Tensor:
        def hook(resid: torch.Tensor, hook: Any) -> torch.Tensor:  # noqa: ARG001 - TL signature
            assert unit is not None
            return ablate_direction(resid, unit) if mode == "ablate" else add_direction(resid, unit, amount)

        hooks = [] if unit is None else [(s.name, hook) for s in sites]
        values = torch.empty(len(prompts))
        for rows, batch in batches:
            with torch.inference_mode(), model.hooks(fwd_hooks=hooks):
                values[rows] = evaluate_metric(model, batch.tokens, metric, batch.attention_mask)
        return values

    return DirectionPatchResult(
        baseline=run(None),
        patched=run(direction.unit),
        control=run(random_unit),
        mode=mode,
        layers=tuple(s.layer for s in sites),
        site=direction.site,
        scale=scale,
    )


def ablation_kl(
    model: Bridge,
    prompts: Sequence["str | ChatPrompt"],
    unit: torch.Tensor,
    *,
    layers: Sequence[int] | None = None,
    site: str = "resid_pre",
    batch_size: int = 16,
) -> float:
    """Mean ``KL(p_base || p_ablated)`` of the next-token distribution at the last prompt position.

    The direction ``unit`` is projected out at ``site`` of every layer in ``layers`` (default: all,
    Arditi's directional ablation). Use harmless prompts: a good direction costs little there.
    """
    if isinstance(prompts, str) or len(prompts) == 0:
        raise DataError("pass a non-empty list of prompts")
    sites = resolve_sites(model, layers, site)

    def hook(resid: torch.Tensor, hook: Any) -> torch.Tensor:  # noqa: ARG001 - TL signature
        return ablate_direction(resid, unit)

    total = 0.0
    for _, batch in length_sorted_batches(
        [tokenize_prompt(model, p) for p in prompts], batch_size, pad_id_of(model)
    ):
        with torch.inference_mode():
            base = torch.log_softmax(last_logits(model, batch.tokens, batch.attention_mask).float(), -1)
            with model.hooks(fwd_hooks=[(s.name, hook) for s in sites]):
                abl = torch.log_softmax(last_logits(model, batch.tokens, batch.attention_mask).float(), -1)
        total += float(kl_divergence(base, abl).sum())
    return total / len(prompts)
