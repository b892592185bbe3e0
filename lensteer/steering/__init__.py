"""steering: changing what the model computes. Owns the :class:`Steering` value, positions, gates,
the ``steer()`` context manager (the only place that installs steering hooks), ``generate()``,
calibration to a KL budget, steering files (safetensors + JSON), GGUF export and the peers' vector
formats (``interop``: llama.cpp / repeng / EasySteer GGUF, repeng, steering-vectors, EasyEdit2). Imports ``core``
and ``locate`` (a probe or a direction is what a steering is built from).

The folder is ``steering`` rather than ``steer`` so that ``lensteer.steer`` can stay the context manager.
"""

from lensteer.steering.calibration import (
    Calibration,
    KLProbe,
    calibrate,
    kl_probe,
    reference_norm,
    steering_kl,
)
from lensteer.steering.edits import ACE, Ablate, Add, Angular, Placement, SteeringEdit, StMP, StTP, SwFC
from lensteer.steering.files import load_steering, load_steerings, save_steering, save_steerings
from lensteer.steering.gate_search import (
    GateSearch,
    roc_curve,
    search_gate,
    search_gate_from_activations,
    threshold_at_fpr,
)
from lensteer.steering.gates import AllOf, AnyOf, Gate, GateLike, all_of, any_of, gate_rows
from lensteer.steering.generation import Generations, generate, generate_conversations
from lensteer.steering.gguf_export import export_gguf_control_vector
from lensteer.steering.hooks import SteeringContext, StepRecord, steer
from lensteer.steering.interop import (
    from_repeng,
    from_steering_vector,
    import_gguf_control_vector,
    lm_eval_steer_config,
    load_easyedit_vectors,
    steerings_to_vectors,
    to_repeng,
    to_steering_vector,
    vectors_to_steerings,
)
from lensteer.steering.positions import LastK, Window
from lensteer.steering.spec import Steering

__all__ = [
    "ACE",
    "Ablate",
    "Add",
    "AllOf",
    "Angular",
    "AnyOf",
    "Calibration",
    "Gate",
    "GateLike",
    "GateSearch",
    "Generations",
    "KLProbe",
    "LastK",
    "Placement",
    "StMP",
    "StTP",
    "Steering",
    "SteeringContext",
    "SteeringEdit",
    "StepRecord",
    "SwFC",
    "Window",
    "all_of",
    "any_of",
    "calibrate",
    "export_gguf_control_vector",
    "from_repeng",
    "from_steering_vector",
    "gate_rows",
    "generate",
    "generate_conversations",
    "import_gguf_control_vector",
    "kl_probe",
    "lm_eval_steer_config",
    "load_easyedit_vectors",
    "load_steering",
    "load_steerings",
    "reference_norm",
    "roc_curve",
    "save_steering",
    "save_steerings",
    "search_gate",
    "search_gate_from_activations",
    "steer",
    "steering_kl",
    "steerings_to_vectors",
    "threshold_at_fpr",
    "to_repeng",
    "to_steering_vector",
    "vectors_to_steerings",
]
