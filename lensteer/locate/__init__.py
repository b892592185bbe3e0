"""locate: where a behaviour lives. Owns directions and probes, the probing study, exact and
attribution patching (with the incremental patching engine), patching pairs and direction-level
patching; returns result objects. Imports only ``core``; never ``steering`` or anything above it.
"""

from lensteer.locate.attribution import attribute_heads, attribute_residual
from lensteer.locate.dataset_projection import ProjectionScreen, dataset_projection
from lensteer.locate.direction_patching import DirectionPatchResult, ablation_kl, patch_direction
from lensteer.locate.directions import (
    Direction,
    LinearProbe,
    diff_of_means,
    fit_probe,
    pca_of_diffs,
)
from lensteer.locate.massive import (
    DEFAULT_MASSIVE_RATIO,
    MassiveTokens,
    massive_tokens,
    norm_limit,
    token_norms,
)
from lensteer.locate.organism_shift import ActivationShift, organism_shift
from lensteer.locate.pairs import PairDesign, PatchingPairs, patching_pairs
from lensteer.locate.patching import patch_heads, patch_layers, patch_residual
from lensteer.locate.patching_base import (
    PatchingError,
    PatchResult,
    equal_length_pairs,
    logit_diff_metric,
)
from lensteer.locate.probing import ProbingReport, collect_contrast, probe_by_layer, probe_layers

__all__ = [
    "DEFAULT_MASSIVE_RATIO",
    "ActivationShift",
    "Direction",
    "DirectionPatchResult",
    "LinearProbe",
    "MassiveTokens",
    "PairDesign",
    "PatchResult",
    "PatchingError",
    "PatchingPairs",
    "ProbingReport",
    "ProjectionScreen",
    "ablation_kl",
    "attribute_heads",
    "attribute_residual",
    "collect_contrast",
    "dataset_projection",
    "diff_of_means",
    "equal_length_pairs",
    "fit_probe",
    "logit_diff_metric",
    "massive_tokens",
    "norm_limit",
    "organism_shift",
    "patch_direction",
    "patch_heads",
    "patch_layers",
    "patch_residual",
    "patching_pairs",
    "pca_of_diffs",
    "probe_by_layer",
    "probe_layers",
    "token_norms",
]
