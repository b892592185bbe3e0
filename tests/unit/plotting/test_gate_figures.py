"""The gate-search ROC figure, from a search on planted activations (no model)."""

import matplotlib.pyplot as plt
import torch

from lensteer import plotting
from lensteer.steering.gate_search import search_gate_from_activations


def _acts(n, seed, shift, n_layers):
    """``[n, n_layers, 8]``: layer column ``j`` moves the class by ``shift * j`` along e0 (column 0: no signal)."""
    gen = torch.Generator().manual_seed(seed)
    acts = torch.randn(n, n_layers, 8, generator=gen)
    acts[:, :, 0] += shift * torch.arange(n_layers) / max(1, n_layers - 1)
    return acts


def _search(n_layers=3):
    layers = list(range(2, 2 + n_layers))
    return search_gate_from_activations(
        _acts(30, 1, 3.0, n_layers),
        _acts(30, 2, 0.0, n_layers),
        _acts(25, 3, 3.0, n_layers),
        _acts(40, 4, 0.0, n_layers),
        layers=layers,
        target_fpr=0.1,
    )


def test_gate_roc_draws_each_layer_the_budget_and_the_chosen_point(tmp_path):
    search = _search()
    fig, ax = plotting.plot_gate_roc(search)
    labels = [line.get_label() for line in ax.get_lines()]
    for layer in search.layers:
        assert any(lab.startswith(f"layer {layer} (AUROC {search.auroc[layer]:.2f})") for lab in labels), (
            labels
        )
    chosen = next(line for line in ax.get_lines() if line.get_label().endswith(", chosen"))
    assert chosen.get_label().startswith(f"layer {search.layer} ")
    others = [line for line in ax.get_lines() if line.get_label().startswith("layer ") and line is not chosen]
    assert all(chosen.get_linewidth() > line.get_linewidth() for line in others)
    assert list(chosen.get_xdata()) == search.roc[search.layer][0]
    budget = next(line for line in ax.get_lines() if line.get_label().startswith("FPR budget"))
    assert list(budget.get_xdata()) == [search.target_fpr, search.target_fpr]
    point = next(line for line in ax.get_lines() if line.get_label().startswith("gate: TPR"))
    assert (point.get_xdata()[0], point.get_ydata()[0]) == (search.val_fpr, search.val_tpr)
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert f"FPR budget {search.target_fpr:g}" in legend
    assert "false-positive rate" in ax.get_xlabel() and "true-positive rate" in ax.get_ylabel()
    pdf, png = plotting.save_figure(fig, tmp_path / "gate_roc")
    assert pdf.stat().st_size > 0 and png.stat().st_size > 0
    plt.close(fig)


def test_gate_roc_with_many_layers_keeps_the_legend_short_and_draws_on_a_given_ax():
    search = _search(n_layers=12)
    fig, given = plt.subplots()
    out_fig, ax = plotting.plot_gate_roc(search, ax=given)
    assert ax is given and out_fig is fig
    assert (
        len([line for line in ax.get_lines() if line.get_label().startswith("layer ")]) == 1
    )  # the chosen one
    assert len(ax.get_lines()) == 12 + 3  # every curve, chance, budget, operating point
    plt.close(fig)


def test_gate_roc_single_layer():
    search = _search(n_layers=1)
    fig, ax = plotting.plot_gate_roc(search)
    assert search.layer == 2 and any(line.get_label().endswith(", chosen") for line in ax.get_lines())
    plt.close(fig)


def test_the_report_copy_of_a_search_draws_the_same_roc(tmp_path):
    import json

    import pytest

    from lensteer.errors import DataError
    from lensteer.plotting.locate_figures import GateROC

    search = _search()
    back = GateROC.from_dict(json.loads(json.dumps(search.to_dict())))  # what report.json keeps
    assert back.layers == search.layers and back.auroc == search.auroc
    for layer in search.layers:  # the report keeps the ROC's corners: the same curve, the same ends
        (fpr, tpr), (full_fpr, full_tpr) = back.roc[layer], search.roc[layer]
        assert set(zip(fpr, tpr, strict=True)) <= set(zip(full_fpr, full_tpr, strict=True)) and (
            fpr[-1],
            tpr[-1],
        ) == (1.0, 1.0)
        area = float(
            torch.trapezoid(torch.tensor(tpr, dtype=torch.float64), torch.tensor(fpr, dtype=torch.float64))
        )
        assert area == pytest.approx(search.auroc[layer], abs=1e-6)
    assert (back.layer, back.val_fpr, back.val_tpr) == (search.layer, search.val_fpr, search.val_tpr)
    _, ax = plotting.plot_gate_roc(back)
    assert any(line.get_label().endswith(", chosen") for line in ax.get_lines())
    plt.close("all")
    with pytest.raises(DataError, match="not a gate search"):
        GateROC.from_dict({"layer": 3, "threshold": 0.1})
