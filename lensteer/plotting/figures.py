"""Paper figures in one style: colour-blind-safe palette, labelled axes with units, PDF + PNG.

Every plotting function takes a result object (and optionally an ``ax``) and returns ``(fig, ax)``;
none calls ``plt.show()``. Wrap figure code in ``paper_style()`` and save with ``save_figure``.
"""

import functools
import json
import logging
import math
import textwrap
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
from cycler import cycler

from lensteer.core.io import atomic_path
from lensteer.errors import ConfigError, DataError

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
            fig.savefig(tmp, format=suffix[1:], bbox_inches="tight",
                        metadata={"CreationDate": None} if suffix == ".pdf" else None)
        paths.append(target)
    return paths[0], paths[1]


def _new_ax(ax: Any, figsize: tuple[float, float] | None = None) -> tuple[Any, Any]:
    if ax is not None:
        return ax.figure, ax
    return plt.subplots(figsize=figsize)


def plot_probing(report: Any, ax: Any = None) -> tuple[Any, Any]:
    """Held-out probe accuracy and AUROC (and difference-of-means AUROC) by layer, with 95% CIs."""
    series = (("probe_accuracy", "probe accuracy"), ("probe_auroc", "probe AUROC"),
              ("dom_auroc", "diff-of-means AUROC"), ("pca_auroc", "PCA AUROC"))
    with paper_style():
        fig, ax = _new_ax(ax)
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
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.16), frameon=False, ncol=5, columnspacing=1.2,
                  handlelength=1.5)
    return fig, ax


def plot_direction_cosines(report: Any, method: str = "diff_of_means", ax: Any = None) -> tuple[Any, Any]:
    """Cosine similarity of one method's directions between layers (a layer x layer heatmap)."""
    cos = report.cosine_across_layers(method).numpy()
    with paper_style():
        fig, ax = _new_ax(ax, figsize=(4.2, 3.6))
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
        fig, ax = _new_ax(ax)
        colours = iter(PALETTE)
        for a in range(len(methods)):
            for b in range(a + 1, len(methods)):
                cos = [float(report.directions[methods[a]][i].unit @ report.directions[methods[b]][i].unit)
                       for i in range(len(report.layers))]
                ax.plot(report.layers, cos, marker="o", ms=2.5, color=next(colours),
                        label=f"{methods[a]} vs {methods[b]}".replace("_", " "))
        ax.set_xlabel("layer")
        ax.set_ylabel("cosine similarity")
        ax.set_ylim(-1.05, 1.05)
        ax.legend(frameon=False, loc="lower right")
        ax.set_title(f"{report.dataset}: agreement between direction methods")
    return fig, ax


def plot_patching(result: Any, ax: Any = None, *, normalized: bool = True) -> tuple[Any, Any]:
    """Heatmap of a :class:`~lensteer.PatchResult`: layers down, positions (with tokens) or heads across."""
    values = (result.normalized() if normalized else result.mean()).numpy()
    n_layers, n_cols = values.shape
    width = min(11.0, 2.0 + 0.28 * n_cols) if result.kind == "position" else 4.5
    with paper_style():
        fig, ax = _new_ax(ax, figsize=(width, 1.2 + 0.16 * n_layers))
        limit = max(1e-6, float(abs(values).max()))
        image = ax.imshow(values, cmap="RdBu_r", vmin=-limit, vmax=limit, aspect="auto", origin="lower",
                          interpolation="nearest")
        ax.set_yticks(range(n_layers), [str(la) for la in result.layers])
        labels = [lab.split(":", 1)[-1] for lab in result.col_labels]
        ax.set_xticks(range(n_cols), labels, rotation=90 if result.kind == "position" else 0, fontsize=6)
        ax.set_ylabel("layer")
        ax.set_xlabel({"position": "position (source prompt token)", "head": "head", "layer": ""}[result.kind])
        ax.grid(False)
        unit = "normalised effect (0 = target, 1 = source)" if normalized else "metric (logit difference)"
        fig.colorbar(image, ax=ax, label=unit, fraction=0.03 if result.kind == "position" else 0.08)
        ax.set_title(f"{result.method} {result.direction} patching of {result.site}")
    return fig, ax


