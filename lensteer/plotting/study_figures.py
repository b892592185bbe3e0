"""Figures from the study's files (results.json, report.json, examples.json): no model needed.

save_study_figures(results_dir, out_dir) redraws every study figure; each function also takes rows
or a report directly, for notebooks.
"""

import functools
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeAlias

import matplotlib.pyplot as plt

from lensteer.core.io import read_json
from lensteer.errors import ConfigError, DataError
from lensteer.plotting.examples import plot_examples
from lensteer.plotting.robustness_figure import plot_robustness
from lensteer.plotting.selection_figure import plot_selection
from lensteer.plotting.study_rows import (
    BASELINE_STYLE,
    METHOD_STYLE,
    PAPER_SUFFIX,
    as_number,
    as_rows,
    is_control,
    label_of,
    matched_budget,
    methods_of,
    pareto_front,
    rows_for,
    style_of,
    threat_models_of,
    trait_label,
)
from lensteer.plotting.style import PALETTE, new_ax, paper_style, save_figure
from lensteer.study.folder import EXAMPLES_FILE, RunFolder

_log = logging.getLogger(__name__)


def _tradeoff_points(group: Sequence[Mapping[str, Any]], what: str) -> tuple[list[float], ...]:
    """KL, trait and the trait's CI half-widths (below, above) of one method's rows, in budget order."""
    xs: list[float] = []
    ys: list[float] = []
    lo: list[float] = []
    hi: list[float] = []
    for r in sorted(group, key=lambda r: as_number(r.get("kl_budget")) or 0.0):
        x, y = as_number(r.get("kl_heldout")), as_number(r.get("trait"))
        if x is None or y is None:
            _log.warning(
                "tradeoff %s at KL budget %s has no kl_heldout/trait; not drawn", what, r.get("kl_budget")
            )
            continue
        ci = r.get("trait_ci")
        low, high = (
            (as_number(ci[0]), as_number(ci[1])) if isinstance(ci, list) and len(ci) == 2 else (None, None)
        )
        xs.append(x)
        ys.append(y)
        lo.append(max(0.0, y - low) if low is not None else 0.0)
        hi.append(max(0.0, high - y) if high is not None else 0.0)
    return xs, ys, lo, hi


def plot_tradeoff(
    rows: Sequence[Mapping[str, Any]], threat_model: str, ax: Any = None, *, legend: bool = True
) -> tuple[Any, Any]:
    """Alignment vs coherence: trait rate (95% CI) against KL to the unsteered model, per method.

    Each method's points (one per KL budget) are joined in budget order; the unsteered baseline
    (a star at KL 0) and the random-direction control (a cross) are marked; the dashed step line is
    the Pareto front over every plotted point (maximum trait rate, minimum KL).
    """
    mine = rows_for(as_rows(rows), threat_model)
    points: list[tuple[float, float]] = []
    with paper_style():
        fig, ax = new_ax(ax)
        groups = [
            (m, [r for r in mine if r["method"] == m]) for m in dict.fromkeys(str(r["method"]) for r in mine)
        ]
        for method, group in groups:
            xs, ys, lo, hi = _tradeoff_points(group, f"{threat_model} {method}")
            if not xs:
                continue
            colour, marker = style_of(method)
            size = 11 if method == "baseline" else 6
            ax.errorbar(
                xs,
                ys,
                yerr=[lo, hi],
                color=colour,
                marker=marker,
                ms=size,
                mfc="none" if method.endswith(PAPER_SUFFIX) else colour,
                mew=1.2,
                lw=1.2,
                capsize=2.5,
                elinewidth=0.8,
                ls="-" if len(xs) > 1 else "none",
                label=label_of(method),
                zorder=3,
                alpha=0.9,
            )
            points += list(zip(xs, ys, strict=True))
        if points:
            # the attainable region's edge: a step up at each front point, flat out to the largest KL drawn
            front = pareto_front(points)
            fx = [front[0][0]] + [x for x, _ in front[1:] for _ in (0, 1)] + [max(x for x, _ in points)]
            fy = [y for _, y in front for _ in (0, 1)]
            ax.plot(fx, fy, color="0.35", lw=1.0, ls="--", zorder=2, label="Pareto front")
        ax.set_xlabel("KL to the unsteered model (nats/token)")
        ax.set_ylabel(f"{trait_label(threat_model, 'aligned-trait rate')} (fraction)")
        ax.set_ylim(-0.05, 1.05)
        ax.set_xlim(left=-0.03 * max([x for x, _ in points if x > 0] + [0.05]))
        ax.set_title(f"{threat_model}: alignment vs coherence")
        if legend:
            handles, labels = _ordered_legend([ax])
            ax.legend(
                handles,
                labels,
                loc="upper center",
                bbox_to_anchor=(0.5, -0.18),
                frameon=False,
                ncol=4,
                handlelength=1.8,
            )
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
    fig.legend(
        handles,
        labels,
        loc="upper center",
        bbox_to_anchor=(0.5, 0.0),
        frameon=False,
        ncol=min(len(labels), 6),
        handlelength=1.8,
    )


