"""Candidate directions from collected activations (pure functions on CPU tensors).

* Difference of means (Arditi et al. 2024; Rimsky et al. 2024): ``r = mean(pos) - mean(neg)``.
* PCA of paired differences (Zou et al. 2023, RepE): first principal component of ``pos_i - neg_i``,
  uncentred by default (so a consistent shift counts); ``center=True`` matches repeng/sklearn.
* Logistic-regression probe ``p(pos | h) = sigmoid(w.h + b)`` on standardised features, L2 strength
  chosen on validation data; its unit normal ``w/||w||`` is a direction and its boundary
  ``s* = -b/||w||`` is in projection units, the threshold the seed paper's StTP/StMP steer against.

Sign convention: the positive class projects higher. lensteer passes the *aligned* behaviour as the
positive class (refusing harmful requests, compassionate or honest responses), so directions point
from misaligned to aligned.
"""

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any, TypedDict, Unpack

import torch
from jaxtyping import Float

from lensteer._types import DirectionVec
from lensteer.core.options import settings_from
from lensteer.errors import ArtifactMismatchError, DataError


@dataclass(frozen=True, kw_only=True, eq=False)
class Direction:
    """A unit vector in the residual stream at one (layer, site, position), with provenance.

    Attributes:
        unit: The unit vector, CPU float32.
        layer: Layer it was read at.
        site: Hook site kind (``"resid_post"``, ...).
        position: Position selector it was read at.
        method: How it was found (``"diff_of_means"``, ...).
        raw_norm: Norm of the un-normalised vector (e.g. ``||mu+ - mu-||``).
        model: The model fingerprint as a dict, if known.
        source: The data it came from (dataset, split, contrast).
        metrics: Train and held-out metrics (accuracy, AUROC, d', ...).
    """

    unit: DirectionVec
    layer: int
    site: str = "resid_post"
    position: str = "last"
    method: str = "diff_of_means"
    raw_norm: float = 1.0
    model: dict[str, Any] | None = None
    source: str = ""
    metrics: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        unit = self.unit.detach().to(torch.float32).cpu().clone()
        norm = float(unit.norm())
        if not math.isfinite(norm) or abs(norm - 1.0) > 1e-4:
            raise DataError(f"Direction.unit must be a finite unit vector, got norm {norm}")
        object.__setattr__(self, "unit", unit)

    @property
    def d_model(self) -> int:
        return int(self.unit.shape[0])

    def cosine(self, other: "Direction") -> float:
        """Cosine similarity with another direction of the same width."""
        if other.d_model != self.d_model:
            raise ArtifactMismatchError(
                f"cannot compare directions of width {self.d_model} and {other.d_model}"
            )
        return float(self.unit @ other.unit)

    def project(self, acts: torch.Tensor) -> torch.Tensor:
        """Scalar projection of ``[..., d_model]`` activations onto the unit vector."""
        if acts.shape[-1] != self.d_model:
            raise ArtifactMismatchError(
                f"activations have width {acts.shape[-1]}, the direction {self.d_model}"
            )
        return acts.float() @ self.unit.to(acts.device)

    def allclose(self, other: "Direction", atol: float = 1e-6) -> bool:
        return (self.layer, self.site, self.position, self.method) == (
            other.layer,
            other.site,
            other.position,
            other.method,
        ) and torch.allclose(self.unit, other.unit, atol=atol)


def _check_acts(name: str, acts: torch.Tensor) -> None:
    if acts.ndim != 2 or acts.shape[0] == 0:
        raise DataError(f"{name} activations must be [n_prompts > 0, d_model], got shape {tuple(acts.shape)}")
    if not torch.isfinite(acts).all():
        raise DataError(f"{name} activations contain NaN or Inf")


def diff_of_means(
    positive: Float[torch.Tensor, "n_pos d_model"],
    negative: Float[torch.Tensor, "n_neg d_model"],
    *,
    layer: int,
    site: str = "resid_post",
    position: str = "last",
    model: dict[str, Any] | None = None,
) -> Direction:
    """Difference-of-means direction ``mean(positive) - mean(negative)``, normalised.

    Raises:
        DataError: Empty, mismatched or non-finite activations, or coinciding class means.
    """
    _check_acts("positive", positive)
    _check_acts("negative", negative)
    if positive.shape[1] != negative.shape[1]:
        raise DataError(f"positive width {positive.shape[1]} != negative width {negative.shape[1]}")
    diff = positive.float().mean(0) - negative.float().mean(0)
    norm = float(diff.norm())
    if norm == 0.0:
        raise DataError("positive and negative means coincide: no direction to extract")
    return Direction(
        unit=diff / norm,
        layer=layer,
        site=site,
        position=position,
        method="diff_of_means",
        raw_norm=norm,
        model=model,
    )


