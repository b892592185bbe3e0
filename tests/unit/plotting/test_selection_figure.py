"""The site-selection figure is drawn from a Selection or its report.json form."""

import matplotlib.pyplot as plt
import pytest

import lensteer
from lensteer.plotting.selection_figure import plot_selection, save_selection_figure
from lensteer.study.selection import CandidateScore, Selection


def _selection() -> Selection:
    scores = tuple(
        CandidateScore(
            source=src,
            layer=layer,
            position=pos,
            from_patching=layer == 2,
            decision_shift=None if filtered else 0.1 * layer,
            decision_shift_ci=None if filtered else (0.1 * layer - 0.05, 0.1 * layer + 0.05),
            why_not=("ablation KL 0.3 > 0.1",)
            if filtered
            else ("layer in the last 20%",)
            if layer == 4
            else (),
        )
        for layer in range(5)
        for src, pos, filtered in (
            ("prompt_contrast", "post_instruction[-1]", False),
            ("prompt_contrast", "post_instruction[-2]", layer < 2),  # filtered before scoring
            ("response_mean", "response_mean", False),
            ("probe", "response_mean", False),
        )
    )
    return Selection(candidates=scores, chosen=scores[12], why="best lower bound")


def test_the_selection_figure_writes_a_png_and_marks_the_chosen_candidate(tmp_path):
    sel = _selection()
    fig, ax = plot_selection(sel.to_dict())
    plt.close(fig)
    labels = ax.get_legend_handles_labels()[1]
    assert labels.count("chosen") == 1 and {"prompt contrast", "response mean", "probe"} <= set(labels)
    assert "not scored: failed a filter first (2)" in labels  # the two filtered candidates are drawn too
    pdf, png = save_selection_figure(sel, tmp_path / "selection_refusal")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and pdf.stat().st_size > 0
    with pytest.raises(lensteer.DataError, match="no scored candidate"):
        plot_selection({"candidates": []})
