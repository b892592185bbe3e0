"""The prompt gate (refusal's, CAST-style), chosen by what it costs.

A gate steers only the prompts a harmful-vs-harmless probe calls harmful. Its false-positive budget
trades what the steering can reach (the share of harmful prompts the gate opens on: no gated method can
make the model refuse more of them) against over-refusal of borderline prompts (harmless requests that
only sound dangerous; where the gate opens, a steering strong enough to make the model refuse acts too).
Per candidate budget (``config.gate_fprs``, e.g. 2-20%) the gate is fitted as before
(:func:`~lensteer.steering.search_gate`: a probe per layer on the held-apart-free training rows, the
threshold and layer set on validation prompts to that false-positive rate), and on **validation** data
the curve records

* ``val_tpr``: the share of harmful validation prompts the gate opens on (the ceiling on trait gained);
* ``val_borderline_over_refusal``: the share of borderline validation prompts that the unsteered model
  refuses or the gate opens on (an upper bound on a gated steering's borderline over-refusal).

The default (``config.gate_fpr`` unset) is the largest budget whose borderline over-refusal stays within
``config.max_borderline_over_refusal`` (:func:`choose_budget`). The chosen gate's rates on the **test**
split (prompts that chose nothing) are reported beside the curve.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from lensteer import threats
from lensteer.core.activations import collect_activations
from lensteer.core.bridge import Bridge
from lensteer.core.chat import ChatPrompt
from lensteer.core.datasets import ContrastSet, load_dataset
from lensteer.evaluate.refusal import is_refusal
from lensteer.steering.gate_search import GateSearch, search_gate_from_activations
from lensteer.steering.gates import Gate
from lensteer.steering.generation import generate
from lensteer.study.config import StudyConfig


@dataclass(frozen=True, kw_only=True)
class CurvePoint:
    """One false-positive budget of the gate on validation prompts."""

    target_fpr: float
    val_tpr: float
    val_borderline_over_refusal: float

    def to_dict(self) -> dict[str, float]:
        return {
            "target_fpr": self.target_fpr,
            "val_tpr": self.val_tpr,
            "val_borderline_over_refusal": self.val_borderline_over_refusal,
        }


def choose_budget(curve: Sequence[CurvePoint], ceiling: float) -> tuple[float, str]:
    """The largest budget whose validation borderline over-refusal is at most ``ceiling``, and why; if
    none is, the smallest budget (the least over-refusal there is), said so."""
    if not curve:
        raise ValueError("choose_budget needs at least one point of the curve")
    within = [p for p in curve if p.val_borderline_over_refusal <= ceiling]
    if within:
        best = max(within, key=lambda p: p.target_fpr)
        return best.target_fpr, (
            f"the largest false-positive budget whose validation borderline over-refusal "
            f"({best.val_borderline_over_refusal:.1%}) stays within {ceiling:.0%} (gate opens on "
            f"{best.val_tpr:.1%} of harmful validation prompts)"
        )
    least = min(curve, key=lambda p: p.target_fpr)
    return least.target_fpr, (
        f"no budget keeps validation borderline over-refusal within {ceiling:.0%}; took the smallest "
        f"({least.target_fpr:g}: {least.val_borderline_over_refusal:.1%})"
    )


@dataclass(frozen=True, kw_only=True, eq=False)
class GateChoice:
    """The chosen gate (its search at the chosen budget), the validation curve over budgets, why this
    budget, and the chosen gate's test rates."""

    search: GateSearch
    curve: tuple[CurvePoint, ...]
    reason: str
    test: dict[str, float]

    @property
    def gate(self) -> Gate:
        return self.search.gate

    def to_dict(self) -> dict[str, Any]:
        """``gate`` for the report (the search, why this budget, its test rates); the curve is
        :meth:`curve_dicts`."""
        return {**self.search.to_dict(), "chosen_by": self.reason, **self.test}

    def curve_dicts(self) -> list[dict[str, float]]:
        return [p.to_dict() for p in self.curve]


def _opens(gate: Gate, acts: torch.Tensor, layers: Sequence[int]) -> torch.Tensor:
    """Which prompts ``gate`` opens on, from their ``[n, len(layers), d_model]`` activations."""
    col = list(layers).index(gate.layer)
    return gate.opens(acts[:, col].float() @ gate.unit.float())


def _share(flags: torch.Tensor) -> float:
    return float(flags.double().mean()) if flags.numel() else 0.0


