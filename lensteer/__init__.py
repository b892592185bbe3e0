"""lensteer: locate misalignment directions in a transformer and steer them back, coherently.

Built on TransformerLens' ``TransformerBridge``. The public API is this namespace::

    import lensteer
    model = lensteer.load_model()                       # embedded SmolLM2-135M-Instruct, offline
    refusal = lensteer.load_dataset("refusal")
    acts = lensteer.collect_activations(model, refusal.train.prompts, layers=[10, 12])
"""

from lensteer.core.activations import collect_activations
from lensteer.core.chat import (
    ChatPrompt,
    PromptBatch,
    TokenizedPrompt,
    Turn,
    first_token_id,
    tokenize_batch,
    tokenize_prompt,
)
from lensteer.core.datasets import Context, ContrastExample, ContrastSet, load_dataset
from lensteer.core.forward import mean_token_kl
from lensteer.core.models import (
    ModelFingerprint,
    ensure_kv_cache_fix,
    load_model,
    model_fingerprint,
)
from lensteer.core.sites import HookSite
from lensteer.core.stats import Rate, rate_with_ci
from lensteer.errors import (
    ArtifactMismatchError,
    ConfigError,
    DataError,
    HookSiteError,
    JudgeError,
    LensteerError,
    ModelLoadError,
)
from lensteer.evaluate.capability import MCItem, MCResult, load_mc_items, mc_accuracy
from lensteer.evaluate.compare import SideBySide, side_by_side
from lensteer.evaluate.compassion import (
    CompassionScorer,
    compassion_scorer,
    train_compassion_scorer,
)
from lensteer.evaluate.honesty import HonestyVerdict, honesty_verdict
from lensteer.evaluate.judges import CallableJudge, HttpJudge, Judge, judge_responses
from lensteer.evaluate.metrics import Perplexity, over_refusal_rate, response_perplexity
from lensteer.evaluate.refusal import (
    RefusalVerdict,
    is_redirecting_refusal,
    is_refusal,
    refusal_verdict,
)
from lensteer.evaluate.repetition import (
    RepetitionReport,
    TurnRepetition,
    conversation_repetition,
    distinct_n,
    rep_n,
    repetition_report,
)
from lensteer.evaluate.steerability import (
    Steerability,
    layer_steerability,
    preference_margin,
    steering_effect,
)
from lensteer.locate.attribution import attribute_heads, attribute_residual
from lensteer.locate.direction_patching import DirectionPatchResult, ablation_kl, patch_direction
from lensteer.locate.directions import (
    Direction,
    LinearProbe,
    diff_of_means,
    fit_probe,
    pca_of_diffs,
)
from lensteer.locate.pairs import PairDesign, PatchingPairs, patching_pairs
from lensteer.locate.patching import patch_heads, patch_layers, patch_residual
from lensteer.locate.patching_base import (
    PatchingError,
    PatchResult,
    equal_length_pairs,
    logit_diff_metric,
)
from lensteer.locate.probing import ProbingReport, collect_contrast, probe_by_layer, probe_layers
from lensteer.steering.calibration import (
    Calibration,
    KLProbe,
    calibrate,
    kl_probe,
    reference_norm,
    steering_kl,
)
from lensteer.steering.files import load_steering, load_steerings, save_steering, save_steerings
from lensteer.steering.gates import Gate
from lensteer.steering.generation import Generations, generate, generate_conversations
from lensteer.steering.gguf_export import export_gguf_control_vector
from lensteer.steering.hooks import SteeringContext, steer
from lensteer.steering.positions import LastK, Window
from lensteer.steering.spec import Steering
from lensteer.study.recommend import SiteRecommendation, recommend_site

__version__ = "0.1.0"

__all__ = [
    "ArtifactMismatchError",
    "Calibration",
    "CallableJudge",
    "ChatPrompt",
    "CompassionScorer",
    "ConfigError",
    "Context",
    "ContrastExample",
    "ContrastSet",
    "DataError",
    "Direction",
    "DirectionPatchResult",
    "Gate",
    "Generations",
    "HonestyVerdict",
    "HookSite",
    "HookSiteError",
    "HttpJudge",
    "Judge",
    "JudgeError",
    "KLProbe",
    "LastK",
    "LensteerError",
    "LinearProbe",
    "MCItem",
    "MCResult",
    "ModelFingerprint",
    "ModelLoadError",
    "PairDesign",
    "PatchResult",
    "PatchingError",
    "PatchingPairs",
    "Perplexity",
    "ProbingReport",
    "PromptBatch",
    "Rate",
    "RefusalVerdict",
    "RepetitionReport",
    "SideBySide",
    "SiteRecommendation",
    "Steerability",
    "Steering",
    "SteeringContext",
    "TokenizedPrompt",
    "Turn",
    "TurnRepetition",
    "Window",
    "__version__",
    "ablation_kl",
    "attribute_heads",
    "attribute_residual",
    "calibrate",
    "collect_activations",
    "collect_contrast",
    "compassion_scorer",
    "conversation_repetition",
    "diff_of_means",
    "distinct_n",
    "ensure_kv_cache_fix",
    "equal_length_pairs",
    "export_gguf_control_vector",
    "first_token_id",
    "fit_probe",
    "generate",
    "generate_conversations",
    "honesty_verdict",
    "is_redirecting_refusal",
    "is_refusal",
    "judge_responses",
    "kl_probe",
    "layer_steerability",
    "load_dataset",
    "load_mc_items",
    "load_model",
    "load_steering",
    "load_steerings",
    "logit_diff_metric",
    "mc_accuracy",
    "mean_token_kl",
    "model_fingerprint",
    "over_refusal_rate",
    "patch_direction",
    "patch_heads",
    "patch_layers",
    "patch_residual",
    "patching_pairs",
    "pca_of_diffs",
    "preference_margin",
    "probe_by_layer",
    "probe_layers",
    "rate_with_ci",
    "recommend_site",
    "reference_norm",
    "refusal_verdict",
    "rep_n",
    "repetition_report",
    "response_perplexity",
    "save_steering",
    "save_steerings",
    "side_by_side",
    "steer",
    "steering_effect",
    "steering_kl",
    "tokenize_batch",
    "tokenize_prompt",
    "train_compassion_scorer",
]
