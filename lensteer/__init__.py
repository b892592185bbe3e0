"""lensteer: locate misalignment directions in a transformer and steer them back, coherently.

Built on TransformerLens' ``TransformerBridge``. The front door holds the names a notebook needs::

    import lensteer
    model = lensteer.load_model()                       # embedded SmolLM2-135M-Instruct, offline
    refusal = lensteer.load_dataset("refusal")
    acts = lensteer.collect_activations(model, refusal.train.prompts, layers=[10, 12])

Everything else lives in the stage subpackages, reachable as namespaces (imported on first use):
``lensteer.core``, ``lensteer.locate``, ``lensteer.steering``, ``lensteer.evaluate``, ``lensteer.organisms``,
``lensteer.threats``, ``lensteer.study`` and ``lensteer.plotting``; e.g. ``lensteer.evaluate.refusal_verdict`` or ``lensteer.plotting.plot_tradeoff``.
"""

import importlib
from types import ModuleType

from lensteer._version import __version__
from lensteer.core import ChatPrompt, collect_activations, load_dataset, load_model
from lensteer.errors import (
    ArtifactMismatchError,
    ConfigError,
    DataError,
    HookSiteError,
    LensteerError,
)
from lensteer.evaluate import side_by_side
from lensteer.locate import (
    Direction,
    attribute_residual,
    diff_of_means,
    fit_probe,
    patch_residual,
    pca_of_diffs,
    probe_by_layer,
)
from lensteer.steering import (
    Gate,
    Steering,
    Window,
    calibrate,
    generate,
    load_steering,
    save_steering,
    steer,
)
from lensteer.study import run_study

SUBPACKAGES = ("core", "locate", "steering", "evaluate", "study", "plotting", "organisms", "threats")


def __getattr__(name: str) -> ModuleType:
    """``lensteer.plotting`` and the other stages load on first use (PEP 562): no import-time work."""
    if name in SUBPACKAGES:
        return importlib.import_module(f"lensteer.{name}")
    raise AttributeError(
        f"module 'lensteer' has no attribute {name!r}; see lensteer.__all__ and the subpackages "
        f"{', '.join(SUBPACKAGES)}"
    )


__all__ = [
    "ArtifactMismatchError",
    "ChatPrompt",
    "ConfigError",
    "DataError",
    "Direction",
    "Gate",
    "HookSiteError",
    "LensteerError",
    "Steering",
    "Window",
    "__version__",
    "attribute_residual",
    "calibrate",
    "collect_activations",
    "core",
    "diff_of_means",
    "evaluate",
    "fit_probe",
    "generate",
    "load_dataset",
    "load_model",
    "load_steering",
    "locate",
    "patch_residual",
    "pca_of_diffs",
    "plotting",
    "probe_by_layer",
    "run_study",
    "save_steering",
    "side_by_side",
    "steer",
    "steering",
    "study",
    "threats",
]
