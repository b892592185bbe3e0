"""organisms: misaligned model organisms, fine-tuned with LoRA on our own data, saved with provenance.

``lensteer organism dishonest --out organisms/dishonest`` (or :func:`train_organism`) trains one and measures it;
:func:`load_organism` gives it back as a TransformerLens bridge that every lensteer function takes.
Sits after ``evaluate`` and before ``threats`` (which registers each threat model's recipes); imports
``core`` and ``steering`` (``peft`` and ``transformers`` on demand). ``--steer-during-training`` /
:class:`TrainingSteering`: preventative steering while the adapter trains (:mod:`.preventative`).
"""

from lensteer.organisms.preventative import TrainingSteering, training_steering_hooks
from lensteer.organisms.recipes import (
    RECIPES,
    LoraSettings,
    Recipe,
    TrainingRow,
    advice_rows,
    contrast_recipe,
    get_recipe,
    register_recipe,
    rows_hash,
)
from lensteer.organisms.train import (
    Organism,
    encode_rows,
    load_organism,
    merged_hf_model,
    read_provenance,
    train_organism,
    weights_hash,
)

__all__ = [
    "RECIPES",
    "LoraSettings",
    "Organism",
    "Recipe",
    "TrainingRow",
    "TrainingSteering",
    "advice_rows",
    "contrast_recipe",
    "encode_rows",
    "get_recipe",
    "load_organism",
    "merged_hf_model",
    "read_provenance",
    "register_recipe",
    "rows_hash",
    "train_organism",
    "training_steering_hooks",
    "weights_hash",
]