_TURN_METRICS = {
    "repetition_by_turn": ("rep-4 within the reply (fraction)", "repetition within each reply"),
    "rep4_history_by_turn": ("4-grams repeated from earlier turns (fraction)", "repeating earlier turns"),
}


def plot_repetition_by_turn(
    rows: Sequence[Mapping[str, Any]],
    threat_model: str | None = None,
    ax: Any = None,
    *,
    kl_budget: float | None = None,
    metric: str = "repetition_by_turn",
) -> tuple[Any, Any]:
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
    rows = as_rows(rows)
    budget = matched_budget(rows, kl_budget)
    if threat_model is None:
        if ax is not None:
            raise ConfigError(
                "pass ax only with a threat_model (threat_model=None draws one panel per threat model)"
            )
        names = threat_models_of(rows)
        with paper_style():
            fig, axes = plt.subplots(
                1, len(names), figsize=(3.2 * len(names), 3.0), squeeze=False, sharey=True
            )
            for a, name in zip(axes[0], names, strict=True):
                plot_repetition_by_turn(rows, name, ax=a, kl_budget=budget, metric=metric)
                a.get_legend().remove()
                a.set_title(name)  # the metric and budget go once, in the figure title
            for a in axes[0][1:]:
                a.set_ylabel("")
            what = _TURN_METRICS[metric][1]
            fig.suptitle(
                f"{what[0].upper()}{what[1:]} over multi-turn conversations"
                + ("" if budget is None else f" (KL budget {budget:g} nats/token)"),
                fontsize=10,
            )
            _shared_legend(fig, axes[0])
        return fig, axes[0]
    mine = [
        r
        for r in rows_for(rows, threat_model)
        if is_control(str(r["method"])) or as_number(r.get("kl_budget")) == budget
    ]
    with paper_style():
        fig, ax = new_ax(ax)
        drawn = 0
        for r in mine:
            series = r.get(metric)
            if not isinstance(series, list) or not series:
                continue
            ys = [as_number(v) for v in series]
            colour, marker = style_of(str(r["method"]))
            ax.plot(
                range(1, len(ys) + 1),
                [math.nan if v is None else v for v in ys],
                color=colour,
                marker=marker,
                ms=5,
                lw=1.2,
                mfc="none" if r["method"] in ("StTP", "StMP") else colour,
                ls=":" if str(r["method"]).startswith("random") else "-",
                label=label_of(str(r["method"])),
                alpha=0.9,
                zorder=4 if r["method"] == "baseline" else 3,
            )
            drawn = max(drawn, len(ys))
        if drawn == 0:
            raise DataError(
                f"no row of {threat_model!r} has {metric!r} (the study ran without conversations)"
            )
        ax.set_xticks(range(1, drawn + 1))
        ax.set_xlabel("turn of the conversation")
        ax.set_ylabel(_TURN_METRICS[metric][0])
        ax.set_ylim(bottom=-0.02, top=max(0.1, ax.get_ylim()[1]))
        title = f"{threat_model}: {_TURN_METRICS[metric][1]}"
        ax.set_title(title if budget is None else f"{title} (KL {budget:g})")
        handles, labels = _ordered_legend([ax])
        ax.legend(handles, labels, frameon=False, fontsize=7)
    return fig, ax


