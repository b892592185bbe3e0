"""The robustness figure: trait recovered per attack or organism and method, with Wilson intervals.

One panel per threat model; one row per setting (an inducer, ``organism:<recipe>``); in each row a marker
per method (filled: direction found on the base model; hollow: found on the organism itself), with its
95% Wilson interval, beside the unsteered model's rate (black star) in that setting.
"""

from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib.pyplot as plt

from lensteer.errors import DataError
from lensteer.plotting.study_rows import as_number, label_of, style_of, trait_label
from lensteer.plotting.style import paper_style


def plot_robustness(rows: Sequence[Mapping[str, Any]]) -> tuple[Any, Any]:
    """Draw ``report["robustness"]`` (rows with ``setting``, ``threat_model``, ``method``, ``trait``,
    ``trait_ci``, ``direction_from``). Returns ``(fig, axes)``."""
    usable = [
        r for r in rows if as_number(r.get("trait")) is not None and r.get("setting") and r.get("method")
    ]
    if not usable:
        raise DataError("no robustness rows with a trait to draw; run `lensteer run --robustness ...` first")
    threat_models = list(dict.fromkeys(str(r["threat_model"]) for r in usable))
    arms = list(dict.fromkeys((str(r["method"]), str(r.get("direction_from", "base"))) for r in usable))
    with paper_style():
        n_settings = max(
            len({r["setting"] for r in usable if r["threat_model"] == tm}) for tm in threat_models
        )
        fig, axes = plt.subplots(
            1, len(threat_models), figsize=(3.6 * len(threat_models), 1.0 + 0.6 * n_settings), squeeze=False
        )
        for ax, tm in zip(axes[0], threat_models, strict=True):
            mine = [r for r in usable if r["threat_model"] == tm]
            settings = list(dict.fromkeys(str(r["setting"]) for r in mine))
            for j, (method, origin) in enumerate(arms):
                colour, marker = style_of(method)
                offset = (j - (len(arms) - 1) / 2) * 0.6 / max(1, len(arms))
                for i, setting in enumerate(settings):
                    row = next(
                        (
                            r
                            for r in mine
                            if (r["setting"], r["method"], r.get("direction_from", "base"))
                            == (setting, method, origin)
                        ),
                        None,
                    )
                    if row is None:
                        continue
                    y, x = i + offset, float(row["trait"])
                    lo, hi = row.get("trait_ci") or (x, x)
                    ax.plot([lo, hi], [y, y], color=colour, lw=1.0)
                    ax.plot(
                        [x],
                        [y],
                        marker=marker,
                        color=colour,
                        ms=6,
                        ls="none",
                        markerfacecolor="white" if origin == "organism" and method != "baseline" else colour,
                        label=label_of(method)
                        + (
                            " (organism's direction)"
                            if origin == "organism" and method not in ("baseline", "prompting")
                            else ""
                        ),
                    )
            ax.set_yticks(range(len(settings)), settings)
            ax.set_ylim(len(settings) - 0.5, -0.5)
            ax.set_xlim(0, 1)
            ax.set_xlabel(trait_label(tm))
            ax.set_title(tm)
        handles, labels = [], []
        for ax in axes[0]:
            for h, lab in zip(*ax.get_legend_handles_labels(), strict=True):
                if lab not in labels:
                    handles.append(h)
                    labels.append(lab)
        fig.legend(
            handles,
            labels,
            loc="lower center",
            ncol=min(4, len(labels)),
            frameon=False,
            fontsize=7,
            bbox_to_anchor=(0.5, -0.02 - 0.04 * (len(labels) // 4)),
        )
        fig.suptitle("Trait under attacks and in fine-tuned organisms (95% Wilson intervals)", fontsize=9)
        fig.tight_layout(rect=(0, 0.08, 1, 1))
    return fig, axes
