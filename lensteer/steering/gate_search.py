"""An FPR-controlled search for a prompt gate, in the spirit of CAST's condition-point search.

CAST (Lee et al. 2024) grid-searches the condition's layer and threshold for F1. Here the threshold is
set for a *false-positive budget* instead: a gate that opens on harmless prompts steers them (over-
refusal), so the rate at which it opens on the negative class is the quantity to bound. Per candidate
layer a logistic probe is fitted on training prompts (:func:`~lensteer.locate.fit_probe`; its unit normal,
oriented so positives project higher, is the gate direction); on held-out prompts the threshold is the
lowest one whose false-positive rate is at most ``target_fpr``, and the layer with the highest true-
positive rate there wins. :func:`threshold_at_fpr` and :func:`roc_curve` are the pure parts.
"""

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypedDict, Unpack

import torch
from jaxtyping import Float
from tqdm.auto import tqdm

from lensteer.core.activations import collect_activations
from lensteer.core.bridge import Bridge
from lensteer.core.options import settings_from
from lensteer.core.sites import normalize_layers, validate_site_kind
from lensteer.core.stats import auroc as auroc_of
from lensteer.errors import ConfigError, DataError, HookSiteError
from lensteer.locate.directions import fit_probe
from lensteer.steering.gates import Gate

NegScores = Float[torch.Tensor, " n_neg"]
PosScores = Float[torch.Tensor, " n_pos"]
Curve = Float[torch.Tensor, " n_thresholds"]
_ONE_VECTOR = ("last", "instruction_mean", "response_mean")


def _check_fpr(target_fpr: float) -> None:
    if isinstance(target_fpr, bool) or not isinstance(target_fpr, (int, float)) or not 0.0 < target_fpr < 1.0:
        raise ConfigError(
            f"target_fpr={target_fpr!r} is not allowed; give a false-positive rate strictly between 0 and 1"
        )


def _check_scores(name: str, scores: torch.Tensor) -> None:
    if scores.ndim != 1 or scores.numel() == 0 or not torch.isfinite(scores).all():
        raise DataError(
            f"{name} scores must be a non-empty, finite 1-D tensor, got shape {tuple(scores.shape)}"
        )


def threshold_at_fpr(
    negatives: NegScores, positives: PosScores, target_fpr: float
) -> tuple[float, float, float]:
    """``(threshold, fpr, tpr)`` of the lowest threshold whose false-positive rate is at most ``target_fpr``.

    A score opens when it is strictly above the threshold. With ``n`` negatives, ``k = floor(target_fpr n)``
    may lie above it, so the lowest such threshold is the ``(k+1)``-th largest negative score ``s``. Any
    threshold from ``s`` up to the next higher score (of either class) gives the same rates; the midpoint
    of that gap is returned (``s`` itself when no score is higher), so that float noise between two
    passes over the same prompts cannot tip the boundary negative over. It is computed in the scores'
    precision (at least float32), so comparing those scores with it gives the rates returned.
    """
    _check_fpr(target_fpr)
    _check_scores("negative", negatives)
    _check_scores("positive", positives)
    # in the scores' own precision, so the threshold compares the same way when a gate applies it
    dtype = torch.promote_types(torch.promote_types(negatives.dtype, positives.dtype), torch.float32)
    neg, pos = negatives.to(dtype), positives.to(dtype)
    k = math.floor(target_fpr * len(neg) + 1e-9)  # negatives allowed above the threshold
    boundary = torch.sort(neg, descending=True).values[k]
    everything = torch.cat([neg, pos])
    above = everything[everything > boundary]
    threshold = boundary
    if above.numel():
        mid = boundary + (above.min() - boundary) / 2
        threshold = mid if boundary < mid < above.min() else boundary  # adjacent floats: no midpoint between
    return (
        float(threshold),
        float((neg > threshold).double().mean()),
        float((pos > threshold).double().mean()),
    )


