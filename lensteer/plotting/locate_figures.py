"""The figures of ``lensteer locate``: probing curves, cosine matrices, patching heatmaps, attribution scatters."""

from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt

from lensteer.plotting.figures import (
    plot_attribution_vs_exact,
    plot_direction_cosines,
    plot_method_cosines,
    plot_patching,
    plot_probing,
)
from lensteer.plotting.style import save_figure


def _save(fig: Any, stem: Path) -> list[Path]:
    paths = list(save_figure(fig, stem))
    plt.close(fig)
    return paths


def save_probing_figures(report: Any, folder: "str | Path") -> list[Path]:
    """Probing curves and cosine matrices of one :class:`~lensteer.locate.ProbingReport` (PDF + PNG each)."""
    folder = Path(folder)
    written: list[Path] = []
    for kind, fn in (("probing", plot_probing), ("cosines", plot_direction_cosines), ("methods", plot_method_cosines)):
        written += _save(fn(report)[0], folder / f"{kind}_{report.dataset}")
    return written


def save_site_search_figures(search: Any, folder: "str | Path") -> list[Path]:
    """Every figure of one :class:`~lensteer.study.site_search.SiteSearch`: probing, and patching when it ran."""
    folder = Path(folder)
    written = save_probing_figures(search.probing, folder)
    if search.patching is not None:
        name = search.name
        written += _save(plot_patching(search.patching)[0], folder / f"patching_resid_{name}")
        written += _save(plot_patching(search.heads)[0], folder / f"patching_heads_{name}")
        written += _save(plot_attribution_vs_exact(search.attribution, search.patching)[0],
                         folder / f"attribution_vs_exact_{name}")
        written += _save(plot_attribution_vs_exact(search.head_attribution, search.heads)[0],
                         folder / f"attribution_vs_exact_heads_{name}")
    return written
