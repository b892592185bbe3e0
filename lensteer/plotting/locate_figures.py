"""The figures of ``lensteer locate``: probing curves, cosine matrices, patching heatmaps, attribution scatters,
and the validation ROC curves of a prompt-gate search."""

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize

from lensteer.errors import DataError
from lensteer.plotting.figures import (
    plot_attribution_vs_exact,
    plot_direction_cosines,
    plot_method_cosines,
    plot_patching,
    plot_probing,
)
from lensteer.plotting.style import PALETTE, new_ax, paper_style, save_figure


def _save(fig: Any, stem: Path) -> list[Path]:
    paths = list(save_figure(fig, stem))
    plt.close(fig)
    return paths


def save_probing_figures(report: Any, folder: "str | Path") -> list[Path]:
    """Probing curves and cosine matrices of one :class:`~lensteer.locate.ProbingReport` (PDF + PNG each)."""
    folder = Path(folder)
    written: list[Path] = []
    for kind, fn in (
        ("probing", plot_probing),
        ("cosines", plot_direction_cosines),
        ("methods", plot_method_cosines),
    ):
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
        written += _save(
            plot_attribution_vs_exact(search.attribution, search.patching)[0],
            folder / f"attribution_vs_exact_{name}",
        )
        written += _save(
            plot_attribution_vs_exact(search.head_attribution, search.heads)[0],
            folder / f"attribution_vs_exact_heads_{name}",
        )
    return written


def plot_gate_roc(search: Any, ax: Any = None) -> tuple[Any, Any]:
    """Validation ROC curves of a :class:`~lensteer.steering.GateSearch`, one per candidate layer.

    The chosen layer is drawn bold, the false-positive budget as a dashed vertical line and the chosen
    operating point (its threshold's FPR and TPR) as a star; the legend gives each layer's AUROC
    (past eight layers the others are coloured by depth, with a colour bar instead of legend entries).
    """
    chosen_colour, others = PALETTE[3], [c for c in PALETTE if c != PALETTE[3]]
    layers = list(search.layers)
    by_depth = len(layers) > 8
    depth = ScalarMappable(norm=Normalize(min(layers), max(layers)), cmap="viridis")
    with paper_style():
        fig, ax = new_ax(ax, figsize=(4.2, 3.8))
        ax.plot([0, 1], [0, 1], color="0.6", lw=0.8, ls=":", label="chance")
        for i, layer in enumerate(layers):
            fpr, tpr = search.roc[layer]
            label = f"layer {layer} (AUROC {search.auroc[layer]:.2f})"
            if layer == search.layer:
                ax.plot(fpr, tpr, color=chosen_colour, lw=2.2, zorder=3, label=label + ", chosen")
            elif by_depth:
                ax.plot(fpr, tpr, color=depth.to_rgba(layer), lw=0.8, alpha=0.7)
            else:
                ax.plot(fpr, tpr, color=others[i % len(others)], lw=1.0, alpha=0.85, label=label)
        ax.axvline(
            search.target_fpr, color="0.25", lw=0.9, ls="--", label=f"FPR budget {search.target_fpr:g}"
        )
        ax.plot(
            [search.val_fpr],
            [search.val_tpr],
            ls="none",
            marker="*",
            ms=11,
            color=chosen_colour,
            markeredgecolor="black",
            markeredgewidth=0.6,
            zorder=4,
            clip_on=False,
            label=f"gate: TPR {search.val_tpr:.2f} at FPR {search.val_fpr:.2f}",
        )
        ax.set_xlim(-0.02, 1.02)
        ax.set_ylim(-0.02, 1.02)
        ax.set_xlabel(f"false-positive rate (fraction of {search.n_negative_val} validation negatives)")
        ax.set_ylabel(f"true-positive rate (fraction of {search.n_positive_val} positives)")
        ax.set_title(f"gate search: {search.gate.site}/{search.gate.position}, chosen layer {search.layer}")
        ax.legend(frameon=False, loc="lower right", fontsize=7)
        if by_depth:
            fig.colorbar(depth, ax=ax, label="layer (other candidates)", pad=0.03, fraction=0.05)
    return fig, ax


@dataclass(frozen=True)
class _GateSite:
    site: str
    position: str


@dataclass(frozen=True, kw_only=True)
class GateROC:
    """A gate search read back from ``report.json`` (``GateSearch.to_dict()``), enough to draw its ROC."""

    layer: int
    target_fpr: float
    val_fpr: float
    val_tpr: float
    n_positive_val: int
    n_negative_val: int
    roc: dict[int, tuple[list[float], list[float]]]
    auroc: dict[int, float]
    gate: _GateSite

    @property
    def layers(self) -> tuple[int, ...]:
        return tuple(self.roc)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "GateROC":
        try:
            rows = d["layers"]
            return cls(
                layer=int(d["layer"]),
                target_fpr=float(d["target_fpr"]),
                val_fpr=float(d["val_fpr"]),
                val_tpr=float(d["val_tpr"]),
                n_positive_val=int(d["n_positive_val"]),
                n_negative_val=int(d["n_negative_val"]),
                roc={int(r["layer"]): (list(r["roc_fpr"]), list(r["roc_tpr"])) for r in rows},
                auroc={int(r["layer"]): float(r["auroc"]) for r in rows},
                gate=_GateSite(
                    site=str(d.get("site", "resid_post")), position=str(d.get("position", "last"))
                ),
            )
        except (KeyError, TypeError, ValueError) as err:
            raise DataError(
                f"the report's gate entry is not a gate search (GateSearch.to_dict()): {err!r}"
            ) from err