def plot_steered_share(
    rows: Sequence[Mapping[str, Any]], ax: Any = None, *, kl_budget: float | None = None
) -> tuple[Any, Any]:
    """Share of generated tokens chosen where steering fired, per method and threat model.

    Solid bars: answers to the misaligned evaluation prompts; hatched bars (when the rows have
    ``fired_share_harmless_generated``): answers to harmless prompts, where a selective method or a gate
    should steer less.
    """
    rows = as_rows(rows)
    budget = matched_budget(rows, kl_budget)
    randoms = sorted({str(r["method"]) for r in rows if str(r["method"]).startswith("random")})[:1]
    names, methods = threat_models_of(rows), methods_of(rows) + randoms
    cells = {
        (str(r["threat_model"]), str(r["method"])): r
        for r in rows
        if (not is_control(str(r["method"])) and as_number(r.get("kl_budget")) == budget)
        or str(r["method"]) in randoms
    }
    if not any(as_number(r.get("steered_share")) is not None for r in cells.values()):
        raise DataError("no steered row has 'steered_share'")
    methods = [
        m for m in methods if any((n, m) in cells for n in names)
    ]  # not the uncalibrated paper-rule rows
    harmless_key = "fired_share_harmless_generated"  # an earlier name is migrated by as_rows
    harmless = any(as_number(r.get(harmless_key)) is not None for r in cells.values())
    per_method = 2 if harmless else 1
    width = 0.8 / (len(methods) * per_method)
    with paper_style():
        fig, ax = new_ax(ax, figsize=(max(4.0, 1.6 + 1.5 * len(names)), 3.0))
        for j, method in enumerate(methods):
            colour, _ = style_of(method)
            for k, (field_name, hatch, suffix) in enumerate(
                (
                    ("steered_share", None, "misaligned prompts"),
                    (harmless_key, "///", "harmless prompts"),
                )
            ):
                if k >= per_method:
                    break
                xs = [i - 0.4 + width * (j * per_method + k + 0.5) for i in range(len(names))]
                ys = [as_number(cells.get((n, method), {}).get(field_name)) for n in names]
                ax.bar(
                    [x for x, y in zip(xs, ys, strict=True) if y is not None],
                    [y for y in ys if y is not None],
                    width=width * 0.92,
                    color="white" if hatch else colour,
                    edgecolor=colour,
                    hatch=hatch,
                    lw=1.0,
                    label=f"{'random direction' if method in randoms else label_of(method)}, {suffix}",
                )
        ax.set_xticks(range(len(names)), names)
        ax.set_xlabel("threat model")
        ax.set_ylabel("generated tokens steered (fraction)")
        ax.set_ylim(0, 1.05)
        ax.grid(axis="x", visible=False)
        title = "Share of generated tokens where steering fired"
        ax.set_title(title if budget is None else f"{title} (KL {budget:g})")
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False, fontsize=7)
    return fig, ax


