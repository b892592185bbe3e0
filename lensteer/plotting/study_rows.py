"""Reading study rows for figures: which threat models and methods they hold, styles, the Pareto front."""

import math
from collections.abc import Mapping, Sequence
from typing import Any

from lensteer import threats
from lensteer.errors import DataError
from lensteer.plotting.style import PALETTE
from lensteer.study.records import ConditionResult, as_result

METHOD_STYLE: dict[str, tuple[str, str]] = {
    "SwFC": (PALETTE[0], "o"),
    "StTP": (PALETTE[1], "s"),
    "StMP": (PALETTE[2], "D"),
    "add": (PALETTE[3], "^"),
    "ablate": (PALETTE[4], "v"),
    "ace": (PALETTE[5], "P"),
    "angular": (PALETTE[6], "X"),
    "StMP-push": (PALETTE[3], "d"),
}
PAPER_SUFFIX = ":paper"  # a selective method under the seed paper's rule as written (scale 1, no calibration)


BASELINE_STYLE = ("#000000", "*")


RANDOM_STYLE = ("0.55", "x")


def trait_label(threat_model: str, default: str = "trait rate") -> str:
    """The axis label of a threat model's trait rate (its registered ``trait_label``; ``default`` for a
    threat model not registered in this session, e.g. rows read from another lensteer's study)."""
    return threats.get(threat_model).trait_label if threat_model in threats.names() else default


PROMPTING_STYLE = ("#CC79A7", "P")


CONTROLS = ("baseline", "random", "prompting")


def is_control(method: str) -> bool:
    """The unsteered and prompting baselines and the random-direction controls (``random`` or ``random:<seed>``)."""
    return method in CONTROLS or method.startswith("random:")


def style_of(method: str) -> tuple[str, str]:
    if method == "baseline":
        return BASELINE_STYLE
    if method == "random" or method.startswith("random:"):
        return RANDOM_STYLE
    if method == "prompting":
        return PROMPTING_STYLE
    if method.endswith(PAPER_SUFFIX):  # the same method, drawn hollow by the figures
        return style_of(method.removesuffix(PAPER_SUFFIX))
    if method in METHOD_STYLE:
        return METHOD_STYLE[method]
    return PALETTE[len(method) % len(PALETTE)], "o"


def label_of(method: str) -> str:
    if method.startswith("random:"):
        return "random directions (each seed)"  # seeds share a style, so one legend entry
    if method.endswith(PAPER_SUFFIX):
        return f"{method.removesuffix(PAPER_SUFFIX)}, paper rule (scale 1)"
    return {"baseline": "unsteered", "random": "random direction", "prompting": "prompting baseline"}.get(
        method, method
    )


def as_number(value: Any) -> float | None:
    """A finite float, or ``None`` for a missing / null / NaN value."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def as_rows(rows: "Sequence[ConditionResult | Mapping[str, Any]]") -> list[dict[str, Any]]:
    """The rows as JSON objects with today's key names: :class:`~lensteer.study.records.ConditionResult` s,
    or rows of any lensteer's ``results.json`` (read through it, so an earlier key name is migrated)."""
    return [as_result(r).to_dict() for r in rows]


def threat_models_of(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """The threat models in ``rows``, in order of first appearance."""
    return list(dict.fromkeys(str(r["threat_model"]) for r in rows))


def methods_of(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """The steering methods in ``rows`` (not the baseline or the random control), in order of first appearance."""
    return [m for m in dict.fromkeys(str(r["method"]) for r in rows) if not is_control(m)]


def matched_budget(rows: Sequence[Mapping[str, Any]], kl_budget: float | None) -> float | None:
    if kl_budget is not None:
        return kl_budget
    return next(
        (
            float(r["kl_budget"])
            for r in rows
            if not is_control(str(r["method"])) and as_number(r.get("kl_budget")) is not None
        ),
        None,
    )


def rows_for(rows: Sequence[Mapping[str, Any]], threat_model: str | None) -> list[Mapping[str, Any]]:
    mine = [r for r in rows if threat_model is None or r["threat_model"] == threat_model]
    if not mine:
        raise DataError(f"no rows for threat model {threat_model!r}; the rows have {threat_models_of(rows)}")
    return mine


def pareto_front(points: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    """The (KL, trait) points no other point beats: lower or equal KL and higher or equal trait, one strictly.

    Args:
        points: ``(kl, trait)`` pairs; KL is a cost (lower is better), the trait rate a benefit
            (higher is better).

    Returns:
        The non-dominated points, each once, sorted by increasing KL (and so increasing trait).
    """
    unique = sorted(set(points), key=lambda p: (p[0], -p[1]))
    front: list[tuple[float, float]] = []
    for kl, trait in unique:
        # sorted by KL (ties: best trait first), a point is on the front iff it beats every earlier trait
        if not front or trait > front[-1][1]:
            front.append((kl, trait))
    return front