def roc_curve(negatives: NegScores, positives: PosScores) -> tuple[Curve, Curve, Curve]:
    """``(fpr, tpr, thresholds)``: the ROC curve of "open when the score is above the threshold".

    Thresholds run over the distinct scores, highest first, then ``-inf``; the curve starts at (0, 0)
    and ends at (1, 1). Its trapezoid area is the AUROC with ties counted half.
    """
    _check_scores("negative", negatives)
    _check_scores("positive", positives)
    neg, pos = negatives.double(), positives.double()
    thresholds = torch.cat(
        [torch.unique(torch.cat([neg, pos])).flip(0), torch.tensor([-math.inf], dtype=torch.float64)]
    )
    fpr = (neg[None, :] > thresholds[:, None]).double().mean(1)
    tpr = (pos[None, :] > thresholds[:, None]).double().mean(1)
    return fpr, tpr, thresholds


def _roc_corners(fpr: Sequence[float], tpr: Sequence[float]) -> dict[str, list[float]]:
    """The ROC's corners only (points inside a straight horizontal or vertical run are dropped): the
    same curve in a fraction of the JSON."""
    keep = [
        i
        for i in range(len(fpr))
        if i in (0, len(fpr) - 1)
        or not (fpr[i - 1] == fpr[i] == fpr[i + 1] or tpr[i - 1] == tpr[i] == tpr[i + 1])
    ]
    return {"roc_fpr": [fpr[i] for i in keep], "roc_tpr": [tpr[i] for i in keep]}