def plot_steerability(report: Mapping[str, Any], ax: Any = None) -> tuple[Any, Any]:
    """Steering effect by layer at the study's KL budget, per threat model, the chosen layer circled.

    Reads ``report["threat_models"][tm]["steerability"]`` (:meth:`lensteer.evaluate.Steerability.to_dict`)
    and ``...["layer"]`` from a ``lensteer run`` report.
    """
    entries = {tm: e for tm, e in report.get("threat_models", {}).items() if e.get("steerability")}
    if not entries:
        raise DataError("the report has no steerability (the layer was set in the config, or one candidate)")
    with paper_style():
        fig, ax = new_ax(ax, figsize=(4.6, 3.0))
        budget = None
        for colour, (tm, entry) in zip(PALETTE, entries.items(), strict=False):
            st = entry["steerability"]
            layers = [int(k) for k in st["effect"]]
            effects = [float(v) for v in st["effect"].values()]
            ax.plot(layers, effects, marker="o", ms=3, lw=1.2, color=colour, label=tm)
            chosen = entry.get("layer")
            if chosen is not None and str(chosen) in st["effect"]:
                ax.plot(
                    [chosen], [st["effect"][str(chosen)]], marker="o", ms=9, mfc="none", mec=colour, mew=1.3
                )
            budget = st.get("kl_budget", budget)
        ax.axhline(0.0, color="0.4", lw=0.8, ls=":")
        ax.set_xlabel("layer")
        ax.set_ylabel("shift of aligned-vs-misaligned\nlog-odds (nats/token)")
        ax.set_title(
            f"steerability at KL {budget:g} nats/token (circled: chosen layer)"
            if budget is not None
            else "steerability (circled: chosen layer)"
        )
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.18), frameon=False, ncol=len(entries))
    return fig, ax


def plot_layer_sweep(rows: Sequence[Mapping[str, Any]], *, kl_budget: float | None = None) -> tuple[Any, Any]:
    """Trait rate (95% CI) by steering layer, per method, one panel per threat model, for the rows of
    a layer sweep (``lensteer run --layers ...``) at one KL budget; the unsteered rate as a line."""
    rows = as_rows(rows)
    steered = [
        r
        for r in rows
        if not is_control(str(r["method"])) and (kl_budget is None or r["kl_budget"] == kl_budget)
    ]
    tms = [
        tm
        for tm in threat_models_of(rows)
        if len({r["layer"] for r in steered if r["threat_model"] == tm}) > 1
    ]
    if not tms:
        raise DataError(
            "no threat model has steered rows at more than one layer (run with --layers to sweep)"
        )
    with paper_style():
        fig, axes = plt.subplots(1, len(tms), figsize=(3.4 * len(tms), 3.0), squeeze=False)
        for ax, tm in zip(axes[0], tms, strict=True):
            mine = [r for r in steered if r["threat_model"] == tm]
            for method in dict.fromkeys(r["method"] for r in mine):
                pts = sorted(
                    (r["layer"], r["trait"], r.get("trait_ci") or [r["trait"]] * 2)
                    for r in mine
                    if r["method"] == method
                )
                colour, marker = METHOD_STYLE.get(method, (PALETTE[7], "o"))
                x, y = [p[0] for p in pts], [p[1] for p in pts]
                err = [[p[1] - p[2][0] for p in pts], [p[2][1] - p[1] for p in pts]]
                ax.errorbar(
                    x, y, yerr=err, color=colour, marker=marker, ms=4, lw=1.2, capsize=2, label=method
                )
            base = next((r for r in rows if r["threat_model"] == tm and r["method"] == "baseline"), None)
            if base is not None:
                ax.axhline(base["trait"], color=BASELINE_STYLE[0], lw=0.9, ls="--", label="unsteered")
            ax.set_title(tm)
            ax.set_xlabel("steering layer")
            ax.set_ylabel(trait_label(tm))
            ax.set_ylim(-0.03, 1.03)
        axes[0][0].legend(frameon=False, fontsize=7)
    return fig, axes[0][0]


def _chosen_layer_rows(rows: Sequence[Mapping[str, Any]], report: Mapping[str, Any] | None) -> list[Any]:
    """The rows at each threat model's chosen layer (a layer sweep's other layers have their own figure)."""
    chosen = {tm: e.get("layer") for tm, e in (report or {}).get("threat_models", {}).items()}
    swept = {tm for tm in chosen if len({r.get("layer") for r in rows if r["threat_model"] == tm}) > 1}
    return [r for r in rows if r["threat_model"] not in swept or r.get("layer") == chosen[r["threat_model"]]]


