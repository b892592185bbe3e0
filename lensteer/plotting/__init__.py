"""plotting: paper figures in one style. Owns the style (palette, labelled axes, atomic PDF + PNG),
figures from result objects (probing, patching, a generation token by token) and figures from the
study's files. Never runs a model; imports anything below it.
"""

from lensteer.plotting.examples import plot_examples
from lensteer.plotting.figures import (
    plot_attribution_vs_exact,
    plot_direction_cosines,
    plot_method_cosines,
    plot_patching,
    plot_probing,
)
from lensteer.plotting.locate_figures import plot_gate_roc
from lensteer.plotting.organism_figure import plot_organisms
from lensteer.plotting.persona_figure import plot_dataset_projection
from lensteer.plotting.robustness_figure import plot_robustness
from lensteer.plotting.study_figures import (
    plot_layer_sweep,
    plot_repetition_by_turn,
    plot_steerability,
    plot_steered_share,
    plot_tradeoff,
    plot_tradeoff_grid,
    save_study_figures,
)
from lensteer.plotting.study_rows import methods_of, pareto_front, threat_models_of
from lensteer.plotting.style import PALETTE, paper_style, save_figure
from lensteer.plotting.token_view import TokenView, plot_token_view, token_view

__all__ = [
    "PALETTE",
    "TokenView",
    "methods_of",
    "paper_style",
    "pareto_front",
    "plot_attribution_vs_exact",
    "plot_dataset_projection",
    "plot_direction_cosines",
    "plot_examples",
    "plot_gate_roc",
    "plot_layer_sweep",
    "plot_method_cosines",
    "plot_organisms",
    "plot_patching",
    "plot_probing",
    "plot_repetition_by_turn",
    "plot_robustness",
    "plot_steerability",
    "plot_steered_share",
    "plot_token_view",
    "plot_tradeoff",
    "plot_tradeoff_grid",
    "save_figure",
    "save_study_figures",
    "threat_models_of",
    "token_view",
]
