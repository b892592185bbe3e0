"""The site-selection figure: every candidate's first-token decision shift, by layer, position and source."""

from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt

from lensteer.errors import DataError
from lensteer.plotting.style import PALETTE, new_ax, paper_style, save_figure

_SOURCES = ("prompt_contrast", "response_mean", "probe")


def plot_selection(selection: Any, ax: Any = None) -> tuple[Any, Any]:
    """Decision shift (nats) with its bootstrap CI per candidate, at its layer: colour = source, a small offset
    per read position; candidates that fail a filter are hollow, the chosen one is starred, and those
    filtered out before scoring (e.g. ablation KL on harmless prompts) are crosses below the dotted line.

    ``selection``: a :class:`~lensteer.study.selection.Selection` or its ``to_dict()`` (as in report.json).
    """
    data = selection.to_dict() if hasattr(selection, "to_dict") else selection
    candidates = list(data.get("candidates", []))
    rows = [c for c in candidates if c.get("decision_shift") is not None]
    if not rows:
        raise DataError("the selection has no scored candidate to draw")
    unscored = [c for c in candidates if c.get("decision_shift") is None]  # filtered before scoring
    floor = min(0.0, *(c["decision_shift_ci"][0] for c in rows)) - 0.5
    positions = sorted({c["position"] for c in candidates})
    width = 0.8 / max(1, len(positions) * len(_SOURCES))
    chosen = data.get("chosen")

    def x_of(c: dict[str, Any]) -> float:  # the layer, offset by source and read position
        k = _SOURCES.index(c["source"]) * len(positions) + positions.index(c["position"])
        return float(c["layer"] - 0.4 + (k + 0.5) * width)

    with paper_style():
        fig, ax = new_ax(ax, figsize=(6.5, 3.4))
        for s, source in enumerate(_SOURCES):
            mine = [c for c in rows if c["source"] == source]
            for c in mine:
                x = x_of(c)
                lo, hi = c["decision_shift_ci"]
                face = PALETTE[s] if c.get("passes", True) else "white"
                ax.errorbar(
                    x,
                    c["decision_shift"],
                    yerr=[[c["decision_shift"] - lo], [hi - c["decision_shift"]]],
                    fmt="o",
                    color=PALETTE[s],
                    mfc=face,
                    ms=4,
                    lw=1,
                )
                if chosen is not None and all(
                    chosen[key] == c[key] for key in ("source", "layer", "position")
                ):
                    ax.plot(x, hi, marker="*", color=PALETTE[3], ms=12, zorder=5, label="chosen")
            for c in (c for c in unscored if c["source"] == source):
                ax.plot(x_of(c), floor, "x", color=PALETTE[s], ms=4, lw=1)
            if any(c["source"] == source for c in candidates):
                ax.plot([], [], "o", color=PALETTE[s], label=source.replace("_", " "))
        if unscored:
            ax.axhline(floor + 0.25, color="grey", lw=0.5, ls=":")
            ax.plot([], [], "x", color="grey", label=f"not scored: failed a filter first ({len(unscored)})")
        ax.axhline(0, color="grey", lw=0.8)
        ax.set_xlabel("layer (offset: read position)")
        ax.set_ylabel("decision log-odds shift (nats)")
        ax.set_title("candidate sites: first-token decision shift at the KL budget (hollow: fails a filter)")
        ax.legend(loc="best")
    return fig, ax


def save_selection_figure(selection: Any, stem: "str | Path") -> tuple[Path, Path]:
    """:func:`plot_selection` saved as ``stem.pdf`` and ``stem.png``."""
    fig, _ = plot_selection(selection)
    paths = save_figure(fig, stem)
    plt.close(fig)
    return paths