def plot_attribution_vs_exact(attribution: Any, exact: Any, ax: Any = None) -> tuple[Any, Any]:
    """Scatter of attribution-patching estimates against exact patching, cell by cell."""
    x, y = exact.normalized().flatten().numpy(), attribution.normalized().flatten().numpy()
    with paper_style():
        fig, ax = _new_ax(ax, figsize=(3.6, 3.4))
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

_log = logging.getLogger("lensteer.plotting.figures")

# One colour and marker per condition, the same in every study figure.
_METHOD_STYLE: dict[str, tuple[str, str]] = {
    "SwFC": (PALETTE[0], "o"), "StTP": (PALETTE[1], "s"), "StMP": (PALETTE[2], "D"), "add": (PALETTE[3], "^"),
    "ablate": (PALETTE[4], "v"), "ace": (PALETTE[5], "P"), "angular": (PALETTE[6], "X"),
}
_BASELINE_STYLE = ("#000000", "*")
_RANDOM_STYLE = ("0.55", "x")
_TRAIT_LABEL = {"refusal": "refusal rate on harmful requests", "compassion": "compassionate-reply rate",
                "honesty": "honest-answer rate"}
_CONTROLS = ("baseline", "random")


def _style_of(method: str) -> tuple[str, str]:
    if method == "baseline":
        return _BASELINE_STYLE
    if method == "random":
        return _RANDOM_STYLE
    if method in _METHOD_STYLE:
        return _METHOD_STYLE[method]
    return PALETTE[len(method) % len(PALETTE)], "o"


def _label_of(method: str) -> str:
    return {"baseline": "unsteered", "random": "random direction"}.get(method, method)


