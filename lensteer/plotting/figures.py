"""Figures from locate's result objects: probing curves, direction cosines, patching heatmaps.

Every plotting function takes a result object (and optionally an ``ax``) and returns ``(fig, ax)``;
none calls ``plt.show()``. Save with :func:`lensteer.plotting.save_figure` (PDF + PNG, atomic).
"""

from typing import Any

from lensteer.plotting.style import PALETTE, new_ax, paper_style


def plot_probing(report: Any, ax: Any = None) -> tuple[Any, Any]:
    """Held-out probe accuracy and AUROC (and difference-of-means AUROC) by layer, with 95% CIs."""
    series = (
        ("probe_accuracy", "probe accuracy"),
        ("probe_auroc", "probe AUROC"),
        ("dom_auroc", "diff-of-means AUROC"),
        ("pca_auroc", "PCA AUROC"),
    )
    with paper_style():
        fig, ax = new_ax(ax)
        for colour, (name, label) in zip(PALETTE, series, strict=False):
            values = report.metrics[name]
            lo, hi = zip(*report.ci[name], strict=True)
            ax.plot(report.layers, values, marker="o", ms=2.5, lw=1.2, color=colour, label=label)
            ax.fill_between(report.layers, lo, hi, color=colour, alpha=0.15, lw=0)
        ax.axhline(0.5, color="0.4", lw=0.8, ls=":", label="chance")
        ax.set_xlabel("layer")
        ax.set_ylabel("held-out score (fraction)")
        ax.set_ylim(0.35, 1.02)
        ax.set_title(f"{report.dataset}: {report.contrast} contrast, {report.site}/{report.position}")
        # below the axes: inside, it covered the lowest curve
        ax.legend(
            loc="upper center",
            bbox_to_anchor=(0.5, -0.16),
            frameon=False,
            ncol=5,
            columnspacing=1.2,
            handlelength=1.5,
        )
    return fig, ax


def plot_direction_cosines(report: Any, method: str = "diff_of_means", ax: Any = None) -> tuple[Any, Any]:
    """Cosine similarity of one method's directions between layers (a layer x layer heatmap)."""
    cos = report.cosine_across_layers(method).numpy()
    with paper_style():
        fig, ax = new_ax(ax, figsize=(4.2, 3.6))
        image = ax.imshow(cos, cmap="RdBu_r", vmin=-1, vmax=1, origin="lower")
        ticks = list(range(0, len(report.layers), max(1, len(report.layers) // 10)))
        ax.set_xticks(ticks, [str(report.layers[t]) for t in ticks])
        ax.set_yticks(ticks, [str(report.layers[t]) for t in ticks])
        ax.set_xlabel("layer")
        ax.set_ylabel("layer")
        ax.grid(False)
        fig.colorbar(image, ax=ax, label="cosine similarity", pad=0.04)
        # two lines: on one, the title ran into the colour bar's label
        ax.set_title(f"{report.dataset}: {method.replace('_', ' ')} directions\nacross layers", loc="center")
    return fig, ax


def plot_method_cosines(report: Any, ax: Any = None) -> tuple[Any, Any]:
    """Cosine similarity between the methods' directions at every layer (one line per method pair)."""
    methods = list(report.directions)
    with paper_style():
        fig, ax = new_ax(ax)
        colours = iter(PALETTE)
        for a in range(len(methods)):
            for b in range(a + 1, len(methods)):
                cos = [
                    float(report.directions[methods[a]][i].unit @ report.directions[methods[b]][i].unit)
                    for i in range(len(report.layers))
                ]
                ax.plot(
                    report.layers,
                    cos,
                    marker="o",
                    ms=2.5,
                    color=next(colours),
                    label=f"{methods[a]} vs {methods[b]}".replace("_", " "),
                )
        ax.set_xlabel("layer")
        ax.set_ylabel("cosine similarity")
        ax.set_ylim(-1.05, 1.05)
        ax.legend(frameon=False, loc="lower right")
        ax.set_title(f"{report.dataset}: agreement between direction methods")
    return fig, ax


def plot_patching(result: Any, ax: Any = None, *, normalized: bool = True) -> tuple[Any, Any]:
    """Heatmap of a :class:`~lensteer.locate.PatchResult`: layers down, positions (with tokens) or heads across."""
    values = (result.normalized() if normalized else result.mean()).numpy()
    n_layers, n_cols = values.shape
    width = min(11.0, 2.0 + 0.28 * n_cols) if result.kind == "position" else 4.5
    with paper_style():
        fig, ax = new_ax(ax, figsize=(width, 1.2 + 0.16 * n_layers))
        limit = max(1e-6, float(abs(values).max()))
        image = ax.imshow(
            values,
            cmap="RdBu_r",
            vmin=-limit,
            vmax=limit,
            aspect="auto",
            origin="lower",
            interpolation="nearest",
        )
        ax.set_yticks(range(n_layers), [str(la) for la in result.layers])
        labels = [lab.split(":", 1)[-1] for lab in result.col_labels]
        ax.set_xticks(range(n_cols), labels, rotation=90 if result.kind == "position" else 0, fontsize=6)
        ax.set_ylabel("layer")
        ax.set_xlabel(
            {"position": "position (source prompt token)", "head": "head", "layer": ""}[result.kind]
        )
        ax.grid(False)
        unit = "normalised effect (0 = target, 1 = source)" if normalized else "metric (logit difference)"
        fig.colorbar(image, ax=ax, label=unit, fraction=0.03 if result.kind == "position" else 0.08)
        ax.set_title(f"{result.method} {result.direction} patching of {result.site}")
    return fig, ax


def plot_attribution_vs_exact(attribution: Any, exact: Any, ax: Any = None) -> tuple[Any, Any]:
    """Scatter of attribution-patching estimates against exact patching, cell by cell."""
    x, y = exact.normalized().flatten().numpy(), attribution.normalized().flatten().numpy()
    with paper_style():
        fig, ax = new_ax(ax, figsize=(3.6, 3.4))
        ax.scatter(x, y, s=6, alpha=0.6, color=PALETTE[0], lw=0)
        lo, hi = float(min(x.min(), y.min())), float(max(x.max(), y.max()))
        ax.plot([lo, hi], [lo, hi], color="0.4", lw=0.8, ls=":", label="y = x")
        ax.set_xlabel("exact patching (normalised effect)")
        ax.set_ylabel("attribution patching (normalised effect)")
        what = "heads" if attribution.kind == "head" else attribution.site
        ax.set_title(f"attribution vs exact ({what}), r = {attribution.correlation(exact):.2f}")
        ax.legend(frameon=False, loc="upper left")
    return fig, ax


# -- study figures (from the rows of ``results.json`` and ``examples.json``; no model needed) --------


# One colour and marker per condition, the same in every study figure.


# metric -> (y label, title)
