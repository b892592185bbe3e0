"""core: what every stage stands on. Owns model loading and fingerprints, the TransformerLens
compatibility shim (the only monkeypatch), hook sites (the only module that spells hook names),
chat formatting, batching and padding, forward helpers (the one KL, the one response log-prob),
activation collection, datasets, statistics and atomic file writes. Imports nothing from lensteer
but ``errors`` and ``_types``.
"""

from lensteer.core.activations import collect_activations
from lensteer.core.bridge import Bridge
from lensteer.core.chat import (
    ChatPrompt,
    PromptBatch,
    TokenizedPrompt,
    Turn,
    first_token_id,
    tokenize_batch,
    tokenize_prompt,
)
from lensteer.core.datasets import (
    BUNDLED,
    Context,
    ContrastExample,
    ContrastSet,
    load_dataset,
)
from lensteer.core.forward import kl_divergence, mean_token_kl, response_logprob
from lensteer.core.inducers import Inducer, apply_inducers, bundled_inducers, load_inducer
from lensteer.core.io import write_json
from lensteer.core.models import (
    ModelFingerprint,
    ensure_kv_cache_fix,
    load_model,
    model_fingerprint,
)
from lensteer.core.sites import HookSite
from lensteer.core.stats import Rate, auroc, bootstrap_ci, d_prime, rate_with_ci

__all__ = [
    "BUNDLED",
    "Bridge",
    "ChatPrompt",
    "Context",
    "ContrastExample",
    "ContrastSet",
    "HookSite",
    "Inducer",
    "ModelFingerprint",
    "PromptBatch",
    "Rate",
    "TokenizedPrompt",
    "Turn",
    "apply_inducers",
    "auroc",
    "bootstrap_ci",
    "bundled_inducers",
    "collect_activations",
    "d_prime",
    "ensure_kv_cache_fix",
    "first_token_id",
    "kl_divergence",
    "load_dataset",
    "load_inducer",
    "load_model",
    "mean_token_kl",
    "model_fingerprint",
    "rate_with_ci",
    "response_logprob",
    "tokenize_batch",
    "tokenize_prompt",
    "write_json",
]