def pca_of_diffs(
    positive: Float[torch.Tensor, "n_pairs d_model"],
    negative: Float[torch.Tensor, "n_pairs d_model"],
    *,
    layer: int,
    center: bool = False,
    site: str = "resid_post",
    position: str = "last",
    model: dict[str, Any] | None = None,
) -> Direction:
    """First principal component of paired differences ``positive[i] - negative[i]``.

    The sign is fixed so the positive class mean projects above the negative class mean.

    Raises:
        DataError: Unpaired or non-finite activations, or all differences zero.
    """
    _check_acts("positive", positive)
    _check_acts("negative", negative)
    if positive.shape != negative.shape:
        raise DataError(
            f"PCA of paired differences needs equal shapes, got {tuple(positive.shape)} and {tuple(negative.shape)}"
        )
    diffs = positive.float() - negative.float()
    if center:
        diffs = diffs - diffs.mean(0)
    if float(diffs.abs().max()) == 0.0:
        raise DataError("all paired differences are zero: no direction to extract")
    _, _, vh = torch.linalg.svd(diffs, full_matrices=False)
    unit = vh[0]
    if float((positive.float().mean(0) - negative.float().mean(0)) @ unit) < 0:
        unit = -unit
    return Direction(
        unit=unit / unit.norm(),
        layer=layer,
        site=site,
        position=position,
        method="pca_of_diffs",
        raw_norm=float(diffs.norm(dim=-1).mean()),
        model=model,
    )


@dataclass(frozen=True, kw_only=True, eq=False)
class LinearProbe:
    """A logistic-regression probe in raw activation space: ``p(pos | h) = sigmoid(weight.h + bias)``.

    Attributes:
        weight: Weight vector in the model's activation space (not standardised).
        bias: Bias in logit units.
        l2: The L2 strength chosen on validation data.
        layer, site, position: Where the activations were read.
        metrics: ``train_accuracy`` and, if validation data was given, ``val_accuracy``.
    """

    weight: DirectionVec
    bias: float
    l2: float
    layer: int
    site: str = "resid_post"
    position: str = "last"
    metrics: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "weight", self.weight.detach().to(torch.float32).cpu().clone())

    @property
    def unit(self) -> DirectionVec:
        return self.weight / self.weight.norm()

    @property
    def boundary(self) -> float:
        """Decision boundary ``s* = -bias/||weight||`` in projection units along :attr:`unit`."""
        return -self.bias / float(self.weight.norm())

    def logits(self, acts: torch.Tensor) -> torch.Tensor:
        """Probe logits ``weight.h + bias`` for ``[..., d_model]`` activations."""
        return acts.float() @ self.weight.to(acts.device) + self.bias

    def accuracy(self, positive: torch.Tensor, negative: torch.Tensor) -> float:
        """Balanced accuracy on two classes of activations."""
        return float(
            0.5 * ((self.logits(positive) > 0).float().mean() + (self.logits(negative) <= 0).float().mean())
        )

    def direction(self, *, model: dict[str, Any] | None = None, source: str = "") -> Direction:
        """The probe's unit normal as a :class:`Direction` (method ``"probe"``)."""
        return Direction(
            unit=self.unit,
            layer=self.layer,
            site=self.site,
            position=self.position,
            method="probe",
            raw_norm=float(self.weight.norm()),
            model=model,
            source=source,
            metrics=dict(self.metrics, boundary=self.boundary),
        )