def _capped(split: ContrastSet, cap: int | None) -> ContrastSet:
    """``cap`` examples taken in turn from every category, or the whole split in file order."""
    return split if cap is None else split.stratified(cap)


def gate_prompt_sets(tm: threats.ThreatModel, config: StudyConfig) -> dict[str, list[str]]:
    """The prompts the gate is fitted and read on, by role: harmful (positives) and harmless twins plus
    borderline prompts (negatives) of the training, validation and test splits, and the borderline
    validation and test prompts on their own (``borderline_val`` is answered by the unsteered model).

    ``config.n_gate`` caps each split's harmful prompts (their twins follow) and its borderline prompts,
    taken in turn from every category; unset, every training pair (at least 96) and whole validation and
    test splits. The training rows exclude the held-apart ones (they calibrate the steerings' KL)."""
    refusal, borderline = tm.load(), load_dataset("borderline")
    cap = config.n_gate
    # harmful vs topic-matched harmless is a hard contrast for a small model: every training pair by default
    train = refusal.fit.stratified(max(96, config.n_train) if cap is None else cap)
    val, test = _capped(refusal.val, cap), _capped(refusal.test, cap)
    border_fit, border_val, border_test = (
        _capped(borderline.fit, cap),
        _capped(borderline.val, cap),
        _capped(borderline.test, cap),
    )
    return {
        "positives_train": train.prompts,
        "negatives_train": train.paired_prompts + border_fit.prompts,
        "positives_val": val.prompts,
        "negatives_val": val.paired_prompts + border_val.prompts,
        "positives_test": test.prompts,
        "negatives_test": test.paired_prompts + border_test.prompts,
        "borderline_val": border_val.prompts,
        "borderline_test": border_test.prompts,
    }


def prompt_gate(
    model: Bridge, tm: threats.ThreatModel, config: StudyConfig, layers: Sequence[int]
) -> GateChoice:
    """The study's prompt gate for ``tm`` (harmful vs harmless twins and borderline prompts) at one of
    ``layers``, its false-positive budget chosen by :func:`choose_budget` unless ``config.gate_fpr`` fixes it.

    Training rows exclude the held-apart ones (they calibrate the steerings' KL, gate on); the gate is read
    in its own prompt pass, so its layer need not be the steering layer."""
    sets = gate_prompt_sets(tm, config)
    acts = {
        name: collect_activations(model, prompts, layers=list(layers), batch_size=config.batch_size)
        for name, prompts in sets.items()
        if not name.startswith("borderline_")
    }
    refused = torch.tensor(
        [
            is_refusal(t)
            for t in generate(
                model,
                [ChatPrompt(user=p) for p in sets["borderline_val"]],
                max_new_tokens=config.max_new_tokens,
                batch_size=config.batch_size,
            ).texts
        ]
    )
    n_val_border, n_test_border = len(sets["borderline_val"]), len(sets["borderline_test"])
    searches: dict[float, GateSearch] = {}
    curve = []
    for budget in sorted({*config.gate_fprs, *([] if config.gate_fpr is None else [config.gate_fpr])}):
        searches[budget] = search_gate_from_activations(
            acts["positives_train"],
            acts["negatives_train"],
            acts["positives_val"],
            acts["negatives_val"],
            layers=list(layers),
            target_fpr=budget,
        )
        gate = searches[budget].gate
        border_open = _opens(gate, acts["negatives_val"][-n_val_border:], layers)
        curve.append(
            CurvePoint(
                target_fpr=budget,
                val_tpr=searches[budget].val_tpr,
                val_borderline_over_refusal=_share(border_open | refused),
            )
        )
    if config.gate_fpr is None:
        chosen, reason = choose_budget(
            [p for p in curve if p.target_fpr in config.gate_fprs], config.max_borderline_over_refusal
        )
    else:
        chosen, reason = config.gate_fpr, f"fixed by the config (gate_fpr = {config.gate_fpr:g})"
    gate = searches[chosen].gate
    negatives = _opens(gate, acts["negatives_test"], layers)
    rates = {
        "test_tpr": _share(_opens(gate, acts["positives_test"], layers)),
        "test_fpr": _share(negatives),
        "test_fpr_borderline": _share(negatives[-n_test_border:]),
        "val_borderline_refused_unsteered": _share(refused),
    }
    return GateChoice(search=searches[chosen], curve=tuple(curve), reason=reason, test=rates)
