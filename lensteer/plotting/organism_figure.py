"""Organisms against their base, side by side: the trait rate per threat model with Wilson intervals.

Draws the ``measure.json`` files ``lensteer organism`` writes: one panel per threat model, one row for
the base model and one per organism (e.g. a narrow bad-advice fine-tune beside its good-advice control,
and their second training seeds), so that a shift any fine-tune causes is told from one that only the
misaligned data causes.
"""

from collections.abc import Mapping
from typing import Any

import matplotlib.pyplot as plt

from lensteer.errors import DataError
from lensteer.plotting.study_rows import trait_label
from lensteer.plotting.style import PALETTE, paper_style


def plot_organisms(measures: Mapping[str, Mapping[str, Any]]) -> tuple[Any, Any]:
    """Draw ``{organism name: measure.json content}``. The base row comes from the first organism's
    measurement (every organism of one base is measured against the same base answers).
    Returns ``(fig, axes)``.

    Raises:
        DataError: No measurement, or organisms that measured different threat models or prompts.
    """
    if not measures:
        raise DataError("no organism measurement to draw; pass {name: measure.json content}")
    shifts = {name: {s["threat_model"]: s for s in m["shifts"]} for name, m in measures.items()}
    threat_models = list(next(iter(shifts.values())))
    for name, by_tm in shifts.items():
        if list(by_tm) != threat_models:
            raise DataError(
                f"{name} measured {list(by_tm)}, the first organism {threat_models}: draw like with like"
            )
    names = list(measures)
    with paper_style():
        fig, axes = plt.subplots(
            1,
            len(threat_models),
            figsize=(3.2 * len(threat_models), 0.9 + 0.35 * len(names)),
            squeeze=False,
            sharey=True,
        )
        for ax, tm in zip(axes[0], threat_models, strict=True):
            first = shifts[names[0]][tm]
            rows = [("base", first["trait_base"], first["trait_base_ci"], "#000000")]
            rows += [
                (
                    name,
                    shifts[name][tm]["trait_organism"],
                    shifts[name][tm]["trait_organism_ci"],
                    PALETTE[i % len(PALETTE)],
                )
                for i, name in enumerate(names)
            ]
            for y, (_, rate, (lo, hi), colour) in enumerate(rows):
                ax.plot([lo, hi], [y, y], color=colour, lw=1.2)
                ax.plot([rate], [y], "o", color=colour, ms=5)
            ax.set_yticks(range(len(rows)), [r[0] for r in rows])
            ax.set_ylim(len(rows) - 0.5, -0.5)
            ax.set_xlim(0, 1)
            ax.set_xlabel(trait_label(tm))
            ax.set_title(f"{tm} (n = {first['n']})")
        fig.suptitle(
            "Base model and fine-tuned organisms on held-out prompts (95% Wilson intervals)", fontsize=9
        )
        fig.tight_layout()
    return fig, axes