def _number(value: Any) -> float | None:
    """A finite float, or ``None`` for a missing / null / NaN value."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def threat_models_of(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """The threat models in ``rows``, in order of first appearance."""
    return list(dict.fromkeys(str(r["threat_model"]) for r in rows))


def methods_of(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """The steering methods in ``rows`` (not the baseline or the random control), in order of first appearance."""
    return [m for m in dict.fromkeys(str(r["method"]) for r in rows) if m not in _CONTROLS]


def _matched_budget(rows: Sequence[Mapping[str, Any]], kl_budget: float | None) -> float | None:
    if kl_budget is not None:
        return kl_budget
    return next((float(r["kl_budget"]) for r in rows if r["method"] not in _CONTROLS
                 and _number(r.get("kl_budget")) is not None), None)


def _rows_for(rows: Sequence[Mapping[str, Any]], threat_model: str | None) -> list[Mapping[str, Any]]:
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


def _tradeoff_points(group: Sequence[Mapping[str, Any]], what: str) -> tuple[list[float], ...]:
    """KL, trait and the trait's CI half-widths (below, above) of one method's rows, in budget order."""
    xs: list[float] = []
    ys: list[float] = []
    lo: list[float] = []
    hi: list[float] = []
    for r in sorted(group, key=lambda r: _number(r.get("kl_budget")) or 0.0):
        x, y = _number(r.get("kl")), _number(r.get("trait"))
        if x is None or y is None:
            _log.warning("tradeoff %s at KL budget %s has no kl/trait; not drawn", what, r.get("kl_budget"))
            continue
        ci = r.get("trait_ci")
        low, high = (_number(ci[0]), _number(ci[1])) if isinstance(ci, list) and len(ci) == 2 else (None, None)
        xs.append(x)
        ys.append(y)
        lo.append(max(0.0, y - low) if low is not None else 0.0)
        hi.append(max(0.0, high - y) if high is not None else 0.0)
    return xs, ys, lo, hi


def plot_tradeoff(rows: Sequence[Mapping[str, Any]], threat_model: str, ax: Any = None, *,
                  legend: bool = True) -> tuple[Any, Any]:
    """Alignment vs coherence: trait rate (95% CI) against KL to the unsteered model, per method.

    Each method's points (one per KL budget) are joined in budget order; the unsteered baseline
    (a star at KL 0) and the random-direction control (a cross) are marked; the dashed step line is
    the Pareto front over every plotted point (maximum trait rate, minimum KL).
    """
    mine = _rows_for(rows, threat_model)
    points: list[tuple[float, float]] = []
    with paper_style():
        fig, ax = _new_ax(ax)
        groups = [(m, [r for r in mine if r["method"] == m]) for m in dict.fromkeys(str(r["method"]) for r in mine)]
        for method, group in groups:
            xs, ys, lo, hi = _tradeoff_points(group, f"{threat_model} {method}")
            if not xs:
                continue
            colour, marker = _style_of(method)
            size = 11 if method == "baseline" else 6
            ax.errorbar(xs, ys, yerr=[lo, hi], color=colour, marker=marker, ms=size, mfc="none" if method in
                        ("StTP", "StMP") else colour, mew=1.2, lw=1.2, capsize=2.5, elinewidth=0.8,
                        ls="-" if len(xs) > 1 else "none", label=_label_of(method), zorder=3, alpha=0.9)
            points += list(zip(xs, ys, strict=True))
        if points:
            # the attainable region's edge: a step up at each front point, flat out to the largest KL drawn
            front = pareto_front(points)
            fx = [front[0][0]] + [x for x, _ in front[1:] for _ in (0, 1)] + [max(x for x, _ in points)]
            fy = [y for _, y in front for _ in (0, 1)]
            ax.plot(fx, fy, color="0.35", lw=1.0, ls="--", zorder=2, label="Pareto front")
        ax.set_xlabel("KL to the unsteered model (nats/token)")
        ax.set_ylabel(f"{_TRAIT_LABEL.get(threat_model, 'aligned-trait rate')} (fraction)")
        ax.set_ylim(-0.05, 1.05)
        ax.set_xlim(left=-0.02 * max([x for x, _ in points] + [1.0]))
        ax.set_title(f"{threat_model}: alignment vs coherence")
        if legend:
            handles, labels = _ordered_legend([ax])
            ax.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, -0.18), frameon=False, ncol=4,
                      handlelength=1.8)
    return fig, ax


def plot_tradeoff_grid(rows: Sequence[Mapping[str, Any]]) -> tuple[Any, Any]:
    """:func:`plot_tradeoff` for every threat model in ``rows``, side by side, with one shared legend."""
    names = threat_models_of(rows)
    if not names:
        raise DataError("no rows to plot")
    with paper_style():
        fig, axes = plt.subplots(1, len(names), figsize=(3.4 * len(names), 3.3), squeeze=False)
        for ax, name in zip(axes[0], names, strict=True):
            plot_tradeoff(rows, name, ax=ax, legend=False)
        _shared_legend(fig, axes[0])
    return fig, axes[0]


def _ordered_legend(axes: Any) -> tuple[list[Any], list[str]]:
    """Every distinct legend entry of ``axes``: the unsteered baseline first, the Pareto front last."""
    seen: dict[str, Any] = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            seen.setdefault(label, handle)
    order = sorted(seen, key=lambda label: {"unsteered": 0, "Pareto front": 2}.get(label, 1))
    return [seen[label] for label in order], order


def _shared_legend(fig: Any, axes: Any) -> None:
    """One legend below the panels with every distinct label of any panel."""
    handles, labels = _ordered_legend(axes)
    fig.tight_layout()
    fig.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, 0.0), frameon=False,
               ncol=min(len(labels), 6), handlelength=1.8)


# metric -> (y label, title)
_TURN_METRICS = {
    "repetition_by_turn": ("rep-4 within the reply (fraction)", "repetition within each reply"),
    "rep4_history_by_turn": ("4-grams repeated from earlier turns (fraction)", "repeating earlier turns"),
}


def plot_repetition_by_turn(rows: Sequence[Mapping[str, Any]], threat_model: str | None = None, ax: Any = None, *,
                            kl_budget: float | None = None, metric: str = "repetition_by_turn") -> tuple[Any, Any]:
    """Repetition per turn of the multi-turn conversations, one line per method, the baseline and the control.

    Args:
        rows: The study's rows.
        threat_model: One panel for this threat model; ``None``: one panel per threat model
            (``ax`` must then be ``None``; the second value returned is the array of axes).
        ax: Axes to draw into (single threat model only).
        kl_budget: Which KL budget's rows to draw (default: the first one in ``rows``).
        metric: ``"repetition_by_turn"`` (rep-4 of each reply) or ``"rep4_history_by_turn"``
            (share of a reply's 4-grams already said earlier in the conversation).
    """
    if metric not in _TURN_METRICS:
        raise ConfigError(f"metric must be one of {list(_TURN_METRICS)}, got {metric!r}")
    budget = _matched_budget(rows, kl_budget)
    if threat_model is None:
        if ax is not None:
            raise ConfigError("pass ax only with a threat_model (threat_model=None draws one panel per threat model)")
        names = threat_models_of(rows)
        with paper_style():
            fig, axes = plt.subplots(1, len(names), figsize=(3.2 * len(names), 3.0), squeeze=False, sharey=True)
            for a, name in zip(axes[0], names, strict=True):
                plot_repetition_by_turn(rows, name, ax=a, kl_budget=budget, metric=metric)
                a.get_legend().remove()
                a.set_title(name)  # the metric and budget go once, in the figure title
            for a in axes[0][1:]:
                a.set_ylabel("")
            what = _TURN_METRICS[metric][1]
            fig.suptitle(f"{what[0].upper()}{what[1:]} over multi-turn conversations"
                         + ("" if budget is None else f" (KL budget {budget:g} nats/token)"), fontsize=10)
            _shared_legend(fig, axes[0])
        return fig, axes[0]
    mine = [r for r in _rows_for(rows, threat_model)
            if r["method"] in _CONTROLS or _number(r.get("kl_budget")) == budget]
    with paper_style():
        fig, ax = _new_ax(ax)
        drawn = 0
        for r in mine:
            series = r.get(metric)
            if not isinstance(series, list) or not series:
                continue
            ys = [_number(v) for v in series]
            colour, marker = _style_of(str(r["method"]))
            ax.plot(range(1, len(ys) + 1), [math.nan if v is None else v for v in ys], color=colour, marker=marker,
                    ms=5, lw=1.2, mfc="none" if r["method"] in ("StTP", "StMP") else colour,
                    ls=":" if r["method"] == "random" else "-", label=_label_of(str(r["method"])), alpha=0.9,
                    zorder=4 if r["method"] == "baseline" else 3)
            drawn = max(drawn, len(ys))
        if drawn == 0:
            raise DataError(f"no row of {threat_model!r} has {metric!r} (the study ran without conversations)")
        ax.set_xticks(range(1, drawn + 1))
        ax.set_xlabel("turn of the conversation")
        ax.set_ylabel(_TURN_METRICS[metric][0])
        ax.set_ylim(bottom=-0.02, top=max(0.1, ax.get_ylim()[1]))
        title = f"{threat_model}: {_TURN_METRICS[metric][1]}"
        ax.set_title(title if budget is None else f"{title} (KL {budget:g})")
        handles, labels = _ordered_legend([ax])
        ax.legend(handles, labels, frameon=False, fontsize=7)
    return fig, ax


def plot_steered_share(rows: Sequence[Mapping[str, Any]], ax: Any = None, *,
                       kl_budget: float | None = None) -> tuple[Any, Any]:
    """Share of generated tokens chosen where steering fired, per method and threat model.

    Solid bars: answers to the misaligned evaluation prompts; hatched bars (when the rows have
    ``harmless_steered_share``): answers to harmless prompts, where a selective method or a gate
    should steer less.
    """
    budget = _matched_budget(rows, kl_budget)
    names, methods = threat_models_of(rows), methods_of(rows) + (["random"] if any(
        r["method"] == "random" for r in rows) else [])
    cells = {(str(r["threat_model"]), str(r["method"])): r for r in rows
             if (r["method"] not in _CONTROLS and _number(r.get("kl_budget")) == budget) or r["method"] == "random"}
    if not any(_number(r.get("steered_share")) is not None for r in cells.values()):
        raise DataError("no steered row has 'steered_share'")
    harmless = any(_number(r.get("harmless_steered_share")) is not None for r in cells.values())
    per_method = 2 if harmless else 1
    width = 0.8 / (len(methods) * per_method)
    with paper_style():
        fig, ax = _new_ax(ax, figsize=(max(4.0, 1.6 + 1.5 * len(names)), 3.0))
        for j, method in enumerate(methods):
            colour, _ = _style_of(method)
            for k, (field_name, hatch, suffix) in enumerate((("steered_share", None, "misaligned prompts"),
                                                             ("harmless_steered_share", "///", "harmless prompts"))):
                if k >= per_method:
                    break
                xs = [i - 0.4 + width * (j * per_method + k + 0.5) for i in range(len(names))]
                ys = [_number(cells.get((n, method), {}).get(field_name)) for n in names]
                ax.bar([x for x, y in zip(xs, ys, strict=True) if y is not None], [y for y in ys if y is not None],
                       width=width * 0.92, color="white" if hatch else colour, edgecolor=colour, hatch=hatch, lw=1.0,
                       label=f"{_label_of(method)}, {suffix}")
        ax.set_xticks(range(len(names)), names)
        ax.set_xlabel("threat model")
        ax.set_ylabel("generated tokens steered (fraction)")
        ax.set_ylim(0, 1.05)
        ax.grid(axis="x", visible=False)
        title = "Share of generated tokens where steering fired"
        ax.set_title(title if budget is None else f"{title} (KL {budget:g})")
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False, fontsize=7)
    return fig, ax


@functools.lru_cache(maxsize=1)
def _font_has() -> Callable[[str], bool]:
    from matplotlib import font_manager
    from matplotlib.ft2font import FT2Font

    font = FT2Font(font_manager.findfont(font_manager.FontProperties()))
    return lambda ch: ch in "\t " or font.get_char_index(ord(ch)) != 0


def _printable(text: str, max_chars: int) -> str:
    """One paragraph, at most ``max_chars`` characters, only glyphs the figure font has."""
    has = _font_has()
    flat = " ".join(text.split())
    flat = "".join(ch if has(ch) else "?" for ch in flat) or "(empty)"
    return flat if len(flat) <= max_chars else flat[: max_chars - 1].rstrip() + "…"


def _condition_label(condition: str) -> str:
    if condition == "baseline":
        return "unsteered"
    if condition == "random":
        return "random direction (control)"
    method, _, budget = condition.partition("@")
    return f"{method} (KL {budget})" if budget else method


def plot_examples(examples: Mapping[str, Any], threat_model: str, conditions: Sequence[str] | None = None, *,
                  n_prompts: int = 3, max_chars: int = 240, wrap: int = 34) -> tuple[Any, Any]:
    """Unsteered vs steered answers to the same prompts, as a table drawn in a figure.

    Args:
        examples: ``examples.json`` of a study: ``{threat_model: {condition: {"prompts", "texts", ...}}}``.
        threat_model: Which threat model's examples.
        conditions: Columns after the prompt, e.g. ``("baseline", "SwFC@0.3")`` (default: the
            baseline and up to three steered conditions at the first KL budget).
        n_prompts: Rows (prompts), 1 to 8.
        max_chars: Answers are cut to this many characters (marked with an ellipsis).
        wrap: Characters per line of a cell.
    """
    if threat_model not in examples:
        raise DataError(f"no examples for threat model {threat_model!r}; have {list(examples)}")
    table = examples[threat_model]
    if conditions is None:
        steered = [c for c in table if c not in _CONTROLS]
        first = steered[0].partition("@")[2] if steered else ""
        conditions = ["baseline", *[c for c in steered if c.partition("@")[2] == first][:3]]
    conditions = list(conditions)
    missing = [c for c in conditions if c not in table]
    if not conditions or missing:
        raise DataError(f"{threat_model}: conditions {missing or conditions} not in the examples; have {list(table)}")
    if not 1 <= n_prompts <= 8:
        raise ConfigError(f"n_prompts must be in 1..8, got {n_prompts}")
    prompts = list(table[conditions[0]]["prompts"])[:n_prompts]
    header = ["prompt", *[_condition_label(c) for c in conditions]]
    body = [[p, *[(table[c]["texts"][i] if i < len(table[c]["texts"]) else "") for c in conditions]]
            for i, p in enumerate(prompts)]
    cells = [[textwrap.wrap(_printable(text, max_chars), wrap) or [""] for text in row] for row in body]
    heights = [max(len(c) for c in row) + 1 for row in cells]
    n_lines = 2 + sum(heights)
    line = 0.135  # inches per text line at 7.5 pt, line spacing 1.25
    with paper_style():
        fig = plt.figure(figsize=((0.062 * wrap + 0.2) * len(header), line * n_lines + 0.35))
        ax = fig.add_axes((0.0, 0.0, 1.0, 1.0))
        ax.set_axis_off()
        ax.set_xlim(0, len(header))
        ax.set_ylim(n_lines, -0.6)
        for j, title in enumerate(header):
            ax.text(j + 0.03, 0.5, title, fontsize=8, fontweight="bold", va="center", ha="left", parse_math=False,
                    color=_style_of(conditions[j - 1].partition("@")[0])[0] if j else "black")
        ax.axhline(1.2, color="0.2", lw=0.8)
        y = 1.6
        for row, height in zip(cells, heights, strict=True):
            for j, cell in enumerate(row):
                ax.text(j + 0.03, y, "\n".join(cell), fontsize=7.5, va="top", ha="left", linespacing=1.25,
                        parse_math=False, style="italic" if j == 0 else "normal")
            y += height
            ax.axhline(y - 0.55, color="0.8", lw=0.5)
        ax.set_title(f"{threat_model}: unsteered vs steered answers (first {len(prompts)} evaluation prompts)",
                     fontsize=9, loc="left", pad=4)
    return fig, ax


def plot_steerability(report: Mapping[str, Any], ax: Any = None) -> tuple[Any, Any]:
    """Steering effect by layer at the study's KL budget, per threat model, the chosen layer circled.

    Reads ``report["threat_models"][tm]["steerability"]`` (:meth:`lensteer.Steerability.to_dict`)
    and ``...["layer"]`` from a ``lensteer run`` report.
    """
    entries = {tm: e for tm, e in report.get("threat_models", {}).items() if e.get("steerability")}
    if not entries:
        raise DataError("the report has no steerability (the layer was set in the config, or one candidate)")
    with paper_style():
        fig, ax = _new_ax(ax, figsize=(4.6, 3.0))
        budget = None
        for colour, (tm, entry) in zip(PALETTE, entries.items(), strict=False):
            st = entry["steerability"]
            layers = [int(k) for k in st["effect"]]
            effects = [float(v) for v in st["effect"].values()]
            ax.plot(layers, effects, marker="o", ms=3, lw=1.2, color=colour, label=tm)
            chosen = entry.get("layer")
            if chosen is not None and str(chosen) in st["effect"]:
                ax.plot([chosen], [st["effect"][str(chosen)]], marker="o", ms=9, mfc="none", mec=colour, mew=1.3)
            budget = st.get("kl_budget", budget)
        ax.axhline(0.0, color="0.4", lw=0.8, ls=":")
        ax.set_xlabel("layer")
        ax.set_ylabel("shift of aligned-vs-misaligned\nlog-odds (nats/token)")
        ax.set_title(f"steerability at KL {budget:g} nats/token (circled: chosen layer)" if budget is not None
                     else "steerability (circled: chosen layer)")
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.18), frameon=False, ncol=len(entries))
    return fig, ax


def plot_layer_sweep(rows: Sequence[Mapping[str, Any]], *, kl_budget: float | None = None) -> tuple[Any, Any]:
    """Trait rate (95% CI) by steering layer, per method, one panel per threat model, for the rows of
    a layer sweep (``lensteer run --layers ...``) at one KL budget; the unsteered rate as a line."""
    steered = [r for r in rows if r["method"] not in _CONTROLS and (kl_budget is None or r["kl_budget"] == kl_budget)]
    tms = [tm for tm in threat_models_of(rows)
           if len({r["layer"] for r in steered if r["threat_model"] == tm}) > 1]
    if not tms:
        raise DataError("no threat model has steered rows at more than one layer (run with --layers to sweep)")
    with paper_style():
        fig, axes = plt.subplots(1, len(tms), figsize=(3.4 * len(tms), 3.0), squeeze=False)
        for ax, tm in zip(axes[0], tms, strict=True):
            mine = [r for r in steered if r["threat_model"] == tm]
            for method in dict.fromkeys(r["method"] for r in mine):
                pts = sorted((r["layer"], r["trait"], r.get("trait_ci") or [r["trait"]] * 2) for r in mine
                             if r["method"] == method)
                colour, marker = _METHOD_STYLE.get(method, (PALETTE[7], "o"))
                x, y = [p[0] for p in pts], [p[1] for p in pts]
                err = [[p[1] - p[2][0] for p in pts], [p[2][1] - p[1] for p in pts]]
                ax.errorbar(x, y, yerr=err, color=colour, marker=marker, ms=4, lw=1.2, capsize=2, label=method)
            base = next((r for r in rows if r["threat_model"] == tm and r["method"] == "baseline"), None)
            if base is not None:
                ax.axhline(base["trait"], color=_BASELINE_STYLE[0], lw=0.9, ls="--", label="unsteered")
            ax.set_title(tm)
            ax.set_xlabel("steering layer")
            ax.set_ylabel(_TRAIT_LABEL.get(tm, "trait rate"))
            ax.set_ylim(-0.03, 1.03)
        axes[0][0].legend(frameon=False, fontsize=7)
    return fig, axes[0][0]


def _chosen_layer_rows(rows: Sequence[Mapping[str, Any]], report: Mapping[str, Any] | None) -> list[Any]:
    """The rows at each threat model's chosen layer (a layer sweep's other layers have their own figure)."""
    chosen = {tm: e.get("layer") for tm, e in (report or {}).get("threat_models", {}).items()}
    swept = {tm for tm in chosen if len({r.get("layer") for r in rows if r["threat_model"] == tm}) > 1}
    return [r for r in rows if r["threat_model"] not in swept or r.get("layer") == chosen[r["threat_model"]]]


def save_study_figures(results_dir: "str | Path", out_dir: "str | Path") -> list[Path]:
    """Write every study figure of a ``lensteer run`` results folder into ``out_dir`` (PDF + PNG).

    Reads ``results.json`` (required), ``report.json`` (for the matched KL budget, if present) and
    ``examples.json`` (if present). Writes ``tradeoff`` (all threat models), ``tradeoff_<tm>``,
    ``repetition_by_turn``, ``repetition_history_by_turn``, ``steered_share``, ``steerability`` (from the
    report), ``layer_sweep`` (if the study swept layers) and ``examples_<tm>``. The other figures show
    each threat model's chosen layer.
    A figure whose data the folder lacks is skipped with a warning on the ``lensteer.plotting.figures``
    logger that says why.

    Returns:
        The paths written, PDF and PNG of each figure.
    """
    folder, out = Path(results_dir), Path(out_dir)
    rows_path = folder / "results.json"
    try:
        rows = json.loads(rows_path.read_text())["rows"]
    except FileNotFoundError as err:
        raise DataError(f"{rows_path} does not exist; run `lensteer run --out {folder}` first") from err
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise DataError(f"{rows_path} is not a study table ({{'rows': [...]}}): {err!r}") from err
    if not isinstance(rows, list) or not rows:
        raise DataError(f"{rows_path} has no rows")
    budget, report = None, None
    if (folder / "report.json").exists():
        report = json.loads((folder / "report.json").read_text())
        budget = _number(report.get("matched_kl_budget"))
    swept = rows
    rows = _chosen_layer_rows(rows, report)
    written: list[Path] = []

    def save(stem: str, draw: Callable[[], tuple[Any, Any]]) -> None:
        try:
            fig, _ = draw()
        except (DataError, ConfigError) as err:
            _log.warning("skipped figure %s: %s", stem, err)
            return
        written.extend(save_figure(fig, out / stem))
        plt.close(fig)

    save("tradeoff", lambda: plot_tradeoff_grid(rows))
    if report is not None:
        save("steerability", lambda: plot_steerability(report))
    if len(swept) > len(rows):
        save("layer_sweep", lambda: plot_layer_sweep(swept, kl_budget=budget))
    for tm in threat_models_of(rows):
        save(f"tradeoff_{tm}", functools.partial(plot_tradeoff, rows, tm))
    save("repetition_by_turn", lambda: plot_repetition_by_turn(rows, kl_budget=budget))
    save("repetition_history_by_turn",
         lambda: plot_repetition_by_turn(rows, kl_budget=budget, metric="rep4_history_by_turn"))
    save("steered_share", lambda: plot_steered_share(rows, kl_budget=budget))
    examples_path = folder / "examples.json"
    if examples_path.exists():
        examples = json.loads(examples_path.read_text())
        for tm in examples:
            save(f"examples_{tm}", functools.partial(plot_examples, examples, tm))
    else:
        _log.warning("skipped the example figures: %s does not exist", examples_path)
    return written
