"""How far a fine-tune moved the model along a direction (persona vectors, Chen et al. 2025: the
"finetuning shift"): the mean, over the same prompts, of the organism's activation minus the base model's,
projected on the direction. A shift toward a trait predicts that the fine-tune shows more of it.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float

from lensteer.core.activations import Position, collect_activations
from lensteer.core.chat import ChatPrompt
from lensteer.core.stats import bootstrap_mean_ci
from lensteer.errors import ArtifactMismatchError, DataError
from lensteer.locate.directions import Direction


@dataclass(frozen=True, kw_only=True, eq=False)
class ActivationShift:
    """The organism-minus-base projection on a direction, per prompt and on average.

    Attributes:
        per_prompt: Each prompt's shift (organism minus base projection).
        mean: Their mean. ci: Its bootstrap 95% interval.
        layer: The direction's layer. position: Where the activations were read.
    """

    per_prompt: Float[torch.Tensor, " n"]
    mean: float
    ci: tuple[float, float]
    layer: int
    position: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "mean": self.mean,
            "ci": list(self.ci),
            "n": int(self.per_prompt.numel()),
            "layer": self.layer,
            "position": self.position,
        }


def organism_shift(
    base: Any,
    organism: Any,
    direction: Direction,
    prompts: Sequence["str | ChatPrompt"],
    *,
    position: Position = "last",
    batch_size: int = 16,
    seed: int = 0,
) -> ActivationShift:
    """The fine-tune's shift along ``direction``: organism minus base projection at the direction's layer
    and site, on the same ``prompts`` (``position``: where on each prompt; ``"response_mean"`` for prompts
    with responses).

    Raises:
        DataError: No prompts. ArtifactMismatchError: Models of different widths or depths.
    """
    if not prompts:
        raise DataError("organism_shift needs at least one prompt")
    shapes = [(m.cfg.n_layers, m.cfg.d_model) for m in (base, organism)]
    if shapes[0] != shapes[1]:
        raise ArtifactMismatchError(
            f"base (layers, d_model) {shapes[0]} but organism {shapes[1]}: not a fine-tune of it"
        )
    projections = [
        collect_activations(
            m,
            list(prompts),
            layers=[direction.layer],
            site=direction.site,
            position=position,
            batch_size=batch_size,
        )[:, 0]
        @ direction.unit
        for m in (base, organism)
    ]
    shift = projections[1] - projections[0]
    return ActivationShift(
        per_prompt=shift,
        mean=float(shift.mean()),
        ci=bootstrap_mean_ci(shift, seed=seed),
        layer=direction.layer,
        position=str(position),
    )
