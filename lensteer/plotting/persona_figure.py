"""The persona-vector screen of fine-tuning sets: each sample's projection difference, set beside set.

Draws :class:`~lensteer.locate.dataset_projection.ProjectionScreen` results (or their ``to_dict()``): one
row per screened set (a misaligned set and its control), each sample a dot, the set's mean with its
bootstrap interval as a bar; 0 (the model's own replies) as a line.
"""

from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib.pyplot as plt
import numpy as np

from lensteer.errors import DataError
from lensteer.plotting.style import PALETTE, paper_style


def _differences(screen: Any) -> tuple[str, list[float], float, Sequence[float]]:
    data = screen.to_dict() if hasattr(screen, "to_dict") else screen
    values = [float(s["difference"]) for s in data["samples"]]
    return str(data["source"]), values, float(data["mean_difference"]), data["mean_difference_ci"]


def plot_dataset_projection(screens: "Sequence[Any] | Mapping[str, Any]") -> tuple[Any, Any]:
    """Draw the screens (in order, top to bottom). Returns ``(fig, ax)``.

    Raises:
        DataError: No screen, or a screen without samples.
    """
    items = list(screens.values()) if isinstance(screens, Mapping) else list(screens)
    if not items:
        raise DataError("no screen to draw; pass ProjectionScreen results or their to_dict()")
    rows = [_differences(s) for s in items]
    if any(not values for _, values, _, _ in rows):
        raise DataError("a screen has no samples")
    rng = np.random.default_rng(0)
    with paper_style():
        fig, ax = plt.subplots(figsize=(6.0, 0.6 + 0.55 * len(rows)))
        for k, (_, values, mean, ci) in enumerate(rows):
            y = len(rows) - 1 - k
            colour = PALETTE[k % len(PALETTE)]
            ax.scatter(values, y + rng.uniform(-0.15, 0.15, len(values)), s=8, alpha=0.5, color=colour, lw=0)
            ax.errorbar(mean, y, xerr=[[mean - ci[0]], [ci[1] - mean]], fmt="o", color="black", capsize=3)
        ax.axvline(0.0, color="grey", lw=0.8, ls="--")
        ax.set_yticks(range(len(rows)), [name for name, *_ in reversed(rows)])
        ax.set_xlabel("projection difference (training reply - own reply)")
        ax.set_title("persona-vector screen of fine-tuning sets")
        fig.tight_layout()
    return fig, ax
