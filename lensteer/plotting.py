"""Paper figures in one style: colour-blind-safe palette, labelled axes with units, PDF + PNG.

Every plotting function takes a result object (and optionally an ``ax``) and returns ``(fig, ax)``;
none calls ``plt.show()``. Wrap figure code in ``paper_style()`` and save with ``save_figure``.
"""

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import matplotlib
import matplotlib.pyplot as plt

# Okabe & Ito (2008) colour-blind-safe palette.
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
    "axes.prop_cycle": matplotlib.cycler(color=PALETTE),
    "pdf.fonttype": 42,
    "ps.fonttype": 42,
}


@contextmanager
def paper_style() -> Iterator[None]:
    """Matplotlib rc settings of every lensteer figure."""
    with plt.rc_context(PAPER_RC):
        yield


def save_figure(fig: Any, stem: "str | Path") -> tuple[Path, Path]:
    """Save ``fig`` as ``stem.pdf`` and ``stem.png``, each written atomically. Returns both paths."""
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = []
    for suffix in (".pdf", ".png"):
        target = stem.with_suffix(suffix)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=suffix, dir=stem.parent)
        os.close(fd)
        fig.savefig(tmp, format=suffix[1:], metadata={"CreationDate": None} if suffix == ".pdf" else None)
        Path(tmp).replace(target)
        paths.append(target)
    return paths[0], paths[1]


def plot_separation(report: Any, ax: Any = None) -> tuple[Any, Any]:
    """Held-out accuracy and d' of a :class:`~lensteer.SeparationReport` by layer."""
    with paper_style():
        if ax is None:
            fig, ax = plt.subplots()
        else:
            fig = ax.figure
        ax.plot(report.layers, report.accuracy, marker="o", ms=3, color=PALETTE[0], label="held-out accuracy")
        ax.set_xlabel("layer")
        ax.set_ylabel("held-out accuracy (fraction)")
        ax.set_ylim(0.4, 1.02)
        twin = ax.twinx()
        twin.plot(report.layers, report.d_prime, marker="s", ms=3, color=PALETTE[1], label="d'")
        twin.set_ylabel("d' (pooled s.d.)")
        twin.grid(False)
        handles = ax.get_lines() + twin.get_lines()
        ax.legend(handles, [h.get_label() for h in handles], loc="lower right", frameon=False)
        ax.set_title(f"{report.dataset}: {report.contrast} contrast at {report.site}/{report.position}")
    return fig, ax
