"""lensteer: locate misalignment directions in a transformer and steer them back, coherently.

Built on TransformerLens' ``TransformerBridge``. The public API is this namespace::

    import lensteer
    model = lensteer.load_model()                       # embedded SmolLM2-135M-Instruct, offline
    refusal = lensteer.load_dataset("refusal")
    acts = lensteer.collect_activations(model, refusal.train.prompts, layers=[10, 12])
"""

from lensteer.activations import collect_activations
from lensteer.artifacts import (
    export_gguf_control_vector,
    load_steering,
    load_steerings,
    save_steering,
    save_steerings,
)
from lensteer.chat import (
    ChatPrompt,
    PromptBatch,
    TokenizedPrompt,
    Turn,
    first_token_id,
    tokenize_batch,
    tokenize_prompt,
)
from lensteer.data import Context, ContrastExample, ContrastSet, load_dataset
from lensteer.directions import Direction, LinearProbe, diff_of_means, fit_probe, pca_of_diffs
from lensteer.errors import (
    ArtifactMismatchError,
    ConfigError,
    DataError,
    HookSiteError,
    LensteerError,
    ModelLoadError,
)
from lensteer.generation import Generations, generate, generate_conversations
from lensteer.models import ModelFingerprint, ensure_kv_cache_fix, load_model, model_fingerprint
from lensteer.pairs import PairDesign, PatchingPairs, patching_pairs
from lensteer.patching import (
    DirectionPatchResult,
    PatchingError,
    PatchResult,
    attribute_residual,
    equal_length_pairs,
    logit_diff_metric,
    patch_direction,
    patch_heads,
    patch_layers,
    patch_residual,
)
from lensteer.probing import ProbingReport, collect_contrast, probe_by_layer, probe_layers
from lensteer.recommend import SiteRecommendation, ablation_kl, recommend_site
from lensteer.sites import HookSite
from lensteer.steering import Gate, LastK, Steering, SteeringContext, Window, steer

__version__ = "0.1.0"

__all__ = [
    "ArtifactMismatchError",
    "ChatPrompt",
    "ConfigError",
    "Context",
    "ContrastExample",
    "ContrastSet",
    "DataError",
    "Direction",
    "DirectionPatchResult",
    "Gate",
    "Generations",
    "HookSite",
    "HookSiteError",
    "LastK",
    "LensteerError",
    "LinearProbe",
    "ModelFingerprint",
    "ModelLoadError",
    "PairDesign",
    "PatchResult",
    "PatchingError",
    "PatchingPairs",
    "ProbingReport",
    "PromptBatch",
    "SiteRecommendation",
    "Steering",
    "SteeringContext",
    "TokenizedPrompt",
    "Turn",
    "Window",
    "__version__",
    "ablation_kl",
    "attribute_residual",
    "collect_activations",
    "collect_contrast",
    "diff_of_means",
    "ensure_kv_cache_fix",
    "equal_length_pairs",
    "export_gguf_control_vector",
    "first_token_id",
    "fit_probe",
    "generate",
    "generate_conversations",
    "load_dataset",
    "load_model",
    "load_steering",
    "load_steerings",
    "logit_diff_metric",
    "model_fingerprint",
    "patch_direction",
    "patch_heads",
    "patch_layers",
    "patch_residual",
    "patching_pairs",
    "pca_of_diffs",
    "probe_by_layer",
    "probe_layers",
    "recommend_site",
    "save_steering",
    "save_steerings",
    "steer",
    "tokenize_batch",
    "tokenize_prompt",
]