def _fit_logistic(
    x: torch.Tensor,
    y: torch.Tensor,
    l2: float,
    max_iter: int = 200,
    sample_weight: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """L2-regularised (optionally weighted) logistic regression by L-BFGS on standardised features x."""
    w = torch.zeros(x.shape[1], requires_grad=True)
    b = torch.zeros((), requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(
            x @ w + b, y, weight=sample_weight
        ) + l2 * (w @ w)
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    return w.detach(), b.detach()


class ProbeFitOptions(TypedDict, total=False):
    """The keyword options of :func:`fit_probe`."""

    l2_grid: Sequence[float]
    balanced: bool


@dataclass(frozen=True, kw_only=True)
class ProbeFitSettings:
    """How :func:`fit_probe` fits (:class:`ProbeFitOptions`, with defaults).

    Attributes:
        l2_grid: L2 strengths to choose from by validation accuracy (then log-loss).
        balanced: Weight each class by ``n / (2 n_class)``.
    """

    l2_grid: Sequence[float] = (1e-4, 1e-3, 1e-2, 1e-1)
    balanced: bool = False


def fit_probe(
    positive: Float[torch.Tensor, "n_pos d_model"],
    negative: Float[torch.Tensor, "n_neg d_model"],
    *,
    layer: int,
    val_positive: Float[torch.Tensor, "n_val_pos d_model"] | None = None,
    val_negative: Float[torch.Tensor, "n_val_neg d_model"] | None = None,
    site: str = "resid_post",
    position: str = "last",
    **options: Unpack[ProbeFitOptions],
) -> LinearProbe:
    """Fit a logistic-regression probe; choose the L2 strength by validation accuracy (then log-loss).

    ``balanced=True`` weights each class by ``n / (2 n_class)`` (as scikit-learn's
    ``class_weight="balanced"``), so that a class with more rows (e.g. more tokens) does not drag the
    decision boundary towards the other class.

    Features are standardised with the training mean and s.d.; the returned probe is mapped back to
    raw activation space, so ``probe.logits(h)`` takes activations as collected. Without validation
    data the middle of ``l2_grid`` is used.

    Raises:
        DataError: A class is empty (a probe needs two classes), activations are non-finite, or only
            one of ``val_positive`` / ``val_negative`` is given.
    """
    settings = settings_from(ProbeFitSettings, options, what="fit_probe")
    l2_grid, balanced = settings.l2_grid, settings.balanced
    _check_acts("positive", positive)
    _check_acts("negative", negative)
    if (val_positive is None) != (val_negative is None):
        raise DataError("give both val_positive and val_negative, or neither")
    if not l2_grid or any(not math.isfinite(v) or v < 0 for v in l2_grid):
        raise DataError(f"l2_grid must be non-empty, finite and >= 0, got {list(l2_grid)}")
    x = torch.cat([positive, negative]).float()
    y = torch.cat([torch.ones(len(positive)), torch.zeros(len(negative))])
    mean, std = x.mean(0), x.std(0).clamp(min=1e-6)
    z = (x - mean) / std
    if val_positive is None or val_negative is None:
        candidates = [sorted(l2_grid)[len(l2_grid) // 2]]
        xv = yv = None
    else:
        _check_acts("val_positive", val_positive)
        _check_acts("val_negative", val_negative)
        candidates = list(l2_grid)
        xv = (torch.cat([val_positive, val_negative]).float() - mean) / std
        yv = torch.cat([torch.ones(len(val_positive)), torch.zeros(len(val_negative))])
    weight_by_row = None
    if balanced:
        weight_by_row = torch.where(y > 0, len(y) / (2 * len(positive)), len(y) / (2 * len(negative)))
    best: tuple[float, float, float, torch.Tensor, torch.Tensor] | None = None
    for l2 in candidates:
        w, b = _fit_logistic(z, y, l2, sample_weight=weight_by_row)
        if xv is None or yv is None:
            score, loss = 0.0, 0.0
        else:
            logit = xv @ w + b
            score = float(((logit > 0).float() == yv).float().mean())
            loss = float(torch.nn.functional.binary_cross_entropy_with_logits(logit, yv))
        if best is None or (score, -loss) > (best[0], -best[1]):
            best = (score, loss, l2, w, b)
    assert best is not None
    _, _, l2, w, b = best
    weight = w / std
    bias = float(b - (w * mean / std).sum())
    probe = LinearProbe(weight=weight, bias=bias, l2=l2, layer=layer, site=site, position=position)
    metrics = {"train_accuracy": probe.accuracy(positive, negative)}
    if val_positive is not None and val_negative is not None:
        metrics["val_accuracy"] = probe.accuracy(val_positive, val_negative)
    return replace(probe, metrics=metrics)
