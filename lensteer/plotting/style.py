"""The paper style: a colour-blind-safe palette, labelled axes with units, PDF + PNG written atomically.

Wrap figure code in paper_style() and save with save_figure(fig, stem).
"""

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
from cycler import cycler

from lensteer.core.io import atomic_path

PALETTE = ("#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442", "#000000")


PAPER_RC: dict[str, Any] = {
    "figure.figsize": (5.5, 3.4),
    "figure.dpi": 150,
    "savefig.dpi": 300,
    "savefig.bbox": "tight",
    "font.size": 9,
    "axes.titlesize": 10,
    "axes.labelsize": 9,
    "legend.fontsize": 8,
    "xtick.labelsize": 8,
    "ytick.labelsize": 8,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "axes.prop_cycle": cycler(color=PALETTE),
    "pdf.fonttype": 42,
    "ps.fonttype": 42,
}


@contextmanager
def paper_style() -> Iterator[None]:
    """Matplotlib rc settings of every lensteer figure."""
    with plt.rc_context(PAPER_RC):  # type: ignore[arg-type]
        yield


def save_figure(fig: Any, stem: "str | Path") -> tuple[Path, Path]:
    """Save ``fig`` as ``stem.pdf`` and ``stem.png``, each written atomically. Returns both paths."""
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = []
    for suffix in (".pdf", ".png"):
        target = stem.with_suffix(suffix)
        with atomic_path(target) as tmp:
            # bbox "tight" here too: rc settings do not reach a save made outside paper_style()
            fig.savefig(
                tmp,
                format=suffix[1:],
                bbox_inches="tight",
                metadata={"CreationDate": None} if suffix == ".pdf" else None,
            )
        paths.append(target)
    return paths[0], paths[1]


def new_ax(ax: Any, figsize: tuple[float, float] | None = None) -> tuple[Any, Any]:
    if ax is not None:
        return ax.figure, ax
    return plt.subplots(figsize=figsize)