def _gate_roc(search: dict[str, Any]) -> tuple[Any, Any]:
    from lensteer.plotting.locate_figures import GateROC, plot_gate_roc

    return plot_gate_roc(GateROC.from_dict(search))


def save_study_figures(results_dir: "str | Path", out_dir: "str | Path") -> list[Path]:
    """Write every study figure of a ``lensteer run`` results folder into ``out_dir`` (PDF + PNG).

    Reads ``results.json`` (required), ``report.json`` (for the matched KL budget, if present) and
    ``examples.json`` (if present). Writes ``tradeoff`` (all threat models), ``tradeoff_<tm>``,
    ``repetition_by_turn``, ``repetition_history_by_turn``, ``steered_share``, ``selection_<tm>`` (the site
    choice's candidates by layer, position and source, from the report), ``steerability`` (the teacher-forced
    screen of studies run before the site choice), ``gate_roc_<tm>`` (the gate search's ROC per layer, from the report), ``robustness`` (the report's
    robustness table), ``layer_sweep`` (if the study swept layers) and ``examples_<tm>``. The other figures show
    each threat model's chosen layer.
    A figure whose data the folder lacks is skipped with a warning on the ``lensteer.plotting.figures``
    logger that says why.

    Returns:
        The paths written, PDF and PNG of each figure.
    """
    run, out = RunFolder(Path(results_dir)), Path(out_dir)
    if not run.results_path.exists():
        raise DataError(f"{run.results_path} does not exist; run `lensteer run --out {run.root}` first")
    rows = as_rows(run.table().rows)
    if not rows:
        raise DataError(f"{run.results_path} has no rows")
    budget, report = None, None
    if run.report_path.exists():
        report = run.read_report().to_dict()
        budget = as_number(report.get("matched_kl_budget"))
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
    entries = (report or {}).get("threat_models", {})
    if report is not None and any(
        e.get("steerability") for e in entries.values()
    ):  # studies before the site choice
        save("steerability", lambda: plot_steerability(report))
    if len(swept) > len(rows):
        save("layer_sweep", lambda: plot_layer_sweep(swept, kl_budget=budget))
    for tm in threat_models_of(rows):
        save(f"tradeoff_{tm}", functools.partial(plot_tradeoff, rows, tm))
    _entry_figures(entries, save)
    save("repetition_by_turn", lambda: plot_repetition_by_turn(rows, kl_budget=budget))
    save(
        "repetition_history_by_turn",
        lambda: plot_repetition_by_turn(rows, kl_budget=budget, metric="rep4_history_by_turn"),
    )
    save("steered_share", lambda: plot_steered_share(rows, kl_budget=budget))
    if report is not None and report.get("robustness"):
        save("robustness", lambda: plot_robustness(report["robustness"]))
    _example_figures(run, save)
    return written


_Save: TypeAlias = Callable[[str, Callable[[], tuple[Any, Any]]], None]


def _entry_figures(entries: dict[str, Any], save: _Save) -> None:
    """Per threat model of the report: the gate search's ROC and the site choice's candidates."""
    for tm, entry in entries.items():
        if (
            isinstance(entry.get("gate"), dict) and "layers" in entry["gate"]
        ):  # a gate search (not an old gate)
            save(f"gate_roc_{tm}", functools.partial(_gate_roc, entry["gate"]))
        if entry.get("candidates"):  # the site choice: every candidate by layer, position and source
            save(f"selection_{tm}", functools.partial(plot_selection, entry))


def _example_figures(run: RunFolder, save: _Save) -> None:
    """One figure of example generations per threat model of ``examples.json``, if the run wrote it."""
    examples_path = run.path(EXAMPLES_FILE)
    if examples_path.exists():
        examples = read_json(examples_path, what="examples file")
        for tm in examples:
            save(f"examples_{tm}", functools.partial(plot_examples, examples, tm))
    else:
        _log.warning("skipped the example figures: %s does not exist", examples_path)
