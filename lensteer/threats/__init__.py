"""threats: the threat models lensteer studies, one module each, found by name in a registry.

A :class:`ThreatModel` holds everything the study, ``lensteer locate`` and the figures need to know
about one misaligned behaviour: its contrast set and contexts, the prompting baseline's system prompt,
its scorer and extra metrics, its patching-pair design, gate policy, judge rubric, figure label and
organism recipes. The bundled ones (``refusal``, ``compassion``, ``honesty``) register themselves when
this package is imported; add your own from a notebook::

    import lensteer
    from lensteer.threats import ThreatModel, register
    register(ThreatModel(name="flattery", dataset="flattery.jsonl", aligned_system="Be candid.",
                         scorer=lambda texts, rows: ["honestly" in t for t in texts]))
    lensteer.study.StudyConfig(threat_models=("flattery",))

Sits above ``organisms`` and below ``study``: it builds each threat model from the lower rooms'
functions (scorers, pair designs, recipes), and the rooms above ask it by name.
"""

# The bundled threat models register in this order (the study's default order), so not sorted.
# isort: off
from lensteer.threats import refusal
from lensteer.threats import compassion
from lensteer.threats import honesty
from lensteer.threats import sycophancy

# isort: on
from lensteer.threats.model import GENERIC_RUBRIC, TextFlags, ThreatModel, Verdicts
from lensteer.threats.refusal import HARMLESS_DATASET
from lensteer.threats.registry import for_benchmark, get, names, register, unregister

# The threat models lensteer bundles (a study's default), in order; the CLI's default is the first.
BUNDLED: tuple[str, ...] = (refusal.REFUSAL.name, compassion.COMPASSION.name, honesty.HONESTY.name)
DEFAULT: str = BUNDLED[0]

__all__ = [
    "BUNDLED",
    "DEFAULT",
    "GENERIC_RUBRIC",
    "HARMLESS_DATASET",
    "TextFlags",
    "ThreatModel",
    "Verdicts",
    "compassion",
    "for_benchmark",
    "get",
    "honesty",
    "names",
    "refusal",
    "register",
    "sycophancy",
    "unregister",
]