@dataclass(frozen=True, kw_only=True, eq=False)
class GateSearch:
    """The result of :func:`search_gate`: the chosen gate and every candidate layer's validation ROC.

    Attributes:
        gates: Layer -> the gate fitted there (probe unit normal, threshold at ``target_fpr``).
        layer: The chosen layer: highest validation TPR at the target FPR (ties: lower FPR, then the
            earlier layer).
        target_fpr: The false-positive budget the thresholds were set for.
        fpr_by_layer, tpr_by_layer: Validation FPR (<= ``target_fpr``) and TPR at each layer's threshold.
        roc: Layer -> the validation ROC curve ``(fpr, tpr)`` over all thresholds (see :func:`roc_curve`).
        auroc: Layer -> validation AUROC of the gate's projection.
        n_positive_val, n_negative_val: Validation set sizes (the FPR moves in steps of ``1/n_negative_val``).
        info: Where the prompts were read (site, position) and the training set sizes.

    ``gate``, ``threshold``, ``val_fpr`` and ``val_tpr`` are the chosen layer's.
    """

    gates: dict[int, Gate]
    layer: int
    target_fpr: float
    fpr_by_layer: dict[int, float]
    tpr_by_layer: dict[int, float]
    roc: dict[int, tuple[list[float], list[float]]]
    auroc: dict[int, float]
    n_positive_val: int
    n_negative_val: int
    info: dict[str, Any]

    @property
    def gate(self) -> Gate:
        return self.gates[self.layer]

    @property
    def threshold(self) -> float:
        return self.gate.threshold

    @property
    def val_fpr(self) -> float:
        return self.fpr_by_layer[self.layer]

    @property
    def val_tpr(self) -> float:
        return self.tpr_by_layer[self.layer]

    @property
    def layers(self) -> tuple[int, ...]:
        return tuple(self.gates)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able summary (no vectors: save the gate with a steering to keep its unit)."""
        rows = [
            {
                "layer": layer,
                "threshold": self.gates[layer].threshold,
                "val_fpr": self.fpr_by_layer[layer],
                "val_tpr": self.tpr_by_layer[layer],
                "auroc": self.auroc[layer],
                **_roc_corners(self.roc[layer][0], self.roc[layer][1]),
            }
            for layer in self.layers
        ]
        return {
            "layer": self.layer,
            "threshold": self.threshold,
            "target_fpr": self.target_fpr,
            "val_fpr": self.val_fpr,
            "val_tpr": self.val_tpr,
            "n_positive_val": self.n_positive_val,
            "n_negative_val": self.n_negative_val,
            "site": self.gate.site,
            "position": self.gate.position,
            "info": dict(self.info),
            "layers": rows,
        }


class GateReadOptions(TypedDict, total=False):
    """The keyword options of :func:`search_gate` and :func:`search_gate_from_activations`."""

    site: str
    position: str
    progress: bool


@dataclass(frozen=True, kw_only=True)
class GateReading:
    """Where a gate reads the prompt (:class:`GateReadOptions`, with defaults).

    Attributes:
        site: Where the prompt is read (as in :func:`~lensteer.collect_activations`).
        position: Which token of the prompt is read (likewise; one vector per prompt).
        progress: Show progress bars.
    """

    site: str = "resid_post"
    position: str = "last"
    progress: bool = False


def search_gate_from_activations(
    positives_train: Float[torch.Tensor, "n_pos n_layers d_model"],
    negatives_train: Float[torch.Tensor, "n_neg n_layers d_model"],
    positives_val: Float[torch.Tensor, "n_val_pos n_layers d_model"],
    negatives_val: Float[torch.Tensor, "n_val_neg n_layers d_model"],
    *,
    layers: Sequence[int],
    target_fpr: float = 0.05,
    **options: Unpack[GateReadOptions],
) -> GateSearch:
    """:func:`search_gate` on activations already collected: ``[n_prompts, len(layers), d_model]`` each,
    axis 1 holding ``layers`` in order (``options`` as there; ``progress`` defaults to ``False`` here)."""
    read = settings_from(GateReading, options, what="search_gate")
    site, position, progress = read.site, read.position, read.progress
    _check_fpr(target_fpr)
    validate_site_kind(site)
    layers = list(layers)
    if not layers or len(set(layers)) != len(layers):
        raise ConfigError(f"layers={layers!r}: give at least one layer, each once")
    sets = {
        "positives_train": positives_train,
        "negatives_train": negatives_train,
        "positives_val": positives_val,
        "negatives_val": negatives_val,
    }
    for name, acts in sets.items():
        if (
            acts.ndim != 3
            or acts.shape[0] == 0
            or acts.shape[1] != len(layers)
            or acts.shape[2] != positives_train.shape[2]
        ):
            raise DataError(
                f"{name} activations must be [n > 0, {len(layers)} layers, d_model "
                f"{positives_train.shape[-1]}], got shape {tuple(acts.shape)}"
            )
    gates: dict[int, Gate] = {}
    fpr: dict[int, float] = {}
    tpr: dict[int, float] = {}
    roc: dict[int, tuple[list[float], list[float]]] = {}
    auroc: dict[int, float] = {}
    for col, layer in enumerate(tqdm(layers, desc="gate search", disable=not progress, unit="layer")):
        probe = fit_probe(
            positives_train[:, col], negatives_train[:, col], layer=layer, site=site, position=position
        )
        unit = probe.unit
        if float((positives_train[:, col].float() @ unit).mean()) < float(
            (negatives_train[:, col].float() @ unit).mean()
        ):
            unit = -unit  # positives project higher
        pos, neg = positives_val[:, col].float() @ unit, negatives_val[:, col].float() @ unit
        threshold, fpr[layer], tpr[layer] = threshold_at_fpr(neg, pos, target_fpr)
        gates[layer] = Gate(unit=unit, layer=layer, threshold=threshold, site=site, position=position)
        curve = roc_curve(neg, pos)
        roc[layer] = (curve[0].tolist(), curve[1].tolist())
        auroc[layer] = auroc_of(pos, neg)
    best = max(layers, key=lambda layer: (tpr[layer], -fpr[layer], -layer))
    info = {
        "site": site,
        "position": position,
        "n_positive_train": int(positives_train.shape[0]),
        "n_negative_train": int(negatives_train.shape[0]),
        "direction": "probe",
    }
    return GateSearch(
        gates=gates,
        layer=best,
        target_fpr=float(target_fpr),
        fpr_by_layer=fpr,
        tpr_by_layer=tpr,
        roc=roc,
        auroc=auroc,
        n_positive_val=int(positives_val.shape[0]),
        n_negative_val=int(negatives_val.shape[0]),
        info=info,
    )


def search_gate(
    model: Bridge,
    positives_train: Sequence[Any],
    negatives_train: Sequence[Any],
    positives_val: Sequence[Any],
    negatives_val: Sequence[Any],
    *,
    layers: Sequence[int],
    target_fpr: float = 0.05,
    batch_size: int = 32,
    **options: Unpack[GateReadOptions],
) -> GateSearch:
    """Find a prompt gate whose false-positive rate on held-out negatives is at most ``target_fpr``.

    For each layer in ``layers``: fit a logistic probe on the training prompts' activations (its unit
    normal, oriented so positives project higher, is the gate direction), project the validation
    prompts, take the lowest threshold whose validation FPR is <= ``target_fpr``
    (:func:`threshold_at_fpr`), and record the TPR there, the ROC curve and the AUROC. The layer with
    the highest validation TPR at the target FPR is chosen (ties: lower FPR, then the earlier layer).

    Args:
        model: A ``TransformerBridge`` in eval mode.
        positives_train: Prompts the gate should open on, to fit directions.
        negatives_train: Prompts the gate should stay closed on, to fit directions.
        positives_val: Held-out prompts it should open on, to set the threshold and measure the rates.
        negatives_val: Held-out prompts it should stay closed on, likewise.
            For a refusal gate the negatives should include harmless prompts that *sound* harmful
            (``load_dataset("borderline")``): those are where a gate over-fires.
        layers: Candidate layers (negative indices count from the end).
        target_fpr: The false-positive budget, in (0, 1). The validation FPR moves in steps of
            ``1/len(negatives_val)``, so small budgets need many negatives (at ``0.05``, fewer than 20
            means an FPR of exactly 0).
        batch_size: Prompts per forward pass.
        **options: Where to read (:class:`GateReading`): ``site`` (``"resid_post"``, as in
            :func:`~lensteer.collect_activations`), ``position`` (``"last"``, likewise) and
            ``progress`` (``True`` here: show progress bars).

    Returns:
        A :class:`GateSearch`; ``.gate`` goes straight into ``Steering(gate=...)``.

    Raises:
        ConfigError: ``target_fpr`` outside (0, 1).
        DataError: An empty prompt list.
        HookSiteError: No layers, a layer the model lacks, an unknown site or position.
    """
    read = settings_from(GateReading, {"progress": True, **options}, what="search_gate")
    site, position, progress = read.site, read.position, read.progress
    _check_fpr(target_fpr)
    sets = {
        "positives_train": positives_train,
        "negatives_train": negatives_train,
        "positives_val": positives_val,
        "negatives_val": negatives_val,
    }
    for name, prompts in sets.items():
        if isinstance(prompts, str) or len(prompts) == 0:
            raise DataError(
                f"{name} is {'a single string' if isinstance(prompts, str) else 'empty'}; "
                "give a non-empty list of prompts"
            )
    if position not in _ONE_VECTOR:
        raise HookSiteError(
            f"position {position!r} is not allowed for a gate; it reads one vector per prompt: "
            f"{', '.join(_ONE_VECTOR)}"
        )
    layer_list = normalize_layers(model, layers)
    acts = {
        name: collect_activations(
            model,
            prompts,
            layers=layer_list,
            site=site,
            position=position,
            batch_size=batch_size,
            progress=progress,
        )
        for name, prompts in sets.items()
    }
    return search_gate_from_activations(
        **acts, layers=layer_list, target_fpr=target_fpr, site=site, position=position, progress=progress
    )
