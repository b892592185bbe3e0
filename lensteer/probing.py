"""Layer-by-layer separation of two classes of activations, measured on held-out prompts.

For each layer the difference-of-means direction is fitted on the training split; held-out
prompts are projected onto it and classified at the midpoint of the two training class means.
We report held-out balanced accuracy and d' = (m+ - m-) / sqrt((s+^2 + s-^2) / 2) of the held-out
projections: how linearly separable the classes are at that depth.
"""

from dataclasses import asdict, dataclass
from typing import Any, Literal

import torch
from jaxtyping import Float

from lensteer.activations import collect_activations
from lensteer.data import ContrastSet
from lensteer.errors import ConfigError, DataError
from lensteer.sites import normalize_layers

ContrastKind = Literal["prompt", "response"]


@dataclass(frozen=True, kw_only=True)
class SeparationReport:
    """Held-out separation per layer (one entry per layer, in ``layers`` order)."""

    dataset: str
    contrast: str
    site: str
    position: str
    layers: tuple[int, ...]
    accuracy: tuple[float, ...]
    d_prime: tuple[float, ...]
    n_train: int
    n_test: int

    @property
    def best_layer(self) -> int:
        """The layer with the largest held-out d'."""
        return self.layers[max(range(len(self.layers)), key=lambda i: self.d_prime[i])]

    def to_rows(self) -> list[dict[str, Any]]:
        return [{"layer": la, "accuracy": acc, "d_prime": d}
                for la, acc, d in zip(self.layers, self.accuracy, self.d_prime, strict=True)]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_table(self) -> str:
        """A plain-text table with a bar for d', for terminals and logs."""
        top = max(self.d_prime) if self.d_prime else 1.0
        lines = [
            f"{self.dataset}: {self.contrast} contrast at {self.site}/{self.position} "
            f"(train {self.n_train} per class, held-out {self.n_test} per class)",
            f"{'layer':>5}  {'held-out acc':>12}  {'d_prime':>7}",
        ]
        for row in self.to_rows():
            bar = "#" * max(0, round(20 * row["d_prime"] / top)) if top > 0 else ""
            lines.append(f"{row['layer']:>5}  {row['accuracy']:>12.3f}  {row['d_prime']:>7.2f}  {bar}")
        lines.append(f"best layer by d': {self.best_layer}")
        return "\n".join(lines)


def _check(name: str, acts: torch.Tensor) -> None:
    if acts.ndim != 3 or acts.shape[0] < 2:
        raise DataError(f"{name} must be [n_prompts >= 2, n_layers, d_model], got {tuple(acts.shape)}")
    if not torch.isfinite(acts).all():
        raise DataError(f"{name} contains NaN or Inf")


def layer_separation(
    pos_train: Float[torch.Tensor, "n_pos_train n_layers d_model"],
    neg_train: Float[torch.Tensor, "n_neg_train n_layers d_model"],
    pos_test: Float[torch.Tensor, "n_pos_test n_layers d_model"],
    neg_test: Float[torch.Tensor, "n_neg_test n_layers d_model"], *,
    layers: tuple[int, ...] | list[int], dataset: str = "", contrast: str = "",
    site: str = "resid_post", position: str = "last",
) -> SeparationReport:
    """Held-out accuracy and d' of the difference-of-means projection, layer by layer (pure)."""
    for name, acts in (("pos_train", pos_train), ("neg_train", neg_train), ("pos_test", pos_test), ("neg_test", neg_test)):
        _check(name, acts)
    if len({a.shape[1] for a in (pos_train, neg_train, pos_test, neg_test)}) != 1 or pos_train.shape[1] != len(layers):
        raise DataError("all activation sets need the same layers, one per entry of `layers`")
    direction = pos_train.mean(0) - neg_train.mean(0)                       # [n_layers, d_model]
    unit = direction / direction.norm(dim=-1, keepdim=True).clamp(min=1e-12)
    threshold = 0.5 * ((pos_train.mean(0) * unit).sum(-1) + (neg_train.mean(0) * unit).sum(-1))
    proj_pos = torch.einsum("nld,ld->nl", pos_test, unit)
    proj_neg = torch.einsum("nld,ld->nl", neg_test, unit)
    accuracy = 0.5 * ((proj_pos > threshold).float().mean(0) + (proj_neg <= threshold).float().mean(0))
    pooled_sd = ((proj_pos.var(0) + proj_neg.var(0)) / 2).sqrt().clamp(min=1e-12)
    d_prime = (proj_pos.mean(0) - proj_neg.mean(0)) / pooled_sd
    return SeparationReport(
        dataset=dataset, contrast=contrast, site=site, position=position, layers=tuple(layers),
        accuracy=tuple(accuracy.tolist()), d_prime=tuple(d_prime.tolist()),
        n_train=int(min(pos_train.shape[0], neg_train.shape[0])), n_test=int(min(pos_test.shape[0], neg_test.shape[0])),
    )


def contrast_prompts(dataset: ContrastSet, contrast: ContrastKind) -> tuple[list[Any], list[Any], str]:
    """The two classes of prompts of a contrast and the position to read them at.

    ``"prompt"``: ``prompt`` vs ``paired_prompt`` (e.g. harmful vs harmless), read at the last token.
    ``"response"``: the prompt followed by its aligned vs its misaligned response, averaged over the
    response tokens (the persona-vector recipe).
    """
    if contrast == "prompt":
        return dataset.chat_prompts(), dataset.chat_prompts(paired=True), "last"
    if contrast == "response":
        ds = dataset.with_responses()
        if len(ds) == 0:
            raise DataError(f"dataset {dataset.name!r} has no rows with responses for a response contrast")
        return ds.chat_prompts(response="aligned"), ds.chat_prompts(response="misaligned"), "response_mean"
    raise ConfigError(f"contrast must be 'prompt' or 'response', got {contrast!r}")


def separation_by_layer(
    model: Any, dataset: ContrastSet, *, contrast: ContrastKind = "prompt",
    layers: list[int] | None = None, site: str = "resid_post", batch_size: int = 16,
    progress: bool = False,
) -> SeparationReport:
    """Collect activations for a contrast set's train and test splits and measure separation per layer.

    Example:
        >>> report = lensteer.separation_by_layer(model, lensteer.load_dataset("refusal"))  # doctest: +SKIP
        >>> print(report.to_table())  # doctest: +SKIP
    """
    layer_list = normalize_layers(model, layers)
    acts = {}
    for split in ("train", "test"):
        pos, neg, position = contrast_prompts(getattr(dataset, split), contrast)
        for label, prompts in (("pos", pos), ("neg", neg)):
            acts[f"{label}_{split}"] = collect_activations(
                model, prompts, layers=layer_list, site=site, position=position,
                batch_size=batch_size, progress=progress,
            )
    return layer_separation(
        acts["pos_train"], acts["neg_train"], acts["pos_test"], acts["neg_test"], layers=layer_list,
        dataset=dataset.name, contrast=contrast, site=site, position=position,
    )
